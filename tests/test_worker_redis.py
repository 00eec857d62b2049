"""Workers as separate processes on a real Redis (conftest's private server): batching across concurrent jobs, and
no job lost when a worker is killed with SIGKILL in the middle of a batch."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from worker.queue import JobParams, JobRecord
from worker.redis_queue import RedisQueue

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def queue(redis_db):
    return RedisQueue(redis_db, ttl_s=120, max_attempts=3)


def _png(side: int, seed: int = 0) -> bytes:
    im = Image.effect_noise((side, side), 40 + seed).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _start_worker(name: str, redis_url: str, **env: str) -> subprocess.Popen:
    environ = {**os.environ, "REDIS_URL": redis_url, "PERCEPT_WARMUP_SIZES": "32", "PERCEPT_DEVICE": "cpu",
               "PERCEPT_HEARTBEAT_S": "0.2", **env}
    code = "import logging; logging.basicConfig(level='INFO'); from worker.runner import serve_forever; serve_forever()"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_ready(q: RedisQueue, count: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([w for w in q.workers(max_age_s=5) if w["ready"]]) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"worker exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    raise AssertionError("worker did not become ready")


def _wait_done(q: RedisQueue, ids: list[str], timeout: float = 120) -> list[JobRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recs = [q.status(i) for i in ids]
        if all(r.status in ("done", "failed") for r in recs):
            return recs
        time.sleep(0.1)
    raise AssertionError(f"jobs not finished: {[q.status(i).status for i in ids]}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_concurrent_jobs_are_batched(queue, redis_db):
    worker = _start_worker("batcher", redis_db, PERCEPT_MAX_BATCH_SIZE="8", PERCEPT_MAX_BATCH_DELAY_MS="500")
    try:
        _wait_ready(queue, 1, worker)
        ids = [queue.submit("muse", JobParams(format="png"), _png(32, i)) for i in range(16)]
        recs = _wait_done(queue, ids)
        assert all(r.status == "done" for r in recs), [r.error for r in recs]
        assert all(Image.open(io.BytesIO(queue.result(i))).size == (32, 32) for i in ids)
        deadline = time.monotonic() + 10  # the heartbeat after the last batch carries the final counters
        while (w := queue.workers()[0])["batched_jobs"] < 16 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert w["batched_jobs"] == 16
        assert w["forward_passes"] < 16  # 16 jobs shared fewer forward passes
        assert max(r.batch_size for r in recs) > 1
    finally:
        _stop(worker)


def test_killed_worker_loses_no_job(queue, redis_db):
    # A slow batch (large images, one per forward pass) so that the kill lands while jobs are running.
    slow = {"PERCEPT_MAX_BATCH_SIZE": "4", "PERCEPT_MAX_BATCH_DELAY_MS": "200", "PERCEPT_VISIBILITY_TIMEOUT_S": "2"}
    first = _start_worker("first", redis_db, **slow)
    second = None
    try:
        _wait_ready(queue, 1, first)
        ids = [queue.submit("muse", JobParams(format="jpeg"), _png(384, i)) for i in range(6)]
        deadline = time.monotonic() + 60
        while not any(queue.status(i).status == "running" for i in ids):
            assert time.monotonic() < deadline, "the first worker never started a job"
            time.sleep(0.02)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        running = [i for i in ids if queue.status(i).status == "running"]
        assert running, "the kill should leave jobs in flight"
        second = _start_worker("second", redis_db, **slow)
        recs = _wait_done(queue, ids)
        assert [r.status for r in recs] == ["done"] * len(ids), [r.error for r in recs]
        assert all(queue.status(i).attempts >= 2 for i in running)  # redelivered, not lost
        assert all(queue.result(i)[:2] == b"\xff\xd8" for i in ids)  # JPEG results
        assert queue.depth() == 0
    finally:
        first.kill()
        if second:
            _stop(second)
