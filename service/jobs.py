"""Jobs over HTTP: enqueue an upload, wait for it, and turn a job record into a response."""

from __future__ import annotations

import dataclasses
import logging
import time

import anyio
from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse

from imaging.video import sniff as sniff_video
from service.deps import JOB_ID_LENGTH, ServiceState, unavailable
from service.schemas import JobStatus
from service.settings import ServiceSettings
from service.uploads import check_image, check_output_size, check_video, read_image
from worker.queue import IdempotencyConflict, JobParams, JobRecord, JobState, QueueFull

log = logging.getLogger(__name__)

# Jobs


def job_id_ok(job_id: str) -> bool:
    return len(job_id) == JOB_ID_LENGTH and all(c in "0123456789abcdef" for c in job_id)


def job_failure(rec: JobRecord, settings: ServiceSettings) -> HTTPException:
    """A failed or cancelled job as an HTTP error: the input's fault -> 422, the service's -> 503."""
    error = rec.error or "the job failed"
    if rec.status is JobState.CANCELLED:
        return HTTPException(410, f"the job was cancelled: {error}")
    status = rec.error_status  # set by the worker: 4xx the input's fault, 503 the service's
    if status is not None and 400 <= status < 500:
        return HTTPException(status, error)
    return unavailable(f"the job failed on the worker: {error}", settings)


def status_response(rec: JobRecord, code: int = 202) -> JSONResponse:
    body = JobStatus.from_record(rec).model_dump(mode="json")
    headers = {"Location": f"/jobs/{rec.id}", "X-Job-Id": rec.id}
    if not rec.terminal:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=code, headers=headers)


def result_response(rec: JobRecord, data: bytes) -> Response:
    created, started, finished = rec.created_at, rec.started_at, rec.finished_at
    media_type = rec.media_type or "application/octet-stream"
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4"}.get(media_type, "bin")
    headers = {"X-Job-Id": rec.id, "X-Model": rec.model, "Cache-Control": "no-store",
               "Content-Disposition": f'inline; filename="{rec.id}.{ext}"'}
    timing = []
    if created and started:
        headers["X-Queue-Wait-Ms"] = f"{(started - created) * 1000:.1f}"
        timing.append(f"queue;dur={(started - created) * 1000:.1f}")
    if rec.compute_ms is not None:
        headers["X-Compute-Ms"] = f"{rec.compute_ms:.1f}"
        timing.append(f"compute;dur={rec.compute_ms:.1f}")
    if rec.batch_size is not None:
        headers["X-Batch-Size"] = str(rec.batch_size)
    if created and finished:
        headers["X-Total-Ms"] = f"{(finished - created) * 1000:.1f}"
        timing.append(f"total;dur={(finished - created) * 1000:.1f}")
    if timing:
        headers["Server-Timing"] = ", ".join(timing)
    return Response(data, media_type=media_type, headers=headers)


CLIENT_LEFT = "cancelled: the client disconnected before the result was ready"


async def wait_for_job(state: ServiceState, job_id: str, timeout: float,
                       request: Request) -> tuple[JobRecord | None, bytes | None]:
    """Block (in a worker thread, a second at a time) until the job ends, `timeout` passes or the client leaves;
    the job's record and, when it is done, its result (read in the same thread hop: issue 15).

    A client that leaves (closed the connection: Ctrl-C on curl, a closed tab) cancels its job: nobody is left to
    receive the result (a queued job never runs; a running one stops at its next tile)."""

    def wait(chunk: float) -> tuple[JobRecord | None, bytes | None]:
        rec = state.queue.wait(job_id, chunk)
        return rec, state.queue.result(job_id) if rec is not None and rec.status is JobState.DONE else None

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        rec, data = await anyio.to_thread.run_sync(wait, max(0.0, min(remaining, 1.0)), limiter=state.wait_limiter)
        if rec is None or rec.terminal:
            return rec, data
        if await request.is_disconnected():
            if await anyio.to_thread.run_sync(state.queue.cancel, job_id, CLIENT_LEFT):
                log.info("job %s cancelled: its client disconnected", job_id)
            return await anyio.to_thread.run_sync(state.queue.status, job_id), None
        if remaining <= 1.0:
            return rec, None


async def run_job(request: Request, state: ServiceState, model: str, factor: int, params: JobParams,
                  wait: float | None, run_async: bool, idempotency_key: str | None = None) -> Response:
    """Validate the upload, enqueue it (or find the job its Idempotency-Key names), then answer with the image or
    with 202 and the job. Every answer once the job exists carries X-Job-Id."""
    settings = state.settings
    if wait is not None and wait > settings.max_wait_s:
        raise HTTPException(422, f"wait must be between 0 and {settings.max_wait_s:g} seconds")
    data, declared = await read_image(request, settings)
    video = sniff_video(data[:16]) is not None
    run_async = run_async or video  # a clip: minutes of work, so always a 202 job (GET /jobs/{id} shows frames done)
    max_side = params.max_side or settings.max_side_default
    params = dataclasses.replace(params, max_side=max_side, max_pixels=settings.max_pixels)

    def submit() -> str:  # the checks and the enqueue in one thread hop (issue 15: 0.2-1 ms a hop at one client)
        size = check_video(data, settings) if video else check_image(data, declared, settings)
        check_output_size(size, max_side, factor, settings)
        try:
            return state.queue.submit(model, params, data, idempotency_key)
        except QueueFull as e:
            state.metrics.rejected.labels("queue_full").inc()
            raise unavailable(f"the service is busy ({e}); try again shortly", settings) from None
        except IdempotencyConflict as e:
            raise HTTPException(409, str(e)) from None

    job_id = await anyio.to_thread.run_sync(submit)
    state.metrics.submitted.labels(model).inc()
    timeout = settings.default_wait_s if wait is None else wait
    if run_async or timeout <= 0:
        rec = await anyio.to_thread.run_sync(state.queue.status, job_id)
        return status_response(rec or _gone(job_id))
    rec, result = await wait_for_job(state, job_id, timeout, request)
    if rec is None:
        # Its record vanished while the client waited: expired, or lost with the queue's data (Redis restarted
        # without persistence). Not worth waiting for: it will never finish.
        e = HTTPException(404, f"job {job_id} was lost: its record vanished from the job queue before it finished "
                               "(expired, or Redis lost its data); submit it again")
        e.headers = {**(e.headers or {}), "X-Job-Id": job_id}
        raise e
    try:
        return await finished_or_pending(state, rec, result)
    except HTTPException as e:  # the job failed: its id still tells the client which one
        e.headers = {**(e.headers or {}), "X-Job-Id": job_id}
        raise


def _gone(job_id: str) -> JobRecord:
    return JobRecord(id=job_id, model="", params=JobParams(), created_at=time.time())


async def finished_or_pending(state: ServiceState, rec: JobRecord, data: bytes | None = None) -> Response:
    """The response for a job's record: its result (`data`, or read from the queue), a failure, or 202."""
    if rec.status is JobState.DONE:
        state.metrics.observe_job(rec)
        if data is None:
            data = await anyio.to_thread.run_sync(state.queue.result, rec.id)
        if data is None:
            evicted = getattr(state.queue, "evicted", None)
            if evicted is not None and await anyio.to_thread.run_sync(evicted, rec.id):
                raise HTTPException(410, f"the result of job {rec.id} was dropped to keep the stored results under "
                                         "PERCEPT_RESULT_CACHE_MB (oldest first); submit the image again")
            raise HTTPException(410, f"the result of job {rec.id} has expired; submit the image again")
        return result_response(rec, data)
    if rec.terminal:
        raise job_failure(rec, state.settings)
    return status_response(rec)
