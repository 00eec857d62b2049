"""Response bodies of the HTTP API (they also make up the OpenAPI schema)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from model_store.store import SrLoss
from worker.queue import JobRecord, JobState


class Error(BaseModel):
    """Every error answer: one sentence for a person to read."""

    detail: str = Field(..., examples=["unknown style 'van_gogh'; known styles: candy, mosaic, muse"])


class JobProgress(BaseModel):
    """How far the worker is: tiles (or layer steps) done of the total; one-pass jobs go from 0 to 1 of 1."""

    done: int
    total: int
    fraction: float = Field(..., ge=0.0, le=1.0)


class JobStatus(BaseModel):
    """A job as the queue knows it. Times are Unix seconds; durations milliseconds."""

    id: str
    status: JobState
    model: str
    position: int | None = Field(None, description="jobs ahead of this one while it is queued (0: next)")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_ms: float | None = Field(None, description="from submission to a worker taking the job")
    compute_ms: float | None = Field(None, description="the forward pass of the batch that held this job")
    batch_size: int | None = Field(None, description="jobs that shared that forward pass")
    attempts: int = 0
    error: str | None = None
    result_url: str | None = Field(None, description="where the image is, once status is 'done'")
    worker: str | None = None
    progress: JobProgress | None = Field(None, description="while running: the worker's last report")
    eta_s: float | None = Field(None, description="while running: seconds left, from the time it has run so far "
                                                  "and the fraction done (null until some of it is done)")

    @classmethod
    def from_record(cls, rec: JobRecord, now: float | None = None) -> JobStatus:
        queued, started = rec.status is JobState.QUEUED, rec.started_at
        progress, eta = None, None
        if rec.status is JobState.RUNNING and rec.progress_total and rec.progress_done is not None:
            fraction = min(1.0, max(0.0, rec.progress_done / rec.progress_total))
            progress = JobProgress(done=rec.progress_done, total=rec.progress_total, fraction=round(fraction, 4))
            if fraction > 0 and started:
                elapsed = max(0.0, (time.time() if now is None else now) - started)
                eta = round(elapsed * (1 - fraction) / fraction, 1)
        return cls(
            id=rec.id, status=rec.status, model=rec.model, position=rec.position if queued else None,
            created_at=rec.created_at, started_at=started, finished_at=rec.finished_at,
            queue_wait_ms=round((started - rec.created_at) * 1000, 3) if started else None,
            compute_ms=rec.compute_ms, batch_size=rec.batch_size, attempts=rec.attempts,
            # A queued job's error is the previous attempt's; it is retried, so it is not reported yet.
            error=rec.error if rec.status in (JobState.FAILED, JobState.CANCELLED) else None,
            result_url=f"/jobs/{rec.id}/result" if rec.status is JobState.DONE else None,
            worker=rec.worker, progress=progress, eta_s=eta,
        )


class ModelInfo(BaseModel):
    """A model in the store, described by its default version's manifest."""

    name: str
    kind: Literal["style", "sr"]
    factor: int = Field(..., description="1 for styles, the upscaling factor for super-resolution")
    version: int = Field(..., description="the default version: the one new jobs run")
    versions: list[int]
    serving_versions: list[int] = Field(
        default_factory=list, description="versions the live workers have loaded (a new default shows up here "
                                          "within the workers' reload interval)")
    created_at: str | None = None
    training: dict[str, Any] = Field(default_factory=dict, description="a summary of how the version was trained")
    loss: SrLoss | None = Field(
        None, description="SR models: the `loss` of POST /upscale that selects this model (with its factor)")
    detail: bool = Field(False, description="SR feature-loss models: POST /upscale takes `detail` at this factor "
                                            "(this model was fine-tuned from the factor's pixel-loss model)")
    thumbnail_url: str | None = None
    card: dict[str, Any] | None = Field(
        None, description="GET /models/{name} only: the model card (description; style models: the style image's "
                          "title, artist and licence; evaluation numbers; sample: GET /models/{name}/sample)")


class Published(ModelInfo):
    """The model after a publish; `published_version` is the new version (the default unless one is pinned)."""

    published_version: int


class Health(BaseModel):
    """Liveness and readiness."""

    status: Literal["ok", "ready", "not ready"]
    detail: str | None = Field(None, description="why the service is not ready")
    mode: Literal["embedded", "redis"]
    queue_depth: int | None = None
    workers: int | None = Field(None, description="live workers (heartbeat within worker_stale_s) that are ready")
    backends: dict[str, int] | None = Field(None, description="inference backend/precision of the ready workers "
                                                              "(e.g. openvino/bf16) and how many run each")


def _json_int(value: Any) -> Any:
    """An integer as JSON Schema has it: 2 or 2.0, never true/false or "2" (pydantic's lax mode takes both)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be an integer")
        return int(value)
    return value


VersionNumber = Annotated[int, BeforeValidator(_json_int), Field(ge=1),
                         WithJsonSchema({"type": "integer", "minimum": 1})]


class DefaultVersion(BaseModel):
    """Body of POST /admin/models/{name}/default: a version to pin, or null for the highest."""

    version: VersionNumber | None = Field(None, description="a published version (a JSON integer: not \"2\", not "
                                                             "true), or null for the highest")


class WorkerInfo(BaseModel):
    """A live worker's last heartbeat."""

    id: str
    ready: bool = False
    device: str | None = None
    models: dict[str, int] = Field(default_factory=dict)
    last_seen: float
    forward_passes: int = 0
    batched_jobs: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    compute_ms: float = 0.0
