"""The HTTP endpoints, thin: uploads, jobs, the catalog and auth live in their own modules, injected via `Depends`.

Public (``public_api_key`` when set)::

    POST /stylize?style=NAME       POST /upscale?factor=4|8[&loss=pixel]   image in, image out (or 202 + job)
    GET  /jobs/{id}                GET  /jobs/{id}/result         DELETE /jobs/{id} (cancel)
    GET  /styles                   GET  /styles/{name}/thumbnail   GET /models

Probes: ``GET /healthz``, ``GET /readyz``, ``GET /metrics``. Admin (``Authorization: Bearer <api_key>``):
``/admin/models/...`` (default version, delete a version, publish a checkpoint), ``/admin/jobs``,
``/admin/workers``. Every error answer is JSON ``{"detail": "..."}``.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections import Counter
from collections.abc import AsyncGenerator
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from imaging.codec import ImageError, check_upload
from model_store import store
from service.catalog import (
    all_models,
    check_sr,
    check_style,
    model_error,
    model_info,
    sample_path,
    serving_versions,
    thumbnail,
)
from service.deps import MULTIPART_SLACK, THUMBNAIL_SIDE, ServiceState, get_state, require_admin, require_public
from service.jobs import finished_or_pending, job_id_ok, run_job
from service.schemas import DefaultVersion, Error, Health, JobStatus, ModelInfo, Published, WorkerInfo
from service.settings import ServiceSettings
from service.uploads import media_type
from worker.queue import JobParams, JobQueue, JobRecord

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------------
# Routers

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the processed image (X-Job-Id, X-Queue-Wait-Ms, X-Compute-Ms, X-Batch-Size headers)",
          "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
    202: {"model": JobStatus, "description": "not finished within `wait`, or async=true: poll the Location"},
    400: {"model": Error, "description": "empty, truncated or corrupt image; bad multipart body"},
    401: {"model": Error, "description": "missing or wrong API key (when PERCEPT_PUBLIC_API_KEY is set)"},
    404: {"model": Error, "description": "unknown style, or no super-resolution model for the factor"},
    409: {"model": Error, "description": "the Idempotency-Key was used for a different request"},
    410: {"model": Error, "description": "the job was cancelled (DELETE /jobs/{id}, an administrator), or its "
                                         "result was dropped"},
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
# A model name in an admin path, as the store accepts it (store.NAME_RE): others get 422, the schema says so.
NAME_P = Path(..., pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
              description="1-64 lowercase letters, digits, '_' or '-', starting with a letter or digit")
IDEMPOTENCY_KEY_MAX = 200
IDEMPOTENCY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"  # printable ASCII, not blank at either end
IDEMPOTENCY_H = Header(
    None, alias="Idempotency-Key", min_length=1, max_length=IDEMPOTENCY_KEY_MAX, pattern=IDEMPOTENCY_PATTERN,
    description="a client-chosen key (printable ASCII, at most 200 characters): a retry with the same key and the "
                "same request gets the same job (and its stored result) instead of a new computation, within "
                "PERCEPT_JOB_TTL_S; the same key with another request gets 409")

public = APIRouter(dependencies=[Depends(require_public)])
probes = APIRouter(tags=["probes"])
admin = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                  responses={400: {"model": Error, "description": "an invalid model name or request"},
                             401: {"model": Error}, 403: {"model": Error}})


def document(app: Any, settings: ServiceSettings) -> None:
    """Make the app's OpenAPI schema say what this configuration enforces: `wait`'s maximum is
    PERCEPT_MAX_WAIT_S; the public endpoints require a bearer key only when PERCEPT_PUBLIC_API_KEY is set."""
    from fastapi.openapi.utils import get_openapi

    from service.deps import PUBLIC_SCHEME

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            public_paths = {r.path for r in public.routes}
            for path, ops in schema.get("paths", {}).items():
                for op in ops.values():
                    for param in op.get("parameters", []):
                        if param.get("name") == "wait" and param.get("in") == "query":
                            for s in param["schema"].get("anyOf", [param["schema"]]):
                                if s.get("type") == "number":
                                    s["maximum"] = settings.max_wait_s
                    if path in public_paths and settings.public_api_key is not None:
                        op["security"] = [{"PublicKey": []}]
            if settings.public_api_key is not None:
                schema.setdefault("components", {}).setdefault("securitySchemes", {})["PublicKey"] = PUBLIC_SCHEME
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi



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
    stroke: float = Query(1.0, ge=0.5, le=4.0, description="brush strokes this many times larger: stylized at "
                          "1/stroke of the size, then brought back to the input's size (above 1 by the pixel-loss "
                          "SR network; below 1 by downsampling, at 1/stroke² the compute). 1 = off"),
    wait: float | None = WAIT_Q,
    run_async: bool = ASYNC_Q,
    idempotency_key: str | None = IDEMPOTENCY_H,
    state: ServiceState = Depends(get_state),
) -> Response:
    """Apply a style to an image (raw body with an image/* Content-Type, or multipart field `file`)."""
    check_style(style)
    if stroke > 1.0 and store.sr_model_name(4, "pixel") not in store.list_models():
        raise HTTPException(422, "stroke needs the x4 pixel-loss SR model (sr_x4_pixel), which is not installed")
    params = JobParams(format=fmt, quality=quality, max_side=max_side, strength=strength,
                       preserve_color=preserve_color, stroke=stroke)
    return await run_job(request, state, style, 1, params, wait, run_async, idempotency_key)


@public.post("/upscale", tags=["inference"], responses=IMAGE_RESPONSES, openapi_extra=UPLOAD_BODY,
             response_class=Response)
async def upscale(
    request: Request,
    factor: int = Query(4, ge=1, le=64, description="upscaling factor: one with an SR model (GET /models)"),
    fmt: OutputFormat | None = FORMAT_Q,
    quality: int | None = QUALITY_Q,
    max_side: int | None = MAX_SIDE_Q,
    loss: store.SrLoss = Query(
        "feat", description="feat: the feature-loss network (sharper detail, as in the paper's figures); pixel: the "
                            "pixel-loss baseline (higher PSNR, smoother)"),
    histmatch: bool = Query(False, description="match the output's colour histogram to the input's"),
    detail: float | None = Query(None, ge=0.0, le=1.0, description="0 faithful (the pixel-loss network) .. 1 "
                                 "sharp (the feature-loss network fine-tuned from it), their weights interpolated "
                                 "in between; overrides loss (feat = 1, pixel = 0)"),
    wait: float | None = WAIT_Q,
    run_async: bool = ASYNC_Q,
    idempotency_key: str | None = IDEMPOTENCY_H,
    state: ServiceState = Depends(get_state),
) -> Response:
    """Super-resolve an image by `factor` (raw body with an image/* Content-Type, or multipart field `file`)."""
    if detail is not None:
        try:
            model = store.sr_detail_pair(factor)[1]
        except store.ModelStoreError as e:
            raise HTTPException(422, str(e)) from None
    else:
        model = check_sr(factor, loss)
    params = JobParams(format=fmt, quality=quality, max_side=max_side, histmatch=histmatch, detail=detail)
    return await run_job(request, state, model, factor, params, wait, run_async, idempotency_key)


def _job_or_404(queue: JobQueue, job_id: str) -> JobRecord:
    rec = queue.status(job_id) if job_id_ok(job_id) else None
    if rec is None:
        raise HTTPException(404, f"no job {job_id!r} (unknown, expired after its time to live, or lost with the "
                                 "queue's data, e.g. a Redis restart without persistence: submit it again)")
    return rec


@public.get("/jobs/{job_id}", tags=["jobs"], response_model=JobStatus, responses={404: {"model": Error}})
def job_status(job_id: str, state: ServiceState = Depends(get_state)) -> JobStatus:
    """A job's state, its place in the queue, its timings and, while it runs, its progress and ETA."""
    rec = _job_or_404(state.queue, job_id)
    state.metrics.observe_job(rec)
    return JobStatus.from_record(rec)


@public.delete("/jobs/{job_id}", tags=["jobs"], response_model=JobStatus,
               responses={404: {"model": Error}, 409: {"model": Error}})
def delete_job(job_id: str, state: ServiceState = Depends(get_state)) -> JobStatus:
    """Cancel a queued or running job (a running one stops at its next tile). The job id is the capability:
    whoever submitted the job (and so knows its id) can cancel it; /admin/jobs lists every job's id."""
    return _cancel(state.queue, job_id, "cancelled by its submitter")


def _cancel(queue: JobQueue, job_id: str, reason: str) -> JobStatus:
    _job_or_404(queue, job_id)
    if not queue.cancel(job_id, reason):
        rec = _job_or_404(queue, job_id)
        raise HTTPException(409, f"job {job_id} has already ended ({rec.status}): nothing to cancel")
    return JobStatus.from_record(_job_or_404(queue, job_id))


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


@public.get("/models/{name}", tags=["models"], response_model=ModelInfo, responses={404: {"model": Error}})
def get_model(name: str = NAME_P, state: ServiceState = Depends(get_state)) -> ModelInfo:
    """One model with its card: description, the style image's title, artist and licence, evaluation numbers."""
    try:
        return model_info(name, serving_versions(state.queue, state.settings), card=True)
    except store.ModelStoreError as e:
        raise model_error(e) from None


@public.get("/models/{name}/sample", tags=["models"], response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": Error}})
def model_sample(name: str = NAME_P) -> Response:
    """The model card's sample output, a small JPEG."""
    return Response(sample_path(name).read_bytes(), media_type="image/jpeg",
                    headers={"Cache-Control": "public, max-age=300"})


@probes.get("/healthz", response_model=Health)
async def healthz(state: ServiceState = Depends(get_state)) -> Health:
    """Liveness: the process answers."""
    return Health(status="ok", mode="embedded" if state.settings.embedded else "redis")


@probes.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(state: ServiceState = Depends(get_state)) -> Any:
    """Readiness: a job can flow: the queue answers (within half a second), its consumer group exists and a live
    worker has its models loaded (a worker busy with a long job is live: it heartbeats from a thread of its own)."""
    mode = "embedded" if state.settings.embedded else "redis"
    try:
        up = state.queue.ping()
        has_group = getattr(state.queue, "has_group", None)
        group = has_group() if up and has_group is not None else True
        workers = state.queue.workers(state.settings.worker_stale_s) if up else []
        depth = state.queue.depth() if up else None
    except Exception as e:  # noqa: BLE001
        up, group, workers, depth, error = False, False, [], None, str(e)
    else:
        error = None
    ready = [w for w in workers if w.get("ready") and w.get("models")]
    detail = None
    if not up:
        detail = "the job queue does not answer" + (f": {error}" if error else "")
    elif not group:
        detail = "the job queue has no consumer group (Redis lost its data?): the workers recreate it"
    elif state.worker_error:
        detail = f"the embedded worker stopped: {state.worker_error}"
    elif not workers:
        detail = ("the embedded worker is still loading its models" if state.embedded_worker else
                  f"no live worker (none sent a heartbeat in the last {state.settings.worker_stale_s:g} s)")
    elif not ready:
        detail = f"{len(workers)} live worker(s), none ready yet (loading models)"
    body = Health(status="ready" if detail is None else "not ready", detail=detail, mode=mode, queue_depth=depth,
                  workers=len(ready), backends=dict(Counter(str(w.get("backend") or "unknown") for w in ready)))
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if detail is None else 503)


@probes.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(state: ServiceState = Depends(get_state)) -> Response:
    """Prometheus metrics."""
    data, content_type = state.metrics.render()
    return Response(data, media_type=content_type)


# ---------------------------------------------------------------------------------------------------------------
# Admin


@admin.post("/models/{name}/default", response_model=ModelInfo, responses={404: {"model": Error}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": DefaultVersion.model_json_schema()}}}})
async def set_default(request: Request, name: str = NAME_P, state: ServiceState = Depends(get_state)) -> ModelInfo:
    """Pin the version new jobs use (null: back to the highest). Workers switch within their reload interval.

    The body (`DefaultVersion`) is read here, after the admin key was checked: an unauthenticated request gets
    401/403 whatever it sends."""
    body = await json_body(request, DefaultVersion)

    def pin() -> ModelInfo:
        try:
            store.set_default(name, body.version)
            return model_info(name, serving_versions(state.queue, state.settings))
        except store.ModelStoreError as e:
            raise model_error(e) from None

    return await anyio.to_thread.run_sync(pin)


async def json_body(request: Request, model: Any) -> Any:
    """The request's JSON body as `model`, or 422 with the reasons in one line."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        reasons = "; ".join(
            ("body" + "".join(f".{p}" for p in err["loc"]) + ": " if err["loc"] else "body: ") + err["msg"]
            for err in e.errors())
        raise HTTPException(422, f"invalid request: {reasons}") from None


@admin.delete("/models/{name}/versions/{version}", response_model=ModelInfo,
              responses={404: {"model": Error}, 409: {"model": Error}})
def delete_version(name: str = NAME_P, version: int = Path(..., ge=1),
                   state: ServiceState = Depends(get_state)) -> ModelInfo:
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
            responses={400: {"model": Error}, 409: {"model": Error}, 413: {"model": Error},
                       415: {"model": Error}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "string", "format": "binary"},
                    "style": {"type": "string", "format": "binary",
                              "description": "style models: the style image, stored with the version (its "
                                             "thumbnail); a checkpoint's own style_image path is never read"}}}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def publish(request: Request, name: str = NAME_P, half: bool = Query(True, description="store fp16 weights"),
                  state: ServiceState = Depends(get_state)) -> Any:
    """Publish a percept training checkpoint (.pt, multipart field `file`, or a raw body) as the next version of
    NAME; a style model's style image comes only in the upload (optional multipart field `style`)."""
    try:
        store.validate_name(name)
    except store.ModelStoreError as e:
        raise HTTPException(400, str(e)) from None
    with tempfile.NamedTemporaryFile(suffix=".pt") as tmp:
        style = await receive_checkpoint(request, state.settings, tmp)
        version = await anyio.to_thread.run_sync(publish_file, tmp.name, name, half, style, state.settings)
    info = await anyio.to_thread.run_sync(lambda: model_info(name, serving_versions(state.queue, state.settings)))
    body = Published(**info.model_dump(), published_version=version)
    return JSONResponse(body.model_dump(mode="json"), status_code=201, headers={"Location": "/models"})


async def receive_checkpoint(request: Request, settings: ServiceSettings, out: Any) -> bytes | None:
    """Stream the uploaded checkpoint into `out` (multipart field `file`, or a raw body), within the size limit;
    the multipart field `style` (a style image) if there is one."""
    limit, size = settings.max_checkpoint_bytes + settings.max_upload_bytes, 0
    style: bytes | None = None
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
        if media_type(request) == "multipart/form-data":
            try:
                form = await MultiPartParser(request.headers, limited(), max_files=2, max_fields=16).parse()
            except MultiPartException as e:
                raise HTTPException(400, f"malformed multipart body: {e.message}") from None
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "the multipart form has no file field named 'file'")
            while chunk := await upload.read(1 << 20):
                out.write(chunk)
            await upload.close()
            style_upload = form.get("style")
            if isinstance(style_upload, UploadFile):
                style = await style_upload.read(settings.max_upload_bytes + 1)
                await style_upload.close()
            elif style_upload is not None:
                raise HTTPException(400, "the multipart field 'style' must be a file (an image)")
        else:
            async for chunk in limited():
                out.write(chunk)
    except ClientDisconnect:
        raise HTTPException(400, "the client disconnected before sending the whole body") from None
    out.flush()
    if out.tell() == 0:
        raise HTTPException(400, "empty upload: expected a training checkpoint (.pt)")
    if out.tell() > settings.max_checkpoint_bytes:
        raise HTTPException(413, f"upload is {out.tell()} bytes; the limit is {settings.max_checkpoint_bytes} bytes")
    return style


# Training facts a manifest records, copied from the checkpoint's config as they are (resolving an old run's
# recipe is the trainer CLI's business): the API reads checkpoints without the trainer's code.
_FACT_KEYS = ("task", "batch_size", "image_size", "tv_weight", "lr", "grad_clip", "seed", "amp")
_STYLE_FACT_KEYS = ("style_size", "recipe", "content_weight", "style_weight", "content_layer", "layer_weights",
                    "normalization", "init_from")
_SR_FACT_KEYS = ("loss", "factor")


def checkpoint_facts(ckpt: dict[str, Any], kind: str) -> dict[str, Any]:
    """What the manifest records about how the checkpoint was trained. Paths are names only, never opened."""
    cfg, extra = ckpt.get("config") or {}, ckpt.get("extra") or {}
    if not isinstance(cfg, dict) or not isinstance(extra, dict):
        raise TypeError("its config and extra fields are not JSON objects")
    keys = _FACT_KEYS + (_STYLE_FACT_KEYS if kind == "style" else _SR_FACT_KEYS)
    facts = {k: cfg[k] for k in keys if k in cfg}
    facts.setdefault("task", kind)
    facts["iterations"] = ckpt.get("iteration")
    if extra.get("best"):
        facts["best_validation"] = extra["best"]
    if kind == "style" and isinstance(cfg.get("style_image"), str):
        facts["style_image"] = cfg["style_image"].replace("\\", "/").rsplit("/", 1)[-1]
    if isinstance(cfg.get("data"), str):
        facts["data"] = cfg["data"]
    facts["final_losses"] = extra.get("losses", {})
    facts["wall_seconds"] = extra.get("wall_seconds")
    facts["hardware"] = extra.get("hardware")
    return facts


def style_png(data: bytes, settings: ServiceSettings) -> bytes:
    """The uploaded style image, validated like any upload (every decode error a 4xx), as the stored PNG."""
    try:
        checked = check_upload(data, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_pixels)
        buf = io.BytesIO()
        checked.image.convert("RGB").save(buf, "PNG")
    except ImageError as e:
        raise HTTPException(e.status, f"style image: {e}") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many kinds on a corrupt file
        raise HTTPException(400, f"style image: cannot decode it ({e})") from None
    return buf.getvalue()


def publish_file(path: str, name: str, half: bool, style: bytes | None, settings: ServiceSettings) -> int:
    """Publish the checkpoint at `path` (read with weights_only; no path it names is opened on the server)."""
    from model_store import checkpoints

    try:
        net, ckpt = checkpoints.network(path)
        kind, factor = ckpt["network"]["kind"], int(ckpt["network"].get("factor", 1))
        facts = checkpoint_facts(ckpt, kind)
    except Exception as e:  # noqa: BLE001 - anything torch.load(weights_only=True) or the JSON fields raise
        raise HTTPException(400, f"not a percept training checkpoint: {e}") from None
    extra: dict[str, bytes] = {}
    if style is not None:
        if kind != "style":
            raise HTTPException(400, f"a style image goes with a style model; the checkpoint is a {kind} model")
        extra[store.STYLE_FILE] = style_png(style, settings)
    try:
        existing = store.get(name).manifest
    except store.ModelNotFound:
        existing = None
    if existing and (existing["kind"], int(existing["factor"])) != (kind, factor):
        raise HTTPException(409, f"{name!r} is a {existing['kind']} model with factor {existing['factor']}; the "
                                 f"checkpoint is a {kind} model with factor {factor}")
    try:
        return int(store.publish(name, net, facts, half=half, extra_files=extra).version)
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
    """Cancel any queued or running job (a running one stops at its next tile)."""
    return _cancel(state.queue, job_id, "cancelled by an administrator")


@admin.get("/workers", response_model=list[WorkerInfo])
def admin_workers(state: ServiceState = Depends(get_state)) -> list[WorkerInfo]:
    """The live workers' last heartbeats: device, loaded model versions, counters."""
    return [WorkerInfo.model_validate(w) for w in state.queue.workers(state.settings.worker_stale_s)]
