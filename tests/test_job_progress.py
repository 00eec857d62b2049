"""Progress, ETA and cancel of jobs (issue 16): the pipeline's progress callback (tiles, layer steps, one pass),
the queue's progress fields and cancel of running jobs on both backends, the worker stopping a cancelled job at
its next tile, GET/DELETE /jobs/{id}, and a synchronous request whose client leaves cancelling its job."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from helpers import wait_until
from PIL import Image

from model_store import pipeline, store
from model_store.networks import NetworkConfig, build_network
from model_store.tiling import run_layer_by_layer, run_tiled
from service.app import create_app
from service.schemas import JobStatus
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue
from worker.queue import JobParams, JobQueue, JobRecord, JobState
from worker.redis_queue import RedisQueue
from worker.runner import Worker
from worker.settings import WorkerSettings

KEY = "admin-key-for-tests"


@pytest.fixture(params=["memory", "redis"])
def queue(request: pytest.FixtureRequest) -> JobQueue:
    if request.param == "memory":
        return MemoryQueue(ttl_s=60)
    return RedisQueue(request.getfixturevalue("redis_db"), ttl_s=60)


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# The pipeline's progress callback


def test_run_tiled_reports_every_tile_and_stops_when_the_callback_raises() -> None:
    image = torch.rand(1, 3, 64, 64)
    calls: list[tuple[int, int]] = []
    out = run_tiled(lambda t: t * 2, image, 1, tile=24, overlap=8, progress=lambda d, t: calls.append((d, t)))
    total = calls[0][1]
    assert total > 4 and calls == [(i, total) for i in range(1, total + 1)]
    assert torch.allclose(out, image * 2, atol=1e-5)

    seen: list[int] = []

    def stop_at_two(done: int, total: int) -> None:
        seen.append(done)
        if done == 2:
            raise KeyboardInterrupt  # any exception: the caller's own

    with pytest.raises(KeyboardInterrupt):
        run_tiled(lambda t: t, image, 1, tile=24, overlap=8, progress=stop_at_two)
    assert seen == [1, 2]


def test_layer_by_layer_reports_convolutions_done() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="style", width=0.25, residual_blocks=1)).eval()
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    calls: list[tuple[int, int]] = []
    run_layer_by_layer(net, torch.rand(1, 3, 48, 48) * 255, 400, progress=lambda d, t: calls.append((d, t)))
    assert {t for _, t in calls} == {convs} and calls[-1] == (convs, convs)
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(calls) > convs  # within a layer too, once per tile


def test_infer_reports_one_pass_as_zero_then_one_and_tiles_over_all_inputs() -> None:
    torch.manual_seed(0)
    net = build_network(NetworkConfig(kind="sr", factor=2, width=0.25, residual_blocks=1)).eval()
    calls: list[tuple[int, int]] = []
    pipeline.infer(net, [torch.rand(1, 3, 16, 16) * 255] * 2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(0, 1), (1, 1)]
    calls.clear()
    pipeline.infer(net, [torch.rand(1, 3, 96, 96) * 255] * 2, tile_pixels=30_000,
                   progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert calls[-1] == (total, total) and total % 2 == 0 and total >= 4
    assert [d for d, _ in calls] == list(range(1, total + 1))  # the second input continues the count


# ---------------------------------------------------------------------------------------------------------------
# The queue: progress fields, cancel of a running job (both backends)


def test_progress_is_stored_while_running_only(queue: JobQueue) -> None:
    job_id = queue.submit("muse", JobParams(), b"x")
    assert not queue.progress(job_id, 1, 2)  # queued: not stored
    assert (queue.status(job_id).progress_done, queue.status(job_id).progress_total) == (None, None)
    [job] = queue.reserve("w1", 1, 100)
    assert queue.progress(job_id, 3, 8)
    rec = queue.status(job_id)
    assert (rec.status, rec.progress_done, rec.progress_total) == (JobState.RUNNING, 3, 8)
    assert JobRecord.from_json(rec.to_json()) == rec
    queue.fail(job, "transient", retry=True)  # a retry starts over: the next worker reports afresh
    queue.reserve("w1", 1, 100)
    assert (queue.status(job_id).progress_done, queue.status(job_id).progress_total) == (None, None)
    assert not queue.progress("f" * 32, 1, 2)  # unknown: never creates a record
    assert queue.status("f" * 32) is None


def test_cancel_a_running_job(queue: JobQueue) -> None:
    job_id = queue.submit("muse", JobParams(), b"x")
    [job] = queue.reserve("w1", 1, 100)
    assert queue.progress(job_id, 1, 4)
    assert queue.cancel(job_id, "cancelled by its submitter")
    rec = queue.status(job_id)
    assert (rec.status, rec.error) == (JobState.CANCELLED, "cancelled by its submitter")
    assert not queue.progress(job_id, 2, 4)  # the worker learns it here and stops
    assert queue.depth() == 0
    queue.complete(job, b"late", "image/png", 1.0, 1)  # a result delivered anyway is dropped
    assert queue.status(job_id).status is JobState.CANCELLED and queue.result(job_id) is None
    assert not queue.cancel(job_id)  # ended


def test_a_cancel_crossing_a_complete_or_a_retry_ends_the_job_once(queue: JobQueue) -> None:
    """A submitter's cancel racing the worker's `complete` (even jobs) or `fail(retry=True)` (odd jobs): each job
    ends exactly once. A completed job holds its result and its cancel said False; a cancelled one holds none; a
    retried job is cancelled in its new place and never runs again. (Redis: one atomic script ends or requeues a
    job; it used to check, then write, in separate round trips, and this test failed there every time.)"""
    import threading

    ids = [queue.submit("muse", JobParams(), b"x") for _ in range(60)]
    jobs = queue.reserve("w1", 60, 100)
    assert len(jobs) == 60
    cancelled: dict[str, bool] = {}
    start = threading.Barrier(2)

    def cancel_all() -> None:
        start.wait()
        for job_id in ids:
            cancelled[job_id] = queue.cancel(job_id, "raced")

    def finish_all() -> None:
        start.wait()
        for i, job in enumerate(jobs):
            if i % 2:
                queue.fail(job, "try again", retry=True)
            else:
                queue.complete(job, job.id.encode(), "image/png", 1.0, 1)

    threads = [threading.Thread(target=cancel_all), threading.Thread(target=finish_all)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for i, job_id in enumerate(ids):
        rec = queue.status(job_id)
        if i % 2:  # retried or not, the cancel found it unended
            assert cancelled[job_id] and rec.status is JobState.CANCELLED, (job_id, rec.status)
        elif cancelled[job_id]:
            assert rec.status is JobState.CANCELLED and queue.result(job_id) is None, job_id
        else:
            assert rec.status is JobState.DONE and queue.result(job_id) == job_id.encode(), job_id
    assert queue.depth() == 0 and queue.reserve("w2", 60, 50) == []


def test_eta_from_elapsed_time_and_fraction() -> None:
    rec = JobRecord(id="a" * 32, model="sr_x4", params=JobParams(), created_at=100.0, status=JobState.RUNNING,
                    started_at=110.0, progress_done=1, progress_total=4)
    body = JobStatus.from_record(rec, now=120.0)  # 10 s for a quarter: 30 s left
    assert body.progress is not None and (body.progress.done, body.progress.total, body.progress.fraction) == (1, 4,
                                                                                                               0.25)
    assert body.eta_s == 30.0
    started = JobStatus.from_record(JobRecord(**{**rec.__dict__, "progress_done": 0}), now=120.0)
    assert started.progress is not None and started.eta_s is None  # nothing done yet: no estimate
    done = JobStatus.from_record(JobRecord(**{**rec.__dict__, "status": JobState.DONE}), now=120.0)
    assert done.progress is None and done.eta_s is None


# ---------------------------------------------------------------------------------------------------------------
# The worker: progress of a tiled job, a cancelled running job stops at its next tile


@pytest.fixture
def slow_sr(tmp_store: Path) -> Iterator[tuple[MemoryQueue, Worker, list[int]]]:
    """A worker on a tiny x2 SR model whose tiles take 50 ms each (a 160x160 input: 16 tiles at 30,000 pixels)."""
    torch.manual_seed(0)
    store.publish("tiny-sr", build_network(NetworkConfig(kind="sr", factor=2, width=0.25, residual_blocks=1)))
    queue = MemoryQueue()
    worker = Worker(queue, WorkerSettings(device="cpu", warmup_sizes="", max_batch_delay_ms=1))
    worker.settings.tile_pixels = 30_000  # below the setting's floor (1 MP): small tiles keep the test fast
    worker.ready = True
    tiles: list[int] = []
    real = worker._forward

    def slow(net, x):
        time.sleep(0.05)
        tiles.append(1)
        return real(net, x)

    worker._forward = slow  # type: ignore[method-assign]
    yield queue, worker, tiles


def _run_in_thread(worker: Worker) -> threading.Thread:
    t = threading.Thread(target=worker.step, kwargs={"first_wait_ms": 1000}, daemon=True)
    t.start()
    return t


def test_worker_reports_tiles_and_a_cancelled_running_job_stops_at_the_next_tile(slow_sr) -> None:
    queue, worker, tiles = slow_sr
    job_id = queue.submit("tiny-sr", JobParams(), _png(160, 160))
    thread = _run_in_thread(worker)
    rec = wait_until(lambda: (r := queue.status(job_id)) and (r.progress_done or 0) >= 2 and r, 20, "two tiles")
    assert rec.status is JobState.RUNNING and rec.progress_total and rec.progress_total > 4
    assert queue.cancel(job_id, "cancelled by its submitter")
    thread.join(10)
    assert not thread.is_alive()
    assert len(tiles) <= rec.progress_done + 2 < rec.progress_total  # stopped at once, not at the end
    assert queue.status(job_id).status is JobState.CANCELLED and queue.result(job_id) is None
    assert worker.counters["jobs_failed"] == 0  # a cancel is not a failure

    # The worker goes on with the next job; its progress ends at total/total.
    tiles.clear()
    other = queue.submit("tiny-sr", JobParams(), _png(160, 160))
    seen: list[tuple[int, int]] = []
    real_progress = queue.progress
    queue.progress = lambda i, d, t: seen.append((d, t)) or real_progress(i, d, t)  # type: ignore[method-assign]
    worker.step(first_wait_ms=1000)
    assert queue.status(other).status is JobState.DONE
    assert seen[-1] == (len(tiles), len(tiles)) and len(seen) == len(tiles)


# ---------------------------------------------------------------------------------------------------------------
# Over HTTP


@pytest.fixture
def api(queue: JobQueue) -> Iterator[tuple[TestClient, JobQueue]]:
    """The service on `queue` (either backend) with no worker: the test plays the worker."""
    with TestClient(create_app(ServiceSettings(api_key=KEY), queue=queue, start_worker=False)) as c:
        yield c, queue


def test_get_job_shows_progress_and_eta(api: tuple[TestClient, JobQueue]) -> None:
    client, queue = api
    job_id = queue.submit("muse", JobParams(), b"x")
    body = client.get(f"/jobs/{job_id}").json()
    assert body["status"] == "queued" and body["progress"] is None and body["eta_s"] is None
    queue.reserve("w1", 1, 100)
    time.sleep(0.2)
    queue.progress(job_id, 1, 4)
    body = client.get(f"/jobs/{job_id}").json()
    assert body["progress"] == {"done": 1, "total": 4, "fraction": 0.25}
    assert 0.5 <= body["eta_s"] < 30  # three times the 0.2 s (or more) the first quarter took


def test_the_submitter_cancels_a_queued_job(api: tuple[TestClient, JobQueue]) -> None:
    client, queue = api
    job_id = queue.submit("muse", JobParams(), b"x")
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and r.json()["error"] == "cancelled by its submitter"
    assert queue.depth() == 0 and queue.reserve("w1", 1, 50) == []  # never runs
    again = client.delete(f"/jobs/{job_id}")
    assert again.status_code == 409 and "already ended" in again.json()["detail"]
    assert client.delete(f"/jobs/{'f' * 32}").status_code == 404
    assert client.delete("/jobs/not-a-job-id").status_code == 404
    assert client.get(f"/jobs/{job_id}/result").status_code == 410
    done = queue.submit("muse", JobParams(), b"y")
    [job] = queue.reserve("w1", 1, 100)
    queue.complete(job, b"img", "image/png", 1.0, 1)
    assert client.delete(f"/jobs/{done}").status_code == 409  # finished: its result stays


def test_cancel_needs_the_public_key_when_one_is_set() -> None:
    queue = MemoryQueue()
    settings = ServiceSettings(api_key=KEY, public_api_key="public-key")
    with TestClient(create_app(settings, queue=queue, start_worker=False)) as client:
        ids = [queue.submit("muse", JobParams(), b"x") for _ in range(2)]
        assert client.delete(f"/jobs/{ids[0]}").status_code == 401
        assert client.delete(f"/jobs/{ids[0]}", headers={"X-API-Key": "public-key"}).status_code == 200
        admin = client.delete(f"/jobs/{ids[1]}", headers={"Authorization": f"Bearer {KEY}"})  # the admin key: any
        assert admin.status_code == 200 and admin.json()["status"] == "cancelled"


def test_the_submitter_cancels_a_running_tiled_job(slow_sr) -> None:
    queue, worker, tiles = slow_sr
    with TestClient(create_app(ServiceSettings(), queue=queue, start_worker=False)) as client:
        job_id = queue.submit("tiny-sr", JobParams(), _png(160, 160))
        thread = _run_in_thread(worker)
        wait_until(lambda: (client.get(f"/jobs/{job_id}").json()["progress"] or {}).get("done", 0) >= 1, 20,
                   "the first tile")
        r = client.delete(f"/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
        thread.join(10)
        assert not thread.is_alive()
        total = queue.status(job_id).progress_total
        assert total and len(tiles) < total
        assert client.get(f"/jobs/{job_id}/result").status_code == 410


class _LeavingClient:
    """A request whose client has closed its connection (what Starlette reports after an http.disconnect)."""

    async def is_disconnected(self) -> bool:
        return True


def test_a_sync_request_whose_client_leaves_cancels_its_job(queue: JobQueue) -> None:
    import anyio

    from service.jobs import CLIENT_LEFT, wait_for_job

    queued = queue.submit("muse", JobParams(), b"x")
    running = queue.submit("muse", JobParams(), b"y")
    queue.reserve("w1", 1, 100)  # takes `queued` (the oldest)
    for job_id in (queued, running):
        state = type("State", (), {"queue": queue, "wait_limiter": None})()
        start = time.monotonic()
        rec, result = anyio.run(wait_for_job, state, job_id, 30.0, _LeavingClient())
        assert time.monotonic() - start < 5  # noticed within a wait chunk, not after the 30 s
        assert rec is not None and rec.status is JobState.CANCELLED and rec.error == CLIENT_LEFT
        assert result is None
    assert queue.depth() == 0
    assert not queue.progress(queued, 1, 2)  # its worker stops at the next tile


def test_closing_the_connection_cancels_the_job_over_real_http() -> None:
    """The same through uvicorn: curl's Ctrl-C (here an httpx timeout) closes the socket; the job is cancelled."""
    import httpx
    import uvicorn

    queue = MemoryQueue()
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceSettings(), queue=queue, start_worker=False),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started and server.servers, 20, "uvicorn")
        port = server.servers[0].sockets[0].getsockname()[1]
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"http://127.0.0.1:{port}/stylize", params={"style": "muse", "wait": 20},
                       content=_png(32, 32), headers={"Content-Type": "image/png"}, timeout=1.0)
        [rec] = queue.list_jobs()
        cancelled = wait_until(lambda: (r := queue.status(rec.id)) and r.status is JobState.CANCELLED and r, 10,
                               "the job cancelled")
        assert "disconnected" in (cancelled.error or "")
    finally:
        server.should_exit = True
        thread.join(10)


# ---------------------------------------------------------------------------------------------------------------
# A long job does not starve short ones (the embedded worker interleaves)


@pytest.mark.parametrize("interleave", [False, True])
def test_short_jobs_run_between_the_tiles_of_a_long_one(slow_sr, interleave: bool) -> None:
    queue, worker, tiles = slow_sr
    worker.interleave_s = 0.0 if interleave else None
    long_id = queue.submit("tiny-sr", JobParams(), _png(160, 160))
    thread = _run_in_thread(worker)
    wait_until(lambda: (queue.status(long_id).progress_done or 0) >= 1, 20, "the long job's first tile")
    short_id = queue.submit("tiny-sr", JobParams(), _png(16, 16))  # one pass, no tiles
    other_long = queue.submit("tiny-sr", JobParams(), _png(160, 160))  # queued behind the short one
    thread.join(30)
    if not interleave:  # the step ends with the long job; the others wait for the next one
        assert queue.status(short_id).status is JobState.QUEUED
        return
    long_rec, short_rec = queue.status(long_id), queue.status(short_id)
    assert long_rec.status is JobState.DONE and short_rec.status is JobState.DONE
    assert short_rec.finished_at < long_rec.finished_at  # served while the long job was still running
    # The second long job was taken then too, and ran after the first: its place in the queue.
    other = queue.status(other_long)
    assert other.status is JobState.DONE and other.started_at < long_rec.finished_at < other.finished_at
