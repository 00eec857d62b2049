"""The HTTP endpoints. Handlers stay thin: the queue, settings and metrics come in through `Depends`.

Public (``public_api_key`` when set)::

    POST /stylize?style=NAME       POST /upscale?factor=4|8        image in, image out (or 202 + job)
    GET  /jobs/{id}                GET  /jobs/{id}/result
    GET  /styles                   GET  /styles/{name}/thumbnail   GET /models

Probes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics``. Admin (``Authorization: Bearer <api_key>``):
``/admin/models/...`` (default version, delete a version, publish a checkpoint), ``/admin/jobs``,
``/admin/workers``. Every error answer is JSON ``{"detail": "..."}``.
"""

from __future__ import annotations

import io
import logging
import math
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from model_store import store
from service import images
from service.metrics import Metrics
from service.schemas import DefaultVersion, Error, Health, JobStatus, ModelInfo, Published, WorkerInfo
from service.settings import ServiceSettings
from worker.queue import TERMINAL, QueueFull

log = logging.getLogger(__name__)

# Multipart framing (boundaries, part headers) around the file: allowed on top of max_upload_bytes.
MULTIPART_SLACK = 64 * 1024
THUMBNAIL_SIDE = 256
JOB_ID_LENGTH = 32  # uuid4().hex


@dataclass
class ServiceState:
    """What the handlers share: one per app."""

    settings: ServiceSettings
    queue: Any  # worker.queue.MemoryQueue | RedisQueue
    metrics: Metrics
    wait_limiter: anyio.CapacityLimiter | None = None  # threads blocked waiting on jobs (set in the lifespan)
    worker_error: str | None = None  # embedded mode: why the in-process worker stopped
    embedded_worker: bool = False
    thumbnails: OrderedDict[tuple[str, int, int], bytes] = field(default_factory=OrderedDict)
    thumbnail_lock: threading.Lock = field(default_factory=threading.Lock)


# ---------------------------------------------------------------------------------------------------------------
# Dependencies


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_settings(state: ServiceState = Depends(get_state)) -> ServiceSettings:
    return state.settings


def get_queue(state: ServiceState = Depends(get_state)) -> Any:
    return state.queue


_admin_bearer = HTTPBearer(scheme_name="AdminKey", auto_error=False,
                           description="PERCEPT_API_KEY: required by every /admin endpoint")
_public_bearer = HTTPBearer(scheme_name="PublicKey", auto_error=False,
                            description="PERCEPT_PUBLIC_API_KEY: required by the public endpoints when set")


def _matches(token: str | None, *keys: Any) -> bool:
    given = (token or "").encode()
    # Compare with every key (no early exit) so timing does not tell which one matched.
    found = False
    for key in keys:
        if key is not None:
            found |= secrets.compare_digest(given, key.get_secret_value().encode())
    return found


def require_admin(creds: HTTPAuthorizationCredentials | None = Depends(_admin_bearer),
                  settings: ServiceSettings = Depends(get_settings)) -> None:
    if settings.api_key is None:
        raise HTTPException(403, "the admin endpoints are disabled: set PERCEPT_API_KEY to enable them")
    if creds is None:
        raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <PERCEPT_API_KEY>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not _matches(creds.credentials, settings.api_key):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def require_public(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(_public_bearer),
                   settings: ServiceSettings = Depends(get_settings)) -> None:
    if settings.public_api_key is None:
        return
    token = creds.credentials if creds else request.headers.get("x-api-key")
    if token is None:
        raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not _matches(token, settings.public_api_key, settings.api_key):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def unavailable(message: str, settings: ServiceSettings) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(settings.retry_after_s)})


# ---------------------------------------------------------------------------------------------------------------
# Uploads


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (Content-Length is checked first)."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"upload is {int(length)} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"upload is over the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole body") from None
    return b"".join(chunks)


async def _once(data: bytes) -> AsyncGenerator[bytes, None]:
    yield data


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_image(request: Request, settings: ServiceSettings) -> tuple[bytes, str | None]:
    """The uploaded image's bytes and declared type: a raw body (image/*, application/octet-stream or no
    Content-Type) or the ``file`` field of a multipart form."""
    mime, limit = _media_type(request), settings.max_upload_bytes
    if mime == "multipart/form-data":
        body = await read_limited(request, limit + MULTIPART_SLACK)
        try:
            form = await MultiPartParser(request.headers, _once(body), max_files=1, max_fields=16).parse()
        except MultiPartException as e:
            raise HTTPException(400, f"malformed multipart body: {e.message}") from None
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "the multipart form has no file field named 'file'")
        data = await upload.read()
        await upload.close()
        if len(data) > limit:
            raise HTTPException(413, f"upload is {len(data)} bytes; the limit is {limit} bytes")
        return data, upload.content_type
    if mime and not mime.startswith("image/") and mime != "application/octet-stream":
        hint = " (curl --data-binary sends this type: add -H 'Content-Type: image/jpeg')" if mime.endswith(
            "x-www-form-urlencoded") else ""
        raise HTTPException(415, f"unsupported Content-Type {mime!r}: send the image as the raw body with an image/* "
                                 f"Content-Type, or as multipart/form-data with a field named 'file'{hint}")
    data = await read_limited(request, limit)
    return data, mime if mime.startswith("image/") else None


async def validate_image(data: bytes, declared: str | None, settings: ServiceSettings) -> images.Decoded:
    try:
        return await anyio.to_thread.run_sync(partial(
            images.decode_upload, data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels,
            declared_type=declared))
    except images.ImageError as e:
        raise HTTPException(e.status, e.message) from None


def processed_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The size the worker runs the network at (as `images.resize_max_side` computes it)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, min(max_side, round(width * scale))), max(1, min(max_side, round(height * scale)))


def check_output_size(decoded: images.Decoded, max_side: int | None, factor: int, settings: ServiceSettings) -> None:
    w, h = processed_size(decoded.width, decoded.height, max_side)
    out = w * h * factor * factor
    if out > settings.max_output_pixels:
        hint = int(max(w, h) * math.sqrt(settings.max_output_pixels / out))
        raise HTTPException(413, f"the output would be {w * factor}x{h * factor} = {out} pixels; the limit is "
                                 f"{settings.max_output_pixels} pixels: pass max_side={max(1, hint)} or less")


# ---------------------------------------------------------------------------------------------------------------
# Jobs


def job_id_ok(job_id: str) -> bool:
    return len(job_id) == JOB_ID_LENGTH and all(c in "0123456789abcdef" for c in job_id)


def job_failure(rec: dict[str, Any], settings: ServiceSettings) -> HTTPException:
    """A failed or cancelled job as an HTTP error: the input's fault -> 422, the service's -> 503."""
    error = rec.get("error") or "the job failed"
    if rec["status"] == "cancelled":
        return HTTPException(410, f"the job was cancelled: {error}")
    status = rec.get("error_status")  # a worker that knows the status of its error may say so
    if isinstance(status, int) and 400 <= status < 600:
        if status >= 500:
            return unavailable(error, settings)
        return HTTPException(status, error)
    server_side = ("inference failed", "gave up after", "could not encode", "no model named", "has no version",
                   "do not match the manifest", "refusing to load")
    if any(s in error for s in server_side):
        return unavailable(f"the job failed on the worker: {error}", settings)
    return HTTPException(422, error)


def status_response(rec: dict[str, Any], code: int = 202) -> JSONResponse:
    body = JobStatus.from_record(rec).model_dump(mode="json")
    headers = {"Location": f"/jobs/{rec['id']}"}
    if rec["status"] not in TERMINAL:
        headers["Retry-After"] = "1"
    return JSONResponse(body, status_code=code, headers=headers)


def result_response(rec: dict[str, Any], data: bytes) -> Response:
    created, started, finished = rec.get("created_at"), rec.get("started_at"), rec.get("finished_at")
    media_type = rec.get("media_type") or "application/octet-stream"
    ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(media_type, "bin")
    headers = {"X-Job-Id": rec["id"], "X-Model": rec["model"], "Cache-Control": "no-store",
               "Content-Disposition": f'inline; filename="{rec["id"]}.{ext}"'}
    timing = []
    if created and started:
        headers["X-Queue-Wait-Ms"] = f"{(started - created) * 1000:.1f}"
        timing.append(f"queue;dur={(started - created) * 1000:.1f}")
    if rec.get("compute_ms") is not None:
        headers["X-Compute-Ms"] = f"{float(rec['compute_ms']):.1f}"
        timing.append(f"compute;dur={float(rec['compute_ms']):.1f}")
    if rec.get("batch_size") is not None:
        headers["X-Batch-Size"] = str(rec["batch_size"])
    if created and finished:
        headers["X-Total-Ms"] = f"{(finished - created) * 1000:.1f}"
        timing.append(f"total;dur={(finished - created) * 1000:.1f}")
    if timing:
        headers["Server-Timing"] = ", ".join(timing)
    return Response(data, media_type=media_type, headers=headers)


async def wait_for_job(state: ServiceState, job_id: str, timeout: float, request: Request) -> dict[str, Any] | None:
    """Block (in a worker thread, a second at a time) until the job ends, `timeout` passes or the client leaves."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        chunk = max(0.0, min(remaining, 1.0))
        rec = await anyio.to_thread.run_sync(state.queue.wait, job_id, chunk, limiter=state.wait_limiter)
        if rec is None or rec["status"] in TERMINAL or remaining <= 1.0 or await request.is_disconnected():
            return rec


async def run_job(request: Request, state: ServiceState, model: str, factor: int, params: dict[str, Any],
                  wait: float | None, run_async: bool) -> Response:
    """Validate the upload, enqueue it, then answer with the image or with 202 and the job."""
    settings = state.settings
    if wait is not None and wait > settings.max_wait_s:
        raise HTTPException(422, f"wait must be between 0 and {settings.max_wait_s:g} seconds")
    data, declared = await read_image(request, settings)
    decoded = await validate_image(data, declared, settings)
    max_side = params.get("max_side") or settings.max_side_default
    check_output_size(decoded, max_side, factor, settings)
    params = {**params, "max_side": max_side, "max_pixels": settings.max_pixels}
    try:
        job_id = await anyio.to_thread.run_sync(state.queue.submit, model, params, data)
    except QueueFull as e:
        state.metrics.rejected.labels("queue_full").inc()
        raise unavailable(f"the service is busy ({e}); try again shortly", settings) from None
    state.metrics.submitted.labels(model).inc()
    timeout = settings.default_wait_s if wait is None else wait
    if run_async or timeout <= 0:
        rec = await anyio.to_thread.run_sync(state.queue.status, job_id)
        return status_response(rec or _gone(job_id))
    rec = await wait_for_job(state, job_id, timeout, request)
    if rec is None:
        raise unavailable("the job expired before it finished", settings)
    return await finished_or_pending(state, rec)


def _gone(job_id: str) -> dict[str, Any]:
    return {"id": job_id, "status": "queued", "model": "", "created_at": time.time()}


async def finished_or_pending(state: ServiceState, rec: dict[str, Any]) -> Response:
    if rec["status"] == "done":
        state.metrics.observe_job(rec)
        data = await anyio.to_thread.run_sync(state.queue.result, rec["id"])
        if data is None:
            raise HTTPException(404, f"the result of job {rec['id']} has expired")
        return result_response(rec, data)
    if rec["status"] in TERMINAL:
        raise job_failure(rec, state.settings)
    return status_response(rec)


# ---------------------------------------------------------------------------------------------------------------
# Models


TRAINING_SUMMARY = ("task", "iterations", "image_size", "batch_size", "style_image", "style_size", "loss",
                    "content_weight", "style_weight", "tv_weight", "final_losses", "wall_seconds", "hardware")


def serving_versions(queue: Any, settings: ServiceSettings) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    try:
        for w in queue.workers(settings.worker_stale_s):
            for name, version in (w.get("models") or {}).items():
                out.setdefault(name, set()).add(int(version))
    except Exception as e:  # noqa: BLE001 - model listings work without the queue
        log.warning("cannot read worker heartbeats: %s", e)
    return out


def model_info(name: str, serving: dict[str, set[int]] | None = None) -> ModelInfo:
    entry = store.get(name)
    m = entry.manifest
    has_thumbnail = m["kind"] == "style" and (entry.path / store.STYLE_FILE).is_file()
    training = m.get("training") or {}
    return ModelInfo(
        name=name, kind=m["kind"], factor=int(m["factor"]), version=entry.version, versions=store.versions(name),
        serving_versions=sorted((serving or {}).get(name, set())), created_at=m.get("created_at"),
        training={k: training[k] for k in TRAINING_SUMMARY if k in training},
        thumbnail_url=f"/styles/{name}/thumbnail" if has_thumbnail else None,
    )


def all_models(serving: dict[str, set[int]]) -> list[ModelInfo]:
    out = []
    for name in store.list_models():
        try:
            out.append(model_info(name, serving))
        except (store.ModelStoreError, OSError, ValueError, KeyError) as e:
            log.warning("skipping model %s: %s", name, e)
    return out


def style_names() -> list[str]:
    names = []
    for name in store.list_models():
        try:
            if store.get(name).manifest["kind"] == "style":
                names.append(name)
        except (store.ModelStoreError, OSError, ValueError, KeyError):
            continue
    return names


def check_style(name: str) -> None:
    try:
        kind = store.get(name).manifest["kind"]
    except store.ModelStoreError:
        kind = None
    if kind != "style":
        known = ", ".join(style_names()) or "none"
        raise HTTPException(404, f"unknown style {name!r}; known styles: {known}")


def sr_factors() -> list[int]:
    out = []
    for name in store.list_models():
        try:
            m = store.get(name).manifest
        except (store.ModelStoreError, OSError, ValueError, KeyError):
            continue
        if m["kind"] == "sr" and name == store.sr_model_name(int(m["factor"])):
            out.append(int(m["factor"]))
    return sorted(out)


def check_sr(factor: int) -> str:
    name = store.sr_model_name(factor)
    try:
        m = store.get(name).manifest
        if m["kind"] == "sr" and int(m["factor"]) == factor:
            return name
    except store.ModelStoreError:
        pass
    available = ", ".join(map(str, sr_factors())) or "none"
    raise HTTPException(404, f"no super-resolution model for factor {factor}; available factors: {available}")


def thumbnail(state: ServiceState, name: str, size: int) -> bytes:
    """A JPEG of the style image, longer side `size`, cached per (name, version, size)."""
    try:
        entry = store.get(name)
    except store.ModelStoreError:
        entry = None
    path = entry.path / store.STYLE_FILE if entry else None
    if entry is None or entry.manifest["kind"] != "style" or not path.is_file():
        raise HTTPException(404, f"no style image for {name!r}")
    key = (name, entry.version, size)
    with state.thumbnail_lock:
        if key in state.thumbnails:
            state.thumbnails.move_to_end(key)
            return state.thumbnails[key]
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85, optimize=True)
    data = buf.getvalue()
    with state.thumbnail_lock:
        state.thumbnails[key] = data
        while len(state.thumbnails) > 256:
            state.thumbnails.popitem(last=False)
    return data


def model_error(e: store.ModelStoreError) -> HTTPException:
    return HTTPException(404 if isinstance(e, store.ModelNotFound) else 400, str(e))


# ---------------------------------------------------------------------------------------------------------------
# Routers

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the processed image (X-Job-Id, X-Queue-Wait-Ms, X-Compute-Ms, X-Batch-Size headers)",
          "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
    202: {"model": JobStatus, "description": "not finished within `wait`, or async=true: poll the Location"},
    400: {"model": Error, "description": "empty, truncated or corrupt image; bad multipart body"},
    401: {"model": Error, "description": "missing or wrong API key (when PERCEPT_PUBLIC_API_KEY is set)"},
    404: {"model": Error, "description": "unknown style, or no super-resolution model for the factor"},
    410: {"model": Error, "description": "the job was cancelled by an administrator"},
    413: {"model": Error, "description": "upload too large (bytes or pixels), or the output would be"},
    415: {"model": Error, "description": "not an image type the service reads"},
    422: {"model": Error, "description": "invalid query parameters, or an input the worker could not process"},
    503: {"model": Error, "description": "queue full, queue unreachable, or inference failed: see Retry-After"},
}
UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "image/*": {"schema": {"type": "string", "format": "binary"}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
}}}

OutputFormat = Literal["png", "jpeg", "jpg", "webp"]
FORMAT_Q = Query(None, alias="format", description="output format (default: the input's when png/jpeg/webp, else png)")
QUALITY_Q = Query(None, ge=1, le=100, description="JPEG/WEBP quality (default 90)")
MAX_SIDE_Q = Query(None, ge=1, le=65_536, description="shrink the input so its longer side is at most this")
WAIT_Q = Query(None, ge=0, description="seconds to wait for the result (default 30, at most PERCEPT_MAX_WAIT_S) "
                                       "before answering 202")
ASYNC_Q = Query(False, alias="async", description="answer 202 with the job at once")

public = APIRouter(dependencies=[Depends(require_public)])
probes = APIRouter(tags=["probes"])
admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                  responses={401: {"model": Error}, 403: {"model": Error}})


@public.post("/stylize", tags=["inference"], responses=IMAGE_RESPONSES, openapi_extra=UPLOAD_BODY,
             response_class=Response)
async def stylize(
    request: Request,
    style: str = Query(..., description="a style model's name (GET /styles)"),
    fmt: OutputFormat | None = FORMAT_Q,
    quality: int | None = QUALITY_Q,
    max_side: int | None = MAX_SIDE_Q,
    strength: float = Query(1.0, ge=0.0, le=1.0, description="blend with the input: 1 full style, 0 the input"),
    preserve_color: bool = Query(False, description="keep the input's colours, take the style's luminance"),
    wait: float | None = WAIT_Q,
    run_async: bool = ASYNC_Q,
    state: ServiceState = Depends(get_state),
) -> Response:
    """Apply a style to an image (raw body with an image/* Content-Type, or multipart field `file`)."""
    check_style(style)
    params = {"format": fmt, "quality": quality, "max_side": max_side, "strength": strength,
              "preserve_color": preserve_color}
    return await run_job(request, state, style, 1, params, wait, run_async)


@public.post("/upscale", tags=["inference"], responses=IMAGE_RESPONSES, openapi_extra=UPLOAD_BODY,
             response_class=Response)
async def upscale(
    request: Request,
    factor: int = Query(4, ge=1, le=64, description="upscaling factor: one with an SR model (GET /models)"),
    fmt: OutputFormat | None = FORMAT_Q,
    quality: int | None = QUALITY_Q,
    max_side: int | None = MAX_SIDE_Q,
    histmatch: bool = Query(False, description="match the output's colour histogram to the input's"),
    wait: float | None = WAIT_Q,
    run_async: bool = ASYNC_Q,
    state: ServiceState = Depends(get_state),
) -> Response:
    """Super-resolve an image by `factor` (raw body with an image/* Content-Type, or multipart field `file`)."""
    model = check_sr(factor)
    params = {"format": fmt, "quality": quality, "max_side": max_side, "histmatch": histmatch}
    return await run_job(request, state, model, factor, params, wait, run_async)


def _job_or_404(queue: Any, job_id: str) -> dict[str, Any]:
    rec = queue.status(job_id) if job_id_ok(job_id) else None
    if rec is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, or expired after its time to live)")
    return rec


@public.get("/jobs/{job_id}", tags=["jobs"], response_model=JobStatus, responses={404: {"model": Error}})
def job_status(job_id: str, state: ServiceState = Depends(get_state)) -> JobStatus:
    """A job's state, its place in the queue and its timings."""
    rec = _job_or_404(state.queue, job_id)
    state.metrics.observe_job(rec)
    return JobStatus.from_record(rec)


@public.get("/jobs/{job_id}/result", tags=["jobs"], response_class=Response, responses={
    200: {"description": "the image", "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
    202: {"model": JobStatus, "description": "not finished yet: try again after Retry-After"},
    404: {"model": Error}, 410: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}})
async def job_result(job_id: str, state: ServiceState = Depends(get_state)) -> Response:
    """The job's image once done; 202 while it is queued or running; its error once failed."""
    rec = await anyio.to_thread.run_sync(_job_or_404, state.queue, job_id)
    return await finished_or_pending(state, rec)


@public.get("/styles", tags=["models"], response_model=list[ModelInfo])
def list_styles(state: ServiceState = Depends(get_state)) -> list[ModelInfo]:
    """The style models, each with a thumbnail of its style image."""
    return [m for m in all_models(serving_versions(state.queue, state.settings)) if m.kind == "style"]


@public.get("/styles/{name}/thumbnail", tags=["models"], response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": Error}})
def style_thumbnail(name: str, size: int = Query(THUMBNAIL_SIDE, ge=16, le=1024),
                    state: ServiceState = Depends(get_state)) -> Response:
    """The style image the model was trained with, as a small JPEG."""
    data = thumbnail(state, name, size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=300"})


@public.get("/models", tags=["models"], response_model=list[ModelInfo])
def list_models(state: ServiceState = Depends(get_state)) -> list[ModelInfo]:
    """Every model in the store: kind, factor, default and available versions, how it was trained."""
    return all_models(serving_versions(state.queue, state.settings))


@probes.get("/healthz", response_model=Health)
async def healthz(state: ServiceState = Depends(get_state)) -> Health:
    """Liveness: the process answers."""
    return Health(status="ok", mode="embedded" if state.settings.embedded else "redis")


@probes.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(state: ServiceState = Depends(get_state)) -> Any:
    """Readiness: the queue answers and a live worker has its models loaded."""
    mode = "embedded" if state.settings.embedded else "redis"
    try:
        up = state.queue.ping()
        workers = state.queue.workers(state.settings.worker_stale_s) if up else []
        depth = state.queue.depth() if up else None
    except Exception as e:  # noqa: BLE001
        up, workers, depth, error = False, [], None, str(e)
    else:
        error = None
    ready = [w for w in workers if w.get("ready") and w.get("models")]
    detail = None
    if not up:
        detail = "the job queue does not answer" + (f": {error}" if error else "")
    elif state.worker_error:
        detail = f"the embedded worker stopped: {state.worker_error}"
    elif not workers:
        detail = ("the embedded worker is still loading its models" if state.embedded_worker else
                  f"no live worker (none sent a heartbeat in the last {state.settings.worker_stale_s:g} s)")
    elif not ready:
        detail = f"{len(workers)} live worker(s), none ready yet (loading models)"
    body = Health(status="ready" if detail is None else "not ready", detail=detail, mode=mode, queue_depth=depth,
                  workers=len(ready))
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if detail is None else 503)


@probes.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus metrics."""
    data, content_type = state.metrics.render()
    return Response(data, media_type=content_type)


# ---------------------------------------------------------------------------------------------------------------
# Admin


@admin.post("/models/{name}/default", response_model=ModelInfo, responses={404: {"model": Error}})
def set_default(name: str, body: DefaultVersion, state: ServiceState = Depends(get_state)) -> ModelInfo:
    """Pin the version new jobs use (null: back to the highest). Workers switch within their reload interval."""
    try:
        store.set_default(name, body.version)
        return model_info(name, serving_versions(state.queue, state.settings))
    except store.ModelStoreError as e:
        raise model_error(e) from None


@admin.delete("/models/{name}/versions/{version}", response_model=ModelInfo,
              responses={404: {"model": Error}, 409: {"model": Error}})
def delete_version(name: str, version: int = Path(..., ge=1), state: ServiceState = Depends(get_state)) -> ModelInfo:
    """Remove one version (not the only one: a model with no version would vanish under running workers)."""
    try:
        available = store.versions(name)
        if version in available and len(available) == 1:
            raise HTTPException(409, f"version {version} is the only version of {name!r}; publish another first")
        store.delete_version(name, version)
        return model_info(name, serving_versions(state.queue, state.settings))
    except store.ModelStoreError as e:
        raise model_error(e) from None


@admin.post("/models/{name}/publish", response_model=Published, status_code=201,
            responses={400: {"model": Error}, 409: {"model": Error}, 413: {"model": Error}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"}}}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def publish(request: Request, name: str, half: bool = Query(True, description="store fp16 weights"),
                  state: ServiceState = Depends(get_state)) -> Any:
    """Publish a percept training checkpoint (.pt, multipart field `file`) as the next version of NAME."""
    try:
        store.validate_name(name)
    except store.ModelStoreError as e:
        raise HTTPException(400, str(e)) from None
    with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
        await receive_checkpoint(request, state.settings, tmp)
        version = await anyio.to_thread.run_sync(publish_file, tmp.name, name, half)
    info = await anyio.to_thread.run_sync(lambda: model_info(name, serving_versions(state.queue, state.settings)))
    body = Published(**info.model_dump(), published_version=version)
    return JSONResponse(body.model_dump(mode="json"), status_code=201, headers={"Location": "/models"})


async def receive_checkpoint(request: Request, settings: ServiceSettings, out: Any) -> None:
    """Stream the uploaded checkpoint into `out` (multipart field `file`, or a raw body), within the size limit."""
    limit, size = settings.max_checkpoint_bytes, 0
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MULTIPART_SLACK:
        raise HTTPException(413, f"upload is {int(length)} bytes; the limit is {limit} bytes")

    async def limited() -> AsyncGenerator[bytes, None]:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit + MULTIPART_SLACK:
                raise HTTPException(413, f"upload is over the limit of {limit} bytes")
            yield chunk

    try:
        if _media_type(request) == "multipart/form-data":
            try:
                form = await MultiPartParser(request.headers, limited(), max_files=1, max_fields=16).parse()
            except MultiPartException as e:
                raise HTTPException(400, f"malformed multipart body: {e.message}") from None
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "the multipart form has no file field named 'file'")
            while chunk := await upload.read(1 << 20):
                out.write(chunk)
            await upload.close()
        else:
            async for chunk in limited():
                out.write(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole body") from None
    out.flush()
    if out.tell() == 0:
        raise HTTPException(400, "empty upload: expected a training checkpoint (.pt)")
    if out.tell() > limit:
        raise HTTPException(413, f"upload is {out.tell()} bytes; the limit is {limit} bytes")


def publish_file(path: str, name: str, half: bool) -> int:
    from trainer.train import load_checkpoint, publish_checkpoint

    try:
        network = load_checkpoint(path)["network"]
        kind, factor = network["kind"], int(network.get("factor", 1))
    except Exception as e:  # noqa: BLE001 - anything torch.load(weights_only=True) or the JSON fields raise
        raise HTTPException(400, f"not a percept training checkpoint: {e}") from None
    try:
        existing = store.get(name).manifest
    except store.ModelNotFound:
        existing = None
    if existing and (existing["kind"], int(existing["factor"])) != (kind, factor):
        raise HTTPException(409, f"{name!r} is a {existing['kind']} model with factor {existing['factor']}; the "
                                 f"checkpoint is a {kind} model with factor {factor}")
    try:
        return int(publish_checkpoint(path, name, half=half)["version"])
    except store.ModelStoreError as e:
        raise HTTPException(400, str(e)) from None
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise HTTPException(400, f"not a percept training checkpoint: {e}") from None


@admin.get("/jobs", response_model=list[JobStatus])
def admin_jobs(limit: int = Query(100, ge=1, le=1000), state: ServiceState = Depends(get_state)) -> list[JobStatus]:
    """The most recent jobs, newest first."""
    return [JobStatus.from_record(r) for r in state.queue.list_jobs(limit)]


@admin.post("/jobs/{job_id}/cancel", response_model=JobStatus,
            responses={404: {"model": Error}, 409: {"model": Error}})
def cancel_job(job_id: str, state: ServiceState = Depends(get_state)) -> JobStatus:
    """Cancel a queued job (a running one finishes)."""
    _job_or_404(state.queue, job_id)
    if not state.queue.cancel(job_id):
        rec = _job_or_404(state.queue, job_id)
        raise HTTPException(409, f"job {job_id} is {rec['status']}: only queued jobs can be cancelled")
    return JobStatus.from_record(_job_or_404(state.queue, job_id))


@admin.get("/workers", response_model=list[WorkerInfo])
def admin_workers(state: ServiceState = Depends(get_state)) -> list[WorkerInfo]:
    """The live workers' last heartbeats: device, loaded model versions, counters."""
    return [WorkerInfo.model_validate(w) for w in state.queue.workers(state.settings.worker_stale_s)]
