"""Idempotent submission (issue 14): an `Idempotency-Key` names one job in both queue backends; a retry gets that
job and its stored result (also after the API process was killed); the job id comes in `X-Job-Id` on every answer
once the job exists; embedded results are capped by bytes (the oldest dropped first, 410)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import free_port, start_serve
from test_limits import _env
from test_service_api import KEY, assert_error, photo, post_image

from service.app import create_app
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue
from worker.queue import IdempotencyConflict, JobParams, JobQueue, request_fingerprint
from worker.redis_queue import RedisQueue

PNG = JobParams(format="png")


@pytest.fixture(params=["memory", "redis"])
def make_queue(request: pytest.FixtureRequest) -> Callable[..., JobQueue]:
    if request.param == "memory":
        return lambda **kw: MemoryQueue(**{"max_depth": 4, "ttl_s": 60.0, **kw})
    url = request.getfixturevalue("redis_db")
    return lambda **kw: RedisQueue(url, **{"max_depth": 4, "ttl_s": 60.0, **kw})


def _finish(q: JobQueue, result: bytes = b"out") -> None:
    for job in q.reserve("w", 8, 100):
        q.complete(job, result, "image/png", 1.0, 1)


def test_same_key_same_request_is_one_job(make_queue: Callable[..., JobQueue]) -> None:
    q = make_queue()
    first = q.submit("muse", PNG, b"img", idempotency_key="k1")
    assert q.submit("muse", PNG, b"img", idempotency_key="k1") == first
    assert q.depth() == 1
    _finish(q)
    # After it finished, the retry still names the same job and its stored result: nothing is computed again.
    assert q.submit("muse", PNG, b"img", idempotency_key="k1") == first
    assert q.depth() == 0 and q.result(first) == b"out"
    # Without a key, or with another key, each request is its own job.
    assert q.submit("muse", PNG, b"img") != first
    assert q.submit("muse", PNG, b"img", idempotency_key="k2") != first


@pytest.mark.parametrize("change", [("candy", PNG, b"img"), ("muse", JobParams(format="jpeg"), b"img"),
                                    ("muse", PNG, b"other")])
def test_same_key_other_request_conflicts(make_queue: Callable[..., JobQueue], change: tuple) -> None:
    q = make_queue()
    q.submit("muse", PNG, b"img", idempotency_key="k")
    with pytest.raises(IdempotencyConflict, match="different request"):
        q.submit(*change, idempotency_key="k")


def test_a_retry_does_not_count_against_a_full_queue(make_queue: Callable[..., JobQueue]) -> None:
    q = make_queue(max_depth=1)
    first = q.submit("muse", PNG, b"img", idempotency_key="k")
    assert q.submit("muse", PNG, b"img", idempotency_key="k") == first


def test_memory_results_are_capped_by_bytes_oldest_first() -> None:
    q = MemoryQueue(max_depth=8, max_result_bytes=250)
    ids = [q.submit("muse", PNG, bytes([i]), idempotency_key=f"k{i}") for i in range(3)]
    for job in q.reserve("w", 8, 100):
        q.complete(job, b"x" * 100, "image/png", 1.0, 1)
    assert q.result(ids[0]) is None and q.evicted(ids[0])  # 300 bytes > 250: the oldest went
    assert q.result(ids[1]) == q.result(ids[2]) == b"x" * 100
    # A retry of the evicted job computes it again rather than pointing at a result that is gone.
    assert q.submit("muse", PNG, bytes([0]), idempotency_key="k0") != ids[0]
    assert q.submit("muse", PNG, bytes([1]), idempotency_key="k1") == ids[1]


# ---------------------------------------------------------------------------------------------------------------
# Over HTTP (no worker: the test moves the jobs)


@pytest.fixture
def idle() -> Iterator[tuple[TestClient, MemoryQueue]]:
    queue = MemoryQueue(max_depth=4, max_result_bytes=10)
    with TestClient(create_app(ServiceSettings(api_key=KEY), queue=queue, start_worker=False)) as c:
        yield c, queue


def test_http_retry_with_the_same_key_gets_the_stored_result(idle: tuple[TestClient, MemoryQueue]) -> None:
    client, queue = idle
    key = {"Idempotency-Key": "retry-1"}
    r = client.post("/stylize", params={"style": "candy", "wait": 0}, content=photo(),
                    headers={"Content-Type": "image/png", **key})
    assert r.status_code == 202, r.text
    job_id = r.headers["x-job-id"]
    assert r.json()["id"] == job_id and r.headers["location"] == f"/jobs/{job_id}"
    # A sync request that runs out of `wait` answers 202 with the id too.
    r = client.post("/stylize", params={"style": "candy", "wait": 0.1}, content=photo(),
                    headers={"Content-Type": "image/png", **key})
    assert r.status_code == 202 and r.headers["x-job-id"] == job_id and queue.depth() == 1
    _finish(queue, b"\x89PNG-result")
    r = client.post("/stylize", params={"style": "candy"}, content=photo(),
                    headers={"Content-Type": "image/png", **key})
    assert r.status_code == 200 and r.content == b"\x89PNG-result" and r.headers["x-job-id"] == job_id
    assert queue.depth() == 0

    # The same key with another request: 409, nothing queued.
    r = client.post("/stylize", params={"style": "mosaic"}, content=photo(),
                    headers={"Content-Type": "image/png", **key})
    assert_error(r, 409, "Idempotency-Key", "different request")
    assert queue.depth() == 0


@pytest.mark.parametrize("bad", ["x" * 201, "caf\u00e9", "tab\tkey"])
def test_http_idempotency_key_is_validated(idle: tuple[TestClient, MemoryQueue], bad: str) -> None:
    client, queue = idle
    r = client.post("/upscale", params={"factor": 4}, content=photo(),
                    headers={"Content-Type": "image/png", "Idempotency-Key": bad.encode("latin-1")})
    assert_error(r, 422, "idempotency-key")
    assert queue.depth() == 0


def test_http_evicted_result_is_410(idle: tuple[TestClient, MemoryQueue]) -> None:
    client, queue = idle
    ids = [post_image(client, "/stylize", photo(seed=i), style="candy", wait=0).headers["x-job-id"]
           for i in range(2)]
    _finish(queue, b"y" * 8)  # two 8-byte results, the cap is 10 bytes: the first is dropped
    assert_error(client.get(f"/jobs/{ids[0]}/result"), 410, "PERCEPT_RESULT_CACHE_MB")
    r = client.get(f"/jobs/{ids[1]}/result")
    assert r.status_code == 200 and r.content == b"y" * 8


# ---------------------------------------------------------------------------------------------------------------
# A real API process in Redis mode, killed and restarted: the retry finds the stored result.


def test_retry_after_the_api_process_died_gets_the_stored_result(redis_db: str) -> None:
    def start(port: int) -> subprocess.Popen:
        return start_serve(port, "--redis-url", redis_db, env=_env())

    port = free_port()
    url = f"http://127.0.0.1:{port}/stylize"
    request = {"params": {"style": "candy", "wait": 1}, "content": photo(),
               "headers": {"Content-Type": "image/png", "Idempotency-Key": "crash-retry-7"}}
    api = start(port)
    try:
        r = httpx.post(url, timeout=30, **request)  # no worker yet: 202 after `wait`, with the job's id
        assert r.status_code == 202, r.text
        job_id = r.headers["x-job-id"]
        api.send_signal(signal.SIGKILL)
        api.wait(10)

        queue = RedisQueue(redis_db)  # a worker finishes the job while no API process runs
        _finish(queue, b"\x89PNG-stored")

        api = start(port)
        r = httpx.post(url, timeout=30, **request)
        assert r.status_code == 200 and r.content == b"\x89PNG-stored", r.text
        assert r.headers["x-job-id"] == job_id
        assert queue.depth() == 0 and len(queue.list_jobs()) == 1  # computed once
    finally:
        api.kill()
        api.wait(10)


@pytest.mark.parametrize(("status", "replayed"), [(422, True), (503, False)])
def test_a_retry_after_a_failure_replays_only_the_inputs_fault(make_queue: Callable[..., JobQueue], status: int,
                                                               replayed: bool) -> None:
    """A job failed for its input (4xx) gives the retry the same answer; one failed for the service (5xx), or
    cancelled, is computed again."""
    q = make_queue()
    first = q.submit("muse", PNG, b"img", idempotency_key="k")
    for job in q.reserve("w", 8, 100):
        q.fail(job, "boom", retry=False, status=status)
    again = q.submit("muse", PNG, b"img", idempotency_key="k")
    assert (again == first) is replayed
    assert q.submit("muse", PNG, b"img", idempotency_key="k") == again  # the key now names the new job


def test_a_retry_after_a_cancel_computes_again(make_queue: Callable[..., JobQueue]) -> None:
    q = make_queue()
    first = q.submit("muse", PNG, b"img", idempotency_key="k")
    assert q.cancel(first)
    assert q.submit("muse", PNG, b"img", idempotency_key="k") != first


def test_redis_concurrent_first_request_is_awaited_not_duplicated(redis_db: str) -> None:
    """Two API processes get the same key at once: the second waits for the first's record rather than queueing
    a second job (the first holds the key between its SET NX and its job's record)."""
    q = RedisQueue(redis_db, max_depth=4, ttl_s=60.0)
    other = RedisQueue(redis_db, max_depth=4, ttl_s=60.0)
    first = q.submit("muse", PNG, b"img")  # stands for the first request's job, its record written late
    raw = q.r.hgetall(q._key(first))
    q.r.delete(q._key(first))
    key = "percept:idem:" + hashlib.sha256(b"race").hexdigest()
    q.r.set(key, json.dumps({"job": first, "fingerprint": request_fingerprint("muse", PNG, b"img"),
                             "at": time.time()}))
    threading.Timer(0.3, lambda: q.r.hset(q._key(first), mapping=raw)).start()
    assert other.submit("muse", PNG, b"img", idempotency_key="race") == first
