"""The job queue between API processes and inference workers: Redis Streams, or an in-memory queue (embedded mode).

The contract is `JobQueue`, a Protocol both backends satisfy (tests/test_queue.py runs one set of tests on both),
so the API and the worker loop do not know which one they talk to. What goes through it is typed: `JobParams`
(what a request asks of the worker: the pipeline's `model_store.options.Options` and the input limit), `JobRecord`
(a job as `status`/`wait`/`list_jobs` return it), `Reserved` (a job handed to a worker) and `JobState` (the
states; `TERMINAL` the final ones). `worker.open_queue` builds either backend from the same `QueueSettings`,
so embedded mode honours PERCEPT_QUEUE_MAX, PERCEPT_JOB_TTL_S and PERCEPT_MAX_ATTEMPTS too.

Shared semantics:

* Order: first in, first out. A job that failed with ``retry=True`` goes to the back of the queue, in both backends:
  it is fair (a job that keeps failing, e.g. an out-of-memory input, cannot hold up the jobs behind it), and it is
  what a Redis stream does naturally (an entry cannot be put back at its head).
* Attempts: a job is delivered at most `max_attempts` times; a retry past that fails it with its last error.
* Time to live: a job's record, upload and result are dropped `ttl_s` seconds after its last change (submitted,
  taken by a worker, retried, finished); `status` then answers None.
* `complete`/`fail` of a job that already ended (a slower duplicate) change nothing.

The backends: `worker.memory_queue.MemoryQueue` (embedded mode) and `worker.redis_queue.RedisQueue`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from model_store.options import Options


class JobState(StrEnum):
    """A job's state. The values are the `status` strings of the HTTP API and of the Redis records."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobState] = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED})


class QueueFull(Exception):
    """The bounded queue has no room; the API answers 503 with Retry-After."""


class JobCancelled(Exception):
    """Raised from a worker's progress callback when its job was cancelled: the computation stops at that tile."""


class IdempotencyConflict(Exception):
    """An idempotency key already names a job with another model, parameters or upload; the API answers 409."""


@dataclass(frozen=True, kw_only=True)
class JobParams(Options):
    """What a job asks of the worker besides the model: the pipeline's `Options` (max_side, strength,
    preserve_color, histmatch, format, quality; the routes fill them in) and the API's input limit."""

    max_pixels: int | None = None  # the API's input pixel limit, checked again when the worker decodes

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> JobParams:
        return cls(**value)


@dataclass(frozen=True, kw_only=True)
class JobRecord:
    """A job as the queue knows it (immutable: the queues replace it). Times are Unix seconds."""

    id: str
    model: str
    params: JobParams
    created_at: float
    status: JobState = JobState.QUEUED
    started_at: float | None = None  # when a worker last took it
    finished_at: float | None = None
    attempts: int = 0  # deliveries to a worker so far
    error: str | None = None  # the last attempt's error (a queued job keeps it while it waits for its retry)
    error_status: int | None = None  # the HTTP status of a failure: 4xx the input's fault, 503 the service's
    worker: str | None = None  # the worker that last took it
    media_type: str | None = None  # of the result
    compute_ms: float | None = None  # the forward pass of the batch that held it
    batch_size: int | None = None  # jobs in that batch
    position: int | None = None  # jobs ahead of it while queued (0: next); None otherwise
    progress_done: int | None = None  # work units (tiles, layer steps; 0 or 1 for one pass) done of the total
    progress_total: int | None = None  # None until the worker reports; reset when a worker takes the job

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", JobState(self.status))  # "done" -> JobState.DONE: `is` comparisons hold

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_json(self) -> dict[str, Any]:
        """Field -> JSON-able value (`position` is computed on reading, never stored)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "position"}
        out["params"] = self.params.to_json()
        out["status"] = self.status.value
        return out

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> JobRecord:
        return cls(**{**value, "params": JobParams.from_json(value["params"])})


@dataclass
class Reserved:
    """A job handed to a worker."""

    id: str
    model: str
    params: JobParams
    data: bytes
    attempt: int  # 1 on the first delivery
    enqueued_at: float
    stream_id: str = ""  # Redis: the stream entry to acknowledge


@runtime_checkable
class JobQueue(Protocol):
    """What the API (submit .. ping) and the workers (reserve .. workers) use; `MemoryQueue` and `RedisQueue`."""

    max_depth: int
    ttl_s: float
    max_attempts: int

    # API side
    def submit(self, model: str, params: JobParams, data: bytes, idempotency_key: str | None = None) -> str:
        """Queue a job; raises QueueFull when `depth()` has reached `max_depth`.

        `idempotency_key`: a job submitted before with this key (within the job time to live, its result not
        dropped) is returned instead of a new one; IdempotencyConflict when that job was another request."""
        ...

    def status(self, job_id: str) -> JobRecord | None:
        """The job (with its position while queued), or None when unknown or expired."""
        ...

    def result(self, job_id: str) -> bytes | None:
        """A done job's image; None when unknown, not done, expired or (embedded) evicted from the result cache."""
        ...

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """The job once it has ended, or as it is after `timeout` seconds."""
        ...

    def cancel(self, job_id: str, reason: str = "cancelled by an administrator") -> bool:
        """Cancel a queued or running job (a running one stops at its worker's next `progress` call; a result
        it still delivers is dropped); False when it has ended or is unknown."""
        ...

    def list_jobs(self, limit: int = 100) -> list[JobRecord]:
        """The most recently submitted jobs that have not expired, newest first."""
        ...

    def depth(self) -> int:
        """Jobs queued or running."""
        ...

    def ping(self) -> bool: ...

    # Worker side
    def reserve(self, consumer: str, count: int, block_ms: int) -> list[Reserved]:
        """Up to `count` queued jobs, oldest first, now running; waits up to `block_ms` for the first."""
        ...

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 16) -> list[Reserved]:
        """Jobs a dead worker left running for longer than `min_idle_ms` (it stopped renewing their lease)."""
        ...

    def renew(self, consumer: str, stream_ids: list[str]) -> int:
        """Renew the lease of the jobs (by `Reserved.stream_id`) `consumer` is computing; a worker does it every
        visibility_timeout/3 while it holds them, so a slow job is never reclaimed from a live worker."""
        ...

    def has_group(self) -> bool:
        """Whether a job submitted now can reach a worker (Redis: the consumer group exists)."""
        ...

    def progress(self, job_id: str, done: int, total: int) -> bool:
        """Record a running job's progress; False when it is no longer running (cancelled, ended, expired): the
        worker then stops computing it."""
        ...

    def complete(self, job: Reserved, result: bytes, media_type: str, compute_ms: float, batch_size: int) -> None: ...

    def fail(self, job: Reserved, error: str, retry: bool, status: int = 503) -> None:
        """`retry`: queue it again (at the back) unless it has had `max_attempts` deliveries; else it fails."""
        ...

    def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None: ...

    def workers(self, max_age_s: float = 15.0) -> list[dict[str, Any]]:
        """The heartbeats (`info` plus `id` and `last_seen`) of workers seen in the last `max_age_s` seconds."""
        ...


def new_job_id() -> str:
    return uuid.uuid4().hex


def request_fingerprint(model: str, params: JobParams, data: bytes) -> str:
    """What an idempotency key is bound to: the model, the parameters and the upload."""
    h = hashlib.sha256()
    h.update(json.dumps([model, params.to_json()], sort_keys=True).encode())
    h.update(data)
    return h.hexdigest()


def replayable(rec: JobRecord, has_result: bool) -> bool:
    """Whether a retry with the job's idempotency key gets this job. Not when the job failed for the service's
    fault (5xx) or was cancelled, nor when its result is gone: then the retry computes it again."""
    if rec.status is JobState.CANCELLED or (rec.status is JobState.FAILED and (rec.error_status or 503) >= 500):
        return False
    return has_result or rec.status is not JobState.DONE


def conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"the Idempotency-Key {key!r} was used for a different request (another model, "
                               "parameters or image); use a new key for a new request")


def new_record(job_id: str, model: str, params: JobParams) -> JobRecord:
    if not isinstance(params, JobParams):
        raise TypeError(f"params must be JobParams, not {type(params).__name__}")
    return JobRecord(id=job_id, model=model, params=params, created_at=time.time())
