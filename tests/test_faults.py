"""Fault injection (issue 14): an empty Redis after a restart, a job slower than the visibility timeout, a long job
in embedded mode, a stalled Redis (SIGSTOP); and the guarantees that held before: a Redis restarted on its AOF
keeps its queued jobs, a worker killed in the middle of a batch loses none. Real Redis servers of the test's own
(`fresh_redis_server`), workers as threads in this process on small images; each test takes seconds."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import wait_until
from PIL import Image

from service.app import create_app
from service.settings import ServiceSettings
from worker.queue import JobParams, JobRecord
from worker.redis_queue import RedisQueue
from worker.runner import Worker
from worker.settings import WorkerSettings


def _png(side: int = 32, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((side, side), 40 + seed).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _done(q: RedisQueue, job_id: str, timeout: float = 20) -> JobRecord:
    return wait_until(lambda: (r := q.status(job_id)) is not None and r.terminal and r, timeout, f"job {job_id}")


class _Running:
    """A `Worker` on a thread of its own, models loaded on demand (no warm-up: seconds, not minutes)."""

    def __init__(self, queue: RedisQueue, worker_id: str, **settings: Any):
        defaults = {"device": "cpu", "heartbeat_s": 0.2, "max_batch_delay_ms": 0, "warmup_sizes": "32"}
        self.worker = Worker(queue, WorkerSettings(**{**defaults, **settings}), worker_id=worker_id)
        self.worker.ready = True
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.worker.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Worker:
        self.thread.start()
        return self.worker

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def slow_forward(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, float]]:
    """Every forward pass sleeps `delay["s"]` seconds first (set it to make jobs slow); torch's own work is tiny."""
    delay = {"s": 0.0}
    original = Worker._forward

    def forward(self: Worker, net: Any, x: Any) -> Any:
        if delay["s"]:
            time.sleep(delay["s"])
        return original(self, net, x)

    monkeypatch.setattr(Worker, "_forward", forward)
    yield delay


def test_empty_redis_restart_recovers(fresh_redis_server, caplog: pytest.LogCaptureFixture) -> None:
    """Redis restarts without its data: the next submission and the worker recreate the consumer group and jobs
    flow again; a job whose record vanished is reported lost at once (wait, GET /jobs/{id}), never left hanging;
    the worker logs no NOGROUP traceback loop."""
    caplog.set_level(logging.INFO)
    url = fresh_redis_server.url
    api = RedisQueue(url, ttl_s=60)
    with _Running(RedisQueue(url, ttl_s=60), "w1"):
        first = api.submit("candy", JobParams(format="png"), _png())
        assert _done(api, first, 60).status == "done"  # the first job also loads the model

        fresh_redis_server.kill()
        fresh_redis_server.start()  # empty: no stream, no group, no records
        assert api.status(first) is None
        assert api.r.exists(api.STREAM) == 0

        second = api.submit("candy", JobParams(format="png"), _png(seed=1))
        rec = _done(api, second, 15)
        assert rec.status == "done" and rec.attempts == 1
        assert api.has_group()

        # A job lost with Redis's data: a waiter learns it at once, not at its timeout.
        with TestClient(create_app(ServiceSettings().model_copy(update={"redis_url": url}), queue=api,
                                   start_worker=False)) as client:
            lost = api.submit("candy", JobParams(format="png"), _png(seed=2))
            fresh_redis_server.flush()  # queued or running: its record is gone either way
            t0 = time.monotonic()
            assert api.wait(lost, 10) is None
            assert time.monotonic() - t0 < 2
            r = client.get(f"/jobs/{lost}")
            assert r.status_code == 404 and "lost" in r.json()["detail"]

        third = api.submit("candy", JobParams(format="png"), _png(seed=3))
        assert _done(api, third, 15).status == "done"

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not any("NOGROUP" in (r.exc_text or "") for r in caplog.records)
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) <= 4  # one line per outage


def test_job_slower_than_visibility_timeout_completes_once(fresh_redis_server, slow_forward) -> None:
    """Visibility timeout 1 s, a 4 s forward pass: the worker renews its lease, so a second (idle, reclaiming)
    worker never takes the job; it completes once, on the first worker, after one attempt."""
    url = fresh_redis_server.url
    api = RedisQueue(url, ttl_s=60)
    with _Running(RedisQueue(url), "slow", visibility_timeout_s=1.0) as slow:
        slow.models.get("candy")  # loaded before the clock matters
        slow_forward["s"] = 4.0
        job = api.submit("candy", JobParams(format="png"), _png())
        wait_until(lambda: (r := api.status(job)) is not None and r.status == "running", 10, "the job to start")
        with _Running(RedisQueue(url), "other", visibility_timeout_s=1.0) as other:
            rec = _done(api, job, 20)
            heartbeat = {w["id"]: w for w in api.workers(5)}
    assert rec.status == "done", rec
    assert rec.attempts == 1 and rec.worker == "slow"
    assert other.counters["jobs_done"] == 0 and slow.counters["jobs_done"] == 1
    assert heartbeat["slow"]["ready"] and not heartbeat["other"]["busy"]


def test_dead_worker_job_is_reclaimed_fast(fresh_redis_server) -> None:
    """A worker that stops renewing (dies while it holds a job) loses it within about the visibility timeout; the
    job runs again on a live worker (attempt 2)."""
    url = fresh_redis_server.url
    api = RedisQueue(url, ttl_s=60)
    dead = RedisQueue(url)
    job = api.submit("candy", JobParams(format="png"), _png())
    assert [j.id for j in dead.reserve("dead", 1, 1000)] == [job]  # taken, never renewed, never finished
    t0 = time.monotonic()
    with _Running(RedisQueue(url), "live", visibility_timeout_s=2.0):
        rec = _done(api, job, 30)
    assert rec.status == "done" and rec.worker == "live" and rec.attempts == 2
    assert time.monotonic() - t0 < 15


def test_ready_during_a_long_job(monkeypatch: pytest.MonkeyPatch, slow_forward) -> None:
    """Embedded mode, a job of 3 s with workers counted stale after 1 s: /readyz stays ready and
    percept_workers_live stays 1 all along (the heartbeat comes from its own thread), and it says busy."""
    monkeypatch.delenv("MODEL_STORE", raising=False)
    monkeypatch.setenv("PERCEPT_WARMUP_SIZES", "32")
    monkeypatch.setenv("PERCEPT_HEARTBEAT_S", "0.2")
    monkeypatch.setenv("PERCEPT_MAX_BATCH_DELAY_MS", "0")
    settings = ServiceSettings(worker_stale_s=1.0)
    app = create_app(settings)
    with TestClient(app) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, 120, "the embedded worker", every=0.2)
        slow_forward["s"] = 3.0
        r = client.post("/stylize", params={"style": "candy", "async": "true"}, content=_png(),
                        headers={"Content-Type": "image/png"})
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        queue = app.state.service.queue
        busy_seen = False
        while (s := client.get(f"/jobs/{job}").json()["status"]) != "done":
            assert s in ("queued", "running"), s
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert "percept_workers_live 1.0" in client.get("/metrics").text
            busy_seen |= any(w.get("busy") and job in w.get("jobs", []) for w in queue.workers(1.0))
            time.sleep(0.2)
        assert busy_seen


def test_redis_stall_answers_fast_and_recovers(fresh_redis_server) -> None:
    """SIGSTOP on Redis: /readyz answers 503 within a second, a submission and a status read answer 503 with
    Retry-After within a few seconds (not hanging); after SIGCONT everything answers again."""
    url = fresh_redis_server.url
    settings = ServiceSettings().model_copy(update={"redis_url": url})
    queue = RedisQueue(url, ttl_s=60)
    queue.heartbeat("w1", {"ready": True, "models": {"candy": 1}})
    with TestClient(create_app(settings, queue=queue, start_worker=False)) as client:
        assert client.get("/readyz").status_code == 200  # the probe made the missing consumer group
        job = client.post("/stylize", params={"style": "candy", "async": "true"}, content=_png(),
                          headers={"Content-Type": "image/png"}).json()["id"]
        assert client.get("/readyz").status_code == 200
        pid = fresh_redis_server.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = client.get("/readyz")
            assert r.status_code == 503 and time.monotonic() - t0 < 1.0, r.text
            for call in (lambda: client.post("/stylize", params={"style": "candy", "async": "true"}, content=_png(),
                                             headers={"Content-Type": "image/png"}),
                         lambda: client.get(f"/jobs/{job}")):
                t0 = time.monotonic()
                r = call()
                assert r.status_code == 503, r.text
                assert "Retry-After" in r.headers and "queue" in r.json()["detail"]
                assert time.monotonic() - t0 < 4.5
        finally:
            os.kill(pid, signal.SIGCONT)
        queue.heartbeat("w1", {"ready": True, "models": {"candy": 1}})
        wait_until(lambda: client.get("/readyz").status_code == 200, 5, "ready again")
        assert client.get(f"/jobs/{job}").json()["status"] == "queued"
        r = client.post("/stylize", params={"style": "candy", "async": "true"}, content=_png(),
                        headers={"Content-Type": "image/png"})
        assert r.status_code == 202, r.text


def test_redis_restart_on_its_aof_keeps_queued_jobs(tmp_path) -> None:
    """A persistent Redis (AOF) killed and restarted: the queued jobs are still there and complete once each."""
    from conftest import RedisServer, _redis_binary

    server = RedisServer(_redis_binary(), tmp_path / "redis-aof", appendonly=True).start()
    try:
        api = RedisQueue(server.url)
        jobs = [api.submit("candy", JobParams(format="png"), _png(seed=i)) for i in range(3)]
        server.kill()
        server.start()
        assert [api.status(j).status for j in jobs] == ["queued"] * 3
        with _Running(RedisQueue(server.url), "after-restart"):
            records = [_done(api, j) for j in jobs]
        assert [(r.status, r.attempts) for r in records] == [("done", 1)] * 3
    finally:
        server.stop()


def test_worker_killed_mid_batch_loses_no_job(fresh_redis_server, slow_forward) -> None:
    """A worker that takes a batch and dies (no renewals, no completion: what SIGKILL leaves) loses nothing: a
    live worker reclaims the batch after the visibility timeout and each job completes once."""
    api = RedisQueue(fresh_redis_server.url)
    jobs = [api.submit("candy", JobParams(format="png"), _png(seed=i)) for i in range(4)]
    taken = RedisQueue(fresh_redis_server.url).reserve("doomed", 4, 1000)  # then the process dies
    assert sorted(j.id for j in taken) == sorted(jobs)
    with _Running(RedisQueue(fresh_redis_server.url), "survivor", visibility_timeout_s=1.0):
        records = [_done(api, j) for j in jobs]
    assert all(r.status == "done" and r.worker == "survivor" and r.attempts == 2 for r in records)
