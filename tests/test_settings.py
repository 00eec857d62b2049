"""One settings style for every process: pydantic-settings classes on a shared base (worker/settings.py), each
environment variable declared once, and the queue built from the same settings in embedded and Redis mode."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from service.settings import ServiceSettings
from trainer.settings import TrainerSettings
from worker.memory_queue import MemoryQueue
from worker.open_queue import open_queue
from worker.redis_queue import RedisQueue
from worker.settings import PerceptSettings, QueueSettings, RedisSettings, WorkerSettings

PROCESSES = (ServiceSettings, WorkerSettings, TrainerSettings)


def _env_names(cls: type[BaseSettings], name: str) -> set[str]:
    field = cls.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return {c for c in alias.choices if isinstance(c, str)}
    if isinstance(alias, str):
        return {alias}
    return {f"{cls.model_config.get('env_prefix', '')}{name}".upper()}


def _declared_in(cls: type[BaseSettings], name: str) -> type:
    """The class of the hierarchy whose body declares the field."""
    return next(c for c in reversed(cls.__mro__) if name in getattr(c, "__annotations__", {}))


def test_every_process_uses_the_shared_base():
    for cls in PROCESSES:
        assert issubclass(cls, PerceptSettings), cls
    assert issubclass(ServiceSettings, QueueSettings) and issubclass(WorkerSettings, QueueSettings)
    assert issubclass(TrainerSettings, RedisSettings)


def test_each_environment_variable_is_declared_once():
    owner: dict[str, type] = {}
    for cls in PROCESSES:
        for name in cls.model_fields:
            where = _declared_in(cls, name)
            for env in _env_names(cls, name):
                assert owner.setdefault(env, where) is where, f"{env} is declared by {owner[env]} and {where}"
    shared = {env for env, cls in owner.items() if cls in (RedisSettings, QueueSettings)}
    assert shared == {"REDIS_URL", "PERCEPT_REDIS_URL", "PERCEPT_REDIS_SOCKET_TIMEOUT_S",
                      "PERCEPT_REDIS_CONNECT_TIMEOUT_S", "PERCEPT_QUEUE_MAX", "PERCEPT_JOB_TTL_S",
                      "PERCEPT_MAX_ATTEMPTS", "PERCEPT_RESULT_CACHE_MB"}


def test_shared_variables_reach_every_process(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/3")
    monkeypatch.setenv("PERCEPT_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("PERCEPT_JOB_TTL_S", "90")
    service, worker, trainer = ServiceSettings(), WorkerSettings(), TrainerSettings()
    assert service.redis_url == worker.redis_url == trainer.redis_url == "redis://example:6379/3"
    assert service.max_attempts == worker.max_attempts == 7
    assert service.job_ttl_s == worker.job_ttl_s == 90.0


def test_settings_by_field_name_and_empty_values(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("REDIS_URL", "")  # empty = unset
    monkeypatch.setenv("PERCEPT_VGG_CONVENTION", "")
    assert ServiceSettings().redis_url is None and ServiceSettings().embedded
    assert ServiceSettings(redis_url="redis://h:1/0").redis_url == "redis://h:1/0"  # by name despite the alias
    assert TrainerSettings().vgg_convention == "auto"


def test_trainer_paths(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PERCEPT_DATA", "~/photos")
    monkeypatch.setenv("PERCEPT_RUNS", "/tmp/runs")
    s = TrainerSettings()
    assert s.data_dir == Path("~/photos").expanduser() and s.runs_dir == Path("/tmp/runs")
    assert isinstance(s.vgg_weights, Path) and s.vgg_weights.name.endswith(".safetensors")
    with pytest.raises(ValueError):
        s.runs_dir = Path("/elsewhere")  # frozen, as the dataclass was


def test_open_queue_uses_the_same_limits_in_both_modes(monkeypatch: pytest.MonkeyPatch, redis_db: str):
    monkeypatch.setenv("PERCEPT_QUEUE_MAX", "5")
    monkeypatch.setenv("PERCEPT_JOB_TTL_S", "42")
    monkeypatch.setenv("PERCEPT_MAX_ATTEMPTS", "4")
    embedded = open_queue(ServiceSettings())
    assert isinstance(embedded, MemoryQueue)
    monkeypatch.setenv("REDIS_URL", redis_db)
    shared = open_queue(ServiceSettings())
    assert isinstance(shared, RedisQueue)
    for queue in (embedded, shared):
        assert (queue.max_depth, queue.ttl_s, queue.max_attempts) == (5, 42.0, 4)


def test_embedded_app_honours_the_queue_settings(monkeypatch: pytest.MonkeyPatch):
    """Embedded mode used to ignore PERCEPT_MAX_ATTEMPTS (its memory queue kept the default of 3)."""
    from service.app import create_app

    monkeypatch.setenv("PERCEPT_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("PERCEPT_QUEUE_MAX", "9")
    monkeypatch.setenv("PERCEPT_JOB_TTL_S", "30")
    app = create_app(ServiceSettings())  # no lifespan: the worker thread does not start
    queue = app.state.service.queue
    assert isinstance(queue, MemoryQueue)
    assert (queue.max_depth, queue.ttl_s, queue.max_attempts) == (9, 30.0, 1)
