"""The job queue's contract (`worker.queue.JobQueue`), one set of tests on both backends: the in-memory queue and
Redis Streams (a real server: the private one that conftest's `redis_db` starts and empties)."""

from __future__ import annotations

import inspect
import threading
import time
from collections.abc import Callable

import pytest

from worker.memory_queue import MemoryQueue
from worker.queue import TERMINAL, JobParams, JobQueue, JobRecord, JobState, QueueFull, Reserved
from worker.redis_queue import RedisQueue

LIMITS = {"max_depth": 4, "ttl_s": 60.0, "max_attempts": 2}
PNG = JobParams(format="png")


@pytest.fixture(params=["memory", "redis"])
def make_queue(request: pytest.FixtureRequest) -> Callable[..., JobQueue]:
    """A factory of empty queues of one backend: make_queue(max_depth=..., ttl_s=..., max_attempts=...)."""
    if request.param == "memory":
        return lambda **limits: MemoryQueue(**{**LIMITS, **limits})
    url = request.getfixturevalue("redis_db")
    return lambda **limits: RedisQueue(url, **{**LIMITS, **limits})


@pytest.fixture
def queue(make_queue: Callable[..., JobQueue]) -> JobQueue:
    return make_queue()


def _submit(queue: JobQueue, n: int, model: str = "muse") -> list[str]:
    return [queue.submit(model, JobParams(max_side=i + 1), b"x") for i in range(n)]


def _status(queue: JobQueue, job_id: str) -> JobRecord:
    rec = queue.status(job_id)
    assert rec is not None, f"job {job_id} is gone"
    return rec


# ---------------------------------------------------------------------------------------------------------------
# The types


def test_job_states():
    assert [s.value for s in JobState] == ["queued", "running", "done", "failed", "cancelled"]
    assert set(TERMINAL) == {JobState.DONE, JobState.FAILED, JobState.CANCELLED}
    assert JobState.DONE == "done" and f"{JobState.RUNNING}" == "running"  # the strings of the HTTP API
    assert [s.terminal for s in JobState] == [False, False, True, True, True]


def test_records_round_trip_through_json():
    params = JobParams(max_side=512, max_pixels=1000, strength=0.5, preserve_color=True, format="webp", quality=80)
    rec = JobRecord(id="a" * 32, model="muse", params=params, created_at=1.5, status=JobState.FAILED, attempts=2,
                    error="boom", error_status=422)
    assert JobParams.from_json(params.to_json()) == params
    assert JobRecord.from_json(rec.to_json()) == rec
    assert rec.to_json()["status"] == "failed" and "position" not in rec.to_json()


@pytest.mark.parametrize("backend", [MemoryQueue, RedisQueue])
def test_backends_implement_the_protocol(backend: type) -> None:
    """Same methods with the same signatures as JobQueue (isinstance() alone checks only the names)."""
    members = [name for name, value in vars(JobQueue).items() if inspect.isfunction(value) and name[0] != "_"]
    assert len(members) == 17
    for name in members:
        assert inspect.signature(getattr(backend, name)) == inspect.signature(getattr(JobQueue, name)), name


def test_queue_is_a_job_queue(queue: JobQueue) -> None:
    assert isinstance(queue, JobQueue)
    assert (queue.max_depth, queue.ttl_s, queue.max_attempts) == (4, 60.0, 2)
    assert queue.ping()


def test_params_must_be_typed(queue: JobQueue) -> None:
    with pytest.raises(TypeError):
        queue.submit("muse", {"format": "png"}, b"x")  # type: ignore[arg-type]
    assert queue.depth() == 0


# ---------------------------------------------------------------------------------------------------------------
# The life of a job


def test_submit_reserve_complete(queue: JobQueue) -> None:
    before = time.time()
    job_id = queue.submit("muse", PNG, b"input-bytes")
    rec = _status(queue, job_id)
    assert (rec.id, rec.status, rec.model, rec.params, rec.position, rec.attempts) == (
        job_id, JobState.QUEUED, "muse", PNG, 0, 0)
    assert before <= rec.created_at <= time.time() and rec.started_at is None and rec.worker is None

    [job] = queue.reserve("w1", 8, 100)
    assert isinstance(job, Reserved) and isinstance(job.params, JobParams)
    assert (job.id, job.model, job.data, job.params, job.attempt, job.enqueued_at) == (
        job_id, "muse", b"input-bytes", PNG, 1, rec.created_at)
    rec = _status(queue, job_id)
    assert (rec.status, rec.worker, rec.attempts, rec.position) == (JobState.RUNNING, "w1", 1, None)
    assert rec.started_at is not None and queue.depth() == 1

    queue.complete(job, b"result", "image/png", 12.5, 3)
    rec = _status(queue, job_id)
    assert (rec.status, rec.media_type, rec.compute_ms, rec.batch_size, rec.error) == (
        JobState.DONE, "image/png", 12.5, 3, None)
    assert rec.finished_at is not None and rec.finished_at >= rec.started_at
    assert queue.result(job_id) == b"result"
    assert queue.depth() == 0
    assert queue.reserve("w1", 8, 50) == []


def test_unknown_jobs(queue: JobQueue) -> None:
    unknown = "0" * 32
    assert queue.status(unknown) is None and queue.result(unknown) is None and queue.wait(unknown, 0.1) is None
    assert not queue.cancel(unknown)


def test_fifo_positions_and_depth(queue: JobQueue) -> None:
    ids = _submit(queue, 3)
    assert [_status(queue, i).position for i in ids] == [0, 1, 2]
    assert queue.depth() == 3
    [first] = queue.reserve("w1", 1, 100)
    assert first.id == ids[0]
    assert [_status(queue, i).position for i in ids] == [None, 0, 1]
    assert queue.depth() == 3  # running jobs count
    assert [j.id for j in queue.reserve("w1", 8, 100)] == ids[1:]


def test_max_depth_counts_queued_and_running_jobs(queue: JobQueue) -> None:
    _submit(queue, 4)
    with pytest.raises(QueueFull):
        queue.submit("muse", PNG, b"x")
    [job] = queue.reserve("w1", 1, 100)
    with pytest.raises(QueueFull):  # a running job still takes room
        queue.submit("muse", PNG, b"x")
    queue.complete(job, b"r", "image/png", 1.0, 1)
    queue.submit("muse", PNG, b"x")
    assert queue.depth() == 4


# Below Redis's 100 ms timer tick RedisQueue polls instead of blocking (a BLOCK 10 lasted up to 100 ms): a short
# window must still be waited out when nothing comes, and a job arriving inside it must be taken, as a long one.
@pytest.mark.parametrize("empty_ms, empty_s, arrive_s, take_ms, take_s", [
    (200, (0.15, 3), 0.2, 5000, 4),
    (40, (0.035, 2), 0.02, 90, None),
], ids=["blocking", "below-redis-timer-tick"])
def test_reserve_waits_its_window_and_takes_a_job_arriving_in_it(
        queue: JobQueue, empty_ms: int, empty_s: tuple[float, float], arrive_s: float, take_ms: int,
        take_s: float | None) -> None:
    start = time.monotonic()
    assert queue.reserve("w1", 1, empty_ms) == []
    assert empty_s[0] < time.monotonic() - start < empty_s[1]
    timer = threading.Timer(arrive_s, lambda: queue.submit("muse", PNG, b"x"))
    timer.start()
    try:
        start = time.monotonic()
        jobs = queue.reserve("w1", 1, take_ms)
        assert len(jobs) == 1 and (take_s is None or time.monotonic() - start < take_s)
    finally:
        timer.join()


def test_wait_returns_when_done_or_times_out(queue: JobQueue) -> None:
    job_id = queue.submit("muse", PNG, b"x")
    start = time.monotonic()
    assert _status_of(queue.wait(job_id, 0.3)) == JobState.QUEUED
    assert 0.2 < time.monotonic() - start < 3
    [job] = queue.reserve("w1", 1, 100)
    timer = threading.Timer(0.2, lambda: queue.complete(job, b"r", "image/png", 1.0, 1))
    timer.start()
    try:
        start = time.monotonic()
        assert _status_of(queue.wait(job_id, 10)) == JobState.DONE
        assert time.monotonic() - start < 5  # woken by the completion, not the timeout
    finally:
        timer.join()
    assert _status_of(queue.wait(job_id, 10)) == JobState.DONE  # at once: it has ended


def _status_of(rec: JobRecord | None) -> JobState | None:
    return rec.status if rec else None


# ---------------------------------------------------------------------------------------------------------------
# Failures and retries


def test_a_retried_job_goes_to_the_back_of_the_queue(queue: JobQueue) -> None:
    a, b = _submit(queue, 2)
    [job] = queue.reserve("w1", 1, 100)
    assert job.id == a
    queue.fail(job, "inference failed: out of memory", retry=True)
    rec = _status(queue, a)
    assert (rec.status, rec.position, rec.attempts, rec.error) == (
        JobState.QUEUED, 1, 1, "inference failed: out of memory")
    assert _status(queue, b).position == 0
    assert queue.depth() == 2
    assert [(j.id, j.attempt) for j in queue.reserve("w1", 8, 100)] == [(b, 1), (a, 2)]


def test_retry_then_give_up_after_max_attempts(queue: JobQueue) -> None:
    job_id = queue.submit("muse", PNG, b"x")
    [job] = queue.reserve("w1", 1, 100)
    queue.fail(job, "transient", retry=True)
    assert _status(queue, job_id).status is JobState.QUEUED
    [job] = queue.reserve("w2", 1, 100)
    assert (job.attempt, job.data) == (2, b"x")
    queue.fail(job, "transient again", retry=True, status=503)  # max_attempts=2: no third try
    rec = _status(queue, job_id)
    assert (rec.status, rec.error, rec.error_status, rec.attempts) == (JobState.FAILED, "transient again", 503, 2)
    assert queue.reserve("w1", 1, 50) == [] and queue.depth() == 0


def test_max_attempts_one_never_retries(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue(max_attempts=1)
    job_id = queue.submit("muse", PNG, b"x")
    [job] = queue.reserve("w1", 1, 100)
    queue.fail(job, "transient", retry=True)
    assert _status(queue, job_id).status is JobState.FAILED


def test_permanent_failure_is_recorded(queue: JobQueue) -> None:
    job_id = queue.submit("muse", PNG, b"x")
    [job] = queue.reserve("w1", 1, 100)
    queue.fail(job, "not an image", retry=False, status=422)
    rec = _status(queue, job_id)
    assert (rec.status, rec.error, rec.error_status, rec.attempts) == (JobState.FAILED, "not an image", 422, 1)
    assert rec.finished_at is not None and queue.result(job_id) is None
    assert queue.reserve("w1", 1, 50) == [] and queue.depth() == 0
    assert _status_of(queue.wait(job_id, 5)) == JobState.FAILED


def test_an_ended_job_stays_ended(queue: JobQueue) -> None:
    """A slower duplicate's complete/fail (e.g. a reclaimed job finishing twice) changes nothing."""
    job_id = queue.submit("muse", PNG, b"x")
    [job] = queue.reserve("w1", 1, 100)
    queue.complete(job, b"first", "image/png", 1.0, 1)
    queue.fail(job, "late failure", retry=True)
    queue.fail(job, "late failure", retry=False)
    queue.complete(job, b"second", "image/webp", 2.0, 1)
    rec = _status(queue, job_id)
    assert (rec.status, rec.media_type, rec.error) == (JobState.DONE, "image/png", None)
    assert queue.result(job_id) == b"first" and queue.depth() == 0


# ---------------------------------------------------------------------------------------------------------------
# Cancel, list, expire, workers


def test_cancel_a_queued_job(queue: JobQueue) -> None:
    """(A running job can be cancelled too: tests/test_job_progress.py.)"""
    running, queued = _submit(queue, 2)
    [job] = queue.reserve("w1", 1, 100)
    assert queue.cancel(queued)
    rec = _status(queue, queued)
    assert (rec.status, rec.position, rec.error) == (JobState.CANCELLED, None, "cancelled by an administrator")
    assert _status_of(queue.wait(queued, 5)) == JobState.CANCELLED
    assert queue.depth() == 1
    assert queue.reserve("w1", 1, 50) == []
    assert not queue.cancel(queued)
    queue.complete(job, b"r", "image/png", 1.0, 1)
    assert not queue.cancel(running)  # ended


def test_cancel_a_job_waiting_for_its_retry(queue: JobQueue) -> None:
    job_id = queue.submit("muse", PNG, b"x")
    [job] = queue.reserve("w1", 1, 100)
    queue.fail(job, "transient", retry=True)
    assert queue.cancel(job_id)
    assert queue.reserve("w1", 1, 50) == [] and queue.depth() == 0


def test_list_jobs_newest_first_in_every_state(queue: JobQueue) -> None:
    done, failed, cancelled, queued = _submit(queue, 4)
    first, second = queue.reserve("w1", 2, 100)
    queue.complete(first, b"r", "image/png", 1.0, 2)
    queue.fail(second, "bad", retry=False, status=422)
    queue.cancel(cancelled)
    listed = queue.list_jobs()
    assert [r.id for r in listed] == [queued, cancelled, failed, done]
    assert [r.status for r in listed] == [JobState.QUEUED, JobState.CANCELLED, JobState.FAILED, JobState.DONE]
    assert listed[0].position == 0 and all(isinstance(r, JobRecord) for r in listed)
    assert [r.id for r in queue.list_jobs(limit=2)] == [queued, cancelled]


def test_jobs_expire_ttl_after_their_last_change(make_queue: Callable[..., JobQueue]) -> None:
    queue = make_queue(ttl_s=1.0)
    finished, waiting = _submit(queue, 2)
    [job] = queue.reserve("w1", 1, 100)
    queue.complete(job, b"r", "image/png", 1.0, 1)
    assert {r.id for r in queue.list_jobs()} == {finished, waiting}
    time.sleep(1.3)
    assert queue.status(finished) is None and queue.result(finished) is None
    assert queue.status(waiting) is None  # a queued job's upload expires too
    assert queue.reserve("w1", 1, 50) == [] and queue.depth() == 0
    assert queue.list_jobs() == []


def test_heartbeats_list_live_workers(queue: JobQueue) -> None:
    assert queue.workers() == []
    queue.heartbeat("w1", {"ready": True, "models": {"muse": 1}})
    queue.heartbeat("w2", {"ready": False, "models": {}})
    workers = sorted(queue.workers(), key=lambda w: w["id"])
    assert [w["id"] for w in workers] == ["w1", "w2"]
    assert workers[0]["ready"] and workers[0]["models"] == {"muse": 1} and workers[0]["last_seen"] <= time.time()
    assert queue.workers(max_age_s=-1) == []


def test_nothing_to_reclaim_from_live_workers(queue: JobQueue) -> None:
    queue.submit("muse", PNG, b"x")
    queue.reserve("w1", 1, 100)
    assert queue.reclaim("w2", min_idle_ms=60_000) == []


# ---------------------------------------------------------------------------------------------------------------
# Redis only: several processes, dead workers, key expiry


def test_redis_dead_worker_jobs_are_reclaimed(redis_db: str) -> None:
    q = RedisQueue(redis_db, **LIMITS)
    ids = _submit(q, 3)
    taken = q.reserve("dead-worker", 8, 100)
    assert len(taken) == 3
    assert q.reclaim("w2", min_idle_ms=60_000) == []  # not idle long enough yet
    time.sleep(0.25)
    claimed = q.reclaim("w2", min_idle_ms=200)
    assert sorted(j.id for j in claimed) == sorted(ids)
    assert all(j.attempt == 2 and isinstance(j.params, JobParams) for j in claimed)
    for j in claimed:
        q.complete(j, b"r", "image/png", 1.0, 3)
    assert all(_status(q, i).status is JobState.DONE for i in ids)
    # The dead worker's late completion of the same job changes nothing.
    q.complete(taken[0], b"late", "image/png", 1.0, 3)
    assert q.result(ids[0]) == b"r"
    assert q.depth() == 0


def test_redis_reclaimed_too_often_gives_up(redis_db: str) -> None:
    q = RedisQueue(redis_db, **{**LIMITS, "max_attempts": 1})
    job_id = q.submit("muse", PNG, b"x")
    q.reserve("dead-worker", 1, 100)
    time.sleep(0.05)
    assert q.reclaim("w2", min_idle_ms=10) == []
    rec = _status(q, job_id)
    assert rec.status is JobState.FAILED and rec.error.startswith("gave up after 1 attempts")
    assert q.depth() == 0


def test_redis_keys_expire(redis_db: str) -> None:
    q = RedisQueue(redis_db, **{**LIMITS, "ttl_s": 1.0})
    job_id = q.submit("muse", PNG, b"x")
    assert 0 < q.r.pttl(f"percept:job:{job_id}") <= 1000
    assert 0 < q.r.pttl(f"percept:job:{job_id}:input") <= 1000
    [job] = q.reserve("w1", 1, 100)
    q.complete(job, b"r", "image/png", 1.0, 1)
    for key in (f"percept:job:{job_id}", f"percept:job:{job_id}:result", f"percept:job:{job_id}:done"):
        assert 0 < q.r.pttl(key) <= 1000, key
    assert not q.r.exists(f"percept:job:{job_id}:input")


def test_redis_api_and_worker_processes_share_the_queue(redis_db: str) -> None:
    """Two connections (an API process and a worker) see one queue."""
    api, worker = RedisQueue(redis_db, **LIMITS), RedisQueue(redis_db, **LIMITS)
    job_id = api.submit("muse", JobParams(strength=0.25, preserve_color=True), b"x")
    [job] = worker.reserve("w1", 1, 100)
    assert job.params == JobParams(strength=0.25, preserve_color=True)
    worker.complete(job, b"r", "image/png", 1.0, 1)
    assert _status_of(api.wait(job_id, 5)) == JobState.DONE and api.result(job_id) == b"r"
