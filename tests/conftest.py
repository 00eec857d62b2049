"""Shared fixtures: a throwaway model store, the shared data folder, loss networks built once per session, and a
private Redis server.

The Redis tests never touch a Redis they did not start: `redis_server` runs its own `redis-server` (no
persistence, 127.0.0.1 on a free port, a temporary directory) for the session, and only that server is flushed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import free_port

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
VGG_WEIGHTS = SHARED_DATA / "weights" / "vgg16_relu4_3.safetensors"

# The tests use tiny tensors: one intra-op thread is faster than two and avoids long OpenMP stalls when the
# cores are busy with other work.
torch.set_num_threads(1)


@pytest.fixture
def tmp_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MODEL_STORE root; publishing and lookups go there (the built-in store is still searched, the
    user's store is an empty folder of tmp_path, so models a developer published never leak into tests)."""
    root = tmp_path / "store"
    root.mkdir()
    monkeypatch.setenv("MODEL_STORE", str(root))
    monkeypatch.setenv("PERCEPT_USER_STORE", str(tmp_path / "user_store"))
    return root


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vgg_weights(shared_data: Path) -> Path:
    if not VGG_WEIGHTS.is_file():
        pytest.skip(f"VGG-16 weights not found at {VGG_WEIGHTS}")
    return VGG_WEIGHTS


@pytest.fixture(scope="session")
def random_vgg():
    """An untrained (seeded) loss network: frozen, so one instance serves every test."""
    from trainer.vgg import load_loss_network

    return load_loss_network(random_weights=True)


# ---------------------------------------------------------------------------------------------------------------
# Redis: a server of our own, never the developer's (e.g. whatever answers on the default port)


@pytest.fixture(autouse=True, scope="session")
def _no_inherited_redis_url() -> Iterator[None]:
    """A REDIS_URL in the developer's shell would point settings built from the environment at their Redis."""
    saved = {k: os.environ.pop(k) for k in ("REDIS_URL", "PERCEPT_REDIS_URL") if k in os.environ}
    yield
    os.environ.update(saved)


class RedisServer:
    """A `redis-server` child process on 127.0.0.1: no RDB, no AOF (unless `appendonly`), its files in `workdir`.

    The port is chosen once (bind to port 0) and kept, so `stop()` / `kill()` then `start()` bring the server
    back at the same URL with an empty database: what fault tests need to simulate a Redis restart. With
    `appendonly`, every write is fsynced to the AOF in `workdir` and a restart replays it (a persistent Redis).
    """

    def __init__(self, binary: str, workdir: Path, port: int | None = None, appendonly: bool = False) -> None:
        self.appendonly = appendonly
        self.binary = binary
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "redis.log"
        self.port = port
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        assert self.port is not None, "not started yet"
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, db: int = 0, **kwargs):
        import redis

        return redis.Redis.from_url(self.url_for(db), socket_timeout=kwargs.pop("socket_timeout", 2), **kwargs)

    def start(self, timeout: float = 5.0) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING; a no-op when running."""
        if self.running:
            return self
        # The first start picks a free port; if another process takes it before redis binds, pick again.
        attempts = 1 if self.port is not None else 3
        for attempt in range(attempts):
            if attempt or self.port is None:
                self.port = free_port()
            try:
                self._spawn_and_wait(timeout)
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        return self

    def _spawn_and_wait(self, timeout: float) -> None:
        import redis

        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof,
                "--daemonize", "no", "--dir", str(self.workdir)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        r = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self._log_tail()}")
                try:
                    if r.ping():
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer PING in {timeout:g} s:\n{self._log_tail()}")
                time.sleep(0.02)
        finally:
            r.close()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL when it does not exit in `timeout` seconds. Nothing is saved (no RDB, no AOF)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants (`start()` brings it back empty on the same port)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def flush(self) -> None:
        """FLUSHALL, on this server only."""
        r = self.client()
        try:
            r.flushall()
        finally:
            r.close()

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.is_file() else ""


def _redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (the Redis tests start their own; e.g. apt-get install "
                    "redis-server)")
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's private Redis server (shared by the Redis tests; do not stop it: use `fresh_redis_server`)."""
    server = RedisServer(_redis_binary(), tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """redis://127.0.0.1:<port>/0 of the session's private server; not flushed (see `redis_db`)."""
    return redis_server.url


@pytest.fixture
def redis_db(redis_server: RedisServer) -> str:
    """`redis_url`, emptied (FLUSHALL on the private server) before the test; restarted if a test stopped it."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def fresh_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis server of this test's own, started; the test may stop(), kill() and start() it (same port, empty)."""
    server = RedisServer(_redis_binary(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()
