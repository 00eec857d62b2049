"""The docker-compose topology, started natively: a Redis server, one API process and two workers.

Real processes on free ports (its own Redis, apart from conftest's `redis_server`): wait for /readyz and two
live workers, send stylize and x4 upscale requests concurrently, check the images, check the work was shared
out through the queue, and run the images' health-check commands against the live processes. Skipped when
`redis-server` is not installed. scripts/smoke.sh starts the same topology by hand.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import free_port
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "smoke-test-admin-key"
STARTUP_S = 90
N_WORKERS = 2


def _png(w: int, h: int, seed: int) -> bytes:
    img = Image.effect_noise((w, h), 40 + seed).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _percept() -> list[str]:
    """The `percept` console script next to this interpreter (what the images run), else `python -m percept.cli`."""
    script = Path(sys.executable).with_name("percept")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "percept.cli"]


def _healthcheck(dockerfile: str) -> list[str]:
    """The HEALTHCHECK command of docker/<dockerfile>, run with this interpreter."""
    text = (ROOT / "docker" / dockerfile).read_text().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("HEALTHCHECK"))
    argv = json.loads(line.split(" CMD ", 1)[1])
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.is_file() else ""


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory):
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    logs = tmp_path_factory.mktemp("smoke")
    redis_port, api_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith("PERCEPT_") or k in ("REDIS_URL", "MODEL_STORE"))}
    env.update({"PERCEPT_API_KEY": API_KEY, "PERCEPT_WARMUP_SIZES": "32", "PERCEPT_DEVICE": "cpu",
                "PERCEPT_HEARTBEAT_S": "0.5", "PERCEPT_MAX_BATCH_DELAY_MS": "20",
                # Three torch processes on a small machine: one thread each avoids oversubscription stalls.
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    procs: list[subprocess.Popen] = []
    files = []

    def start(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed in the fixture's finally
        files.append(log)
        proc = subprocess.Popen(argv, cwd=logs, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                        "--appendonly", "no", "--daemonize", "no", "--dir", str(logs)])
        import redis

        r = redis.Redis.from_url(redis_url, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if r.ping():
                    break
            except redis.ConnectionError:
                pass
            assert procs[0].poll() is None and time.monotonic() < deadline, _tail(logs / "redis.log")
            time.sleep(0.05)

        # No worker yet: the worker health check must fail (no heartbeat of this host).
        no_worker = subprocess.run(_healthcheck("worker.Dockerfile"), env={**env, "REDIS_URL": redis_url},
                                   capture_output=True, timeout=30)

        percept = _percept()
        start("api", [*percept, "serve", "--host", "127.0.0.1", "--port", str(api_port), "--redis-url", redis_url])
        for i in range(N_WORKERS):
            start(f"worker{i}", [*percept, "worker", "--redis-url", redis_url])

        client = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=60,
                              headers={"Authorization": f"Bearer {API_KEY}"})
        deadline = time.monotonic() + STARTUP_S
        while True:
            for p, name in zip(procs, ["redis", "api", *(f"worker{i}" for i in range(N_WORKERS))], strict=True):
                assert p.poll() is None, f"{name} exited with {p.returncode}:\n{_tail(logs / f'{name}.log')}"
            try:
                ready = client.get("/readyz").status_code == 200
                workers = client.get("/admin/workers").json() if ready else []
                if ready and sum(1 for w in workers if w.get("ready")) == N_WORKERS:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "topology not ready in time:\n" + "\n".join(
                f"--- {p.name}\n{_tail(p)}" for p in sorted(logs.glob("*.log")))
            time.sleep(0.25)
        yield {"client": client, "redis_url": redis_url, "api_port": api_port, "env": env, "logs": logs,
               "no_worker_healthcheck": no_worker.returncode}
        client.close()
    finally:
        _stop(procs[::-1])  # workers and the API first, Redis last
        for f in files:
            f.close()


def test_two_workers_ready(topology):
    resp = topology["client"].get("/readyz")
    assert resp.status_code == 200 and resp.json()["workers"] == N_WORKERS and resp.json()["mode"] == "redis"
    workers = topology["client"].get("/admin/workers").json()
    assert len(workers) == N_WORKERS and len({w["id"] for w in workers}) == N_WORKERS
    assert all(w["device"] == "cpu" and {"muse", "sr_x4"} <= set(w["models"]) for w in workers)


def test_concurrent_requests_shared_by_the_workers(topology):
    client = topology["client"]
    before = {w["id"]: w["jobs_done"] for w in client.get("/admin/workers").json()}
    styles = ["muse", "wave", "candy", "mosaic"]
    # (endpoint, params, input size, expected output size): different styles and sizes do not batch together,
    # so eight requests are at least five batches to share out.
    cases = [("/stylize", {"style": styles[i % 4]}, (40 + 8 * i, 32), (40 + 8 * i, 32)) for i in range(4)]
    cases += [("/upscale", {"factor": 4}, (20 + 2 * i, 16), (4 * (20 + 2 * i), 64)) for i in range(4)]

    def send(i: int) -> tuple[int, httpx.Response]:
        path, params, (w, h), _ = cases[i]
        return i, client.post(path, params={**params, "wait": 60}, content=_png(w, h, i),
                              headers={"Content-Type": "image/png"})

    with ThreadPoolExecutor(len(cases)) as pool:
        results = list(pool.map(send, range(len(cases))))
    for i, resp in results:
        assert resp.status_code == 200, (cases[i], resp.status_code, resp.text[:300])
        assert resp.headers["content-type"] == "image/png"
        img = Image.open(io.BytesIO(resp.content))
        img.load()
        assert img.size == cases[i][3] and img.mode == "RGB", (cases[i], img.size, img.mode)
        assert max(hi - lo for lo, hi in img.getextrema()) > 10, "a flat image came back"

    # The counters arrive with the next heartbeats (every 0.5 s).
    deadline = time.monotonic() + 10
    while True:
        done = {w["id"]: w["jobs_done"] - before.get(w["id"], 0) for w in client.get("/admin/workers").json()}
        if sum(done.values()) >= len(cases) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert len(done) == N_WORKERS
    assert sum(done.values()) == len(cases), done
    # Both workers usually take some of the jobs; when one drained the queue alone the total above still shows
    # that every job went through a worker exactly once (a warning in the summary, not a failure).
    if min(done.values()) == 0:
        warnings.warn(f"one worker took all {len(cases)} jobs this time: {done}", stacklevel=1)


def test_image_healthchecks_against_live_processes(topology):
    """The images' HEALTHCHECK commands, run here against the live processes (this host's name stands in for
    the container's): the API's answers, the worker's finds this host's heartbeats, and it failed before any
    worker had started."""
    env = {**topology["env"], "PERCEPT_PORT": str(topology["api_port"]), "REDIS_URL": topology["redis_url"]}
    api = subprocess.run(_healthcheck("api.Dockerfile"), env=env, capture_output=True, text=True, timeout=30)
    assert api.returncode == 0, api.stderr
    worker = subprocess.run(_healthcheck("worker.Dockerfile"), env=env, capture_output=True, text=True, timeout=30)
    assert worker.returncode == 0, worker.stderr
    assert topology["no_worker_healthcheck"] == 1

    wrong_port = {**env, "PERCEPT_PORT": str(free_port())}
    down = subprocess.run(_healthcheck("api.Dockerfile"), env=wrong_port, capture_output=True, timeout=30)
    assert down.returncode != 0


def test_trainer_command_and_healthcheck(topology):
    """The trainer image's command (an RQ worker on percept-training) starts and its health check sees it."""
    text = (ROOT / "docker" / "trainer.Dockerfile").read_text()
    cmd = json.loads(next(ln for ln in text.splitlines() if ln.startswith("CMD "))[4:])
    env = {**topology["env"], "REDIS_URL": topology["redis_url"],
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = topology["logs"] / "trainer.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=topology["logs"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            check = _healthcheck("trainer.Dockerfile")
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, _tail(log)
                if subprocess.run(check, env=env, capture_output=True, timeout=30).returncode == 0:
                    break
                assert time.monotonic() < deadline, "the RQ worker never registered:\n" + _tail(log)
                time.sleep(0.5)
        finally:
            _stop([proc])
