"""The job queue's contract, on both backends: the in-memory one and Redis Streams (a real server: the private one
that conftest's `redis_db` starts)."""

from __future__ import annotations

import time

import pytest

from worker.queue import MemoryQueue, QueueFull, RedisQueue


def _redis_queue(url: str) -> RedisQueue:
    return RedisQueue(url, max_depth=4, ttl_s=60, max_attempts=2)


@pytest.fixture(params=["memory", "redis"])
def queue(request):
    if request.param == "memory":
        yield MemoryQueue(max_depth=4, ttl_s=60, max_attempts=2)
    else:
        yield _redis_queue(request.getfixturevalue("redis_db"))


def test_submit_reserve_complete(queue):
    job_id = queue.submit("muse", {"format": "png"}, b"input-bytes")
    rec = queue.status(job_id)
    assert rec["status"] == "queued" and rec["model"] == "muse" and rec["position"] == 0
    [job] = queue.reserve("w1", 8, 100)
    assert (job.id, job.data, job.params, job.attempt) == (job_id, b"input-bytes", {"format": "png"}, 1)
    assert queue.status(job_id)["status"] == "running"
    queue.complete(job, b"result", "image/png", 12.5, 1)
    rec = queue.status(job_id)
    assert rec["status"] == "done" and rec["media_type"] == "image/png" and rec["compute_ms"] == 12.5
    assert queue.result(job_id) == b"result"
    assert queue.depth() == 0


def test_positions_and_depth(queue):
    ids = [queue.submit("muse", {}, b"x") for _ in range(3)]
    assert [queue.status(i)["position"] for i in ids] == [0, 1, 2]
    assert queue.depth() == 3
    queue.reserve("w1", 1, 100)
    assert [queue.status(i)["position"] for i in ids[1:]] == [0, 1]


def test_bounded_queue(queue):
    for _ in range(4):
        queue.submit("muse", {}, b"x")
    with pytest.raises(QueueFull):
        queue.submit("muse", {}, b"x")


def test_wait_returns_when_done_or_times_out(queue):
    job_id = queue.submit("muse", {}, b"x")
    start = time.monotonic()
    assert queue.wait(job_id, 0.3)["status"] == "queued"
    assert 0.2 < time.monotonic() - start < 3
    [job] = queue.reserve("w1", 1, 100)
    queue.complete(job, b"r", "image/png", 1.0, 1)
    assert queue.wait(job_id, 5)["status"] == "done"


def test_retry_then_give_up(queue):
    job_id = queue.submit("muse", {}, b"x")
    [job] = queue.reserve("w1", 1, 100)
    queue.fail(job, "transient", retry=True)
    assert queue.status(job_id)["status"] == "queued"
    [job] = queue.reserve("w1", 1, 100)
    assert job.attempt == 2
    queue.fail(job, "transient again", retry=True)  # max_attempts=2: no third try
    rec = queue.status(job_id)
    assert rec["status"] == "failed" and "transient again" in rec["error"]


def test_permanent_failure_is_recorded(queue):
    job_id = queue.submit("muse", {}, b"x")
    [job] = queue.reserve("w1", 1, 100)
    queue.fail(job, "not an image", retry=False)
    assert queue.status(job_id)["status"] == "failed"
    assert queue.status(job_id)["error"] == "not an image"
    assert queue.reserve("w1", 1, 50) == []


def test_cancel_queued_job(queue):
    job_id = queue.submit("muse", {}, b"x")
    assert queue.cancel(job_id)
    assert queue.status(job_id)["status"] == "cancelled"
    assert queue.reserve("w1", 1, 50) == []
    assert not queue.cancel(job_id)


def test_heartbeats_list_live_workers(queue):
    queue.heartbeat("w1", {"ready": True, "models": {"muse": 1}})
    [w] = queue.workers()
    assert w["id"] == "w1" and w["ready"] and w["models"] == {"muse": 1}
    assert queue.workers(max_age_s=-1) == []


def test_redis_dead_worker_jobs_are_reclaimed(redis_db):
    q = _redis_queue(redis_db)
    ids = [q.submit("muse", {}, b"x") for _ in range(3)]
    taken = q.reserve("dead-worker", 8, 100)
    assert len(taken) == 3
    assert q.reclaim("w2", min_idle_ms=60_000) == []  # not idle long enough yet
    time.sleep(0.25)
    claimed = q.reclaim("w2", min_idle_ms=200)
    assert sorted(j.id for j in claimed) == sorted(ids)
    assert all(j.attempt == 2 for j in claimed)
    for j in claimed:
        q.complete(j, b"r", "image/png", 1.0, 3)
    assert all(q.status(i)["status"] == "done" for i in ids)
    # The dead worker's late completion of the same job changes nothing.
    q.complete(taken[0], b"late", "image/png", 1.0, 3)
    assert q.result(ids[0]) == b"r"
    assert q.depth() == 0


def test_redis_jobs_expire(redis_db):
    q = _redis_queue(redis_db)
    q.ttl_s = 1
    job_id = q.submit("muse", {}, b"x")
    assert 0 < q.r.ttl(f"percept:job:{job_id}") <= 1
    assert 0 < q.r.ttl(f"percept:job:{job_id}:input") <= 1
