"""The job queue between API processes and inference workers: Redis Streams, or an in-memory queue (embedded mode).

The contract is `JobQueue`, a Protocol both backends satisfy (tests/test_queue.py runs one set of tests on both),
so the API and the worker loop do not know which one they talk to. What goes through it is typed: `JobParams`
(what a request asks of the worker: the pipeline's `model_store.options.Options` and the input limit), `JobRecord`
(a job as `status`/`wait`/`list_jobs` return it), `Reserved` (a job handed to a worker) and `JobState` (the
states; `TERMINAL` the final ones). `open_queue` builds either backend from the same `QueueSettings`, so embedded
mode honours PERCEPT_QUEUE_MAX, PERCEPT_JOB_TTL_S and PERCEPT_MAX_ATTEMPTS too.

Shared semantics:

* Order: first in, first out. A job that failed with ``retry=True`` goes to the back of the queue, in both backends:
  it is fair (a job that keeps failing, e.g. an out-of-memory input, cannot hold up the jobs behind it), and it is
  what a Redis stream does naturally (an entry cannot be put back at its head).
* Attempts: a job is delivered at most `max_attempts` times; a retry past that fails it with its last error.
* Time to live: a job's record, upload and result are dropped `ttl_s` seconds after its last change (submitted,
  taken by a worker, retried, finished); `status` then answers None.
* `complete`/`fail` of a job that already ended (a slower duplicate) change nothing.

Redis layout (prefix ``percept:``)::

    jobs                     stream of job ids, consumer group ``workers`` (XREADGROUP / XACK / XAUTOCLAIM)
    job:<id>                 hash of the JobRecord's fields (each JSON) and the stream_id of its current entry
    job:<id>:input           the uploaded bytes
    job:<id>:result          the encoded output image
    job:<id>:done            list pushed once when the job ends; an API process waiting on it uses BLPOP
    recent                   sorted set of job ids by submission time (list_jobs; the newest RECENT_MAX kept)
    workers                  hash worker id -> JSON heartbeat (models loaded, counters, last seen)

Delivery is at least once: a job stays pending in the consumer group until a worker acknowledges it; a worker
that dies leaves its jobs pending, and another worker claims them (XAUTOCLAIM) once they have been idle for the
visibility timeout (`reclaim`; the in-memory queue has nothing to reclaim: its worker thread dies with it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from model_store.options import Options

if TYPE_CHECKING:
    from worker.settings import QueueSettings


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


def _replayable(rec: JobRecord, has_result: bool) -> bool:
    """Whether a retry with the job's idempotency key gets this job. Not when the job failed for the service's
    fault (5xx) or was cancelled, nor when its result is gone: then the retry computes it again."""
    if rec.status is JobState.CANCELLED or (rec.status is JobState.FAILED and (rec.error_status or 503) >= 500):
        return False
    return has_result or rec.status is not JobState.DONE


def _conflict(key: str) -> IdempotencyConflict:
    return IdempotencyConflict(f"the Idempotency-Key {key!r} was used for a different request (another model, "
                               "parameters or image); use a new key for a new request")


def _new_record(job_id: str, model: str, params: JobParams) -> JobRecord:
    if not isinstance(params, JobParams):
        raise TypeError(f"params must be JobParams, not {type(params).__name__}")
    return JobRecord(id=job_id, model=model, params=params, created_at=time.time())


# ---------------------------------------------------------------------------------------------------------------
# In memory


@dataclass
class _MemJob:
    record: JobRecord
    data: bytes
    expires_at: float
    result: bytes | None = None
    done: threading.Event = field(default_factory=threading.Event)
    idempotency: tuple[str, str] | None = None  # (key, request fingerprint)
    evicted: bool = False  # its result was dropped to keep the results under max_result_bytes


class MemoryQueue:
    """In-process queue for embedded mode (one process: the API and its worker thread)."""

    def __init__(self, max_depth: int = 256, ttl_s: float = 3600.0, max_attempts: int = 3,
                 max_result_bytes: int | None = None):
        self.max_depth, self.ttl_s, self.max_attempts = max_depth, ttl_s, max_attempts
        # Results kept in memory at most (bytes, None: no cap); past it the oldest finished results are dropped.
        self.max_result_bytes = max_result_bytes
        self._result_bytes = 0
        self._results: OrderedDict[str, int] = OrderedDict()  # job id -> result size, oldest finished first
        self._keys: dict[str, str] = {}  # idempotency key -> job id
        self._jobs: OrderedDict[str, _MemJob] = OrderedDict()  # by submission time
        self._queue: deque[str] = deque()
        self._running: set[str] = set()
        self._expiry: deque[tuple[float, str]] = deque()  # (expires_at, id) in time order; stale entries skipped
        self._cond = threading.Condition()  # reentrant
        self._workers: dict[str, dict[str, Any]] = {}

    # API side -------------------------------------------------------------------------------------------
    def submit(self, model: str, params: JobParams, data: bytes, idempotency_key: str | None = None) -> str:
        with self._cond:
            self._expire()
            idem = None
            if idempotency_key is not None:
                idem = (idempotency_key, request_fingerprint(model, params, data))
                old = self._jobs.get(self._keys.get(idempotency_key, ""))
                if old is not None and old.idempotency is not None:
                    if old.idempotency[1] != idem[1]:
                        raise _conflict(idempotency_key)
                    if _replayable(old.record, old.result is not None):
                        return old.record.id
            if self.depth() >= self.max_depth:
                raise QueueFull(f"the queue holds {self.max_depth} jobs")
            job_id = new_job_id()
            self._jobs[job_id] = _MemJob(_new_record(job_id, model, params), data, 0.0, idempotency=idem)
            if idem is not None:
                self._keys[idem[0]] = job_id
            self._touch(job_id)
            self._queue.append(job_id)
            self._cond.notify_all()
            return job_id

    def status(self, job_id: str) -> JobRecord | None:
        with self._cond:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None:
                return None
            if job.record.status is JobState.QUEUED:
                return dataclasses.replace(job.record, position=self._queue.index(job_id))
            return job.record

    def result(self, job_id: str) -> bytes | None:
        with self._cond:
            self._expire()
            job = self._jobs.get(job_id)
            return job.result if job else None

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        with self._cond:
            job = self._jobs.get(job_id)
        if job is not None:
            job.done.wait(max(0.0, timeout))
        return self.status(job_id)

    def cancel(self, job_id: str, reason: str = "cancelled by an administrator") -> bool:
        with self._cond:
            self._expire()
            job = self._jobs.get(job_id)
            if job is None or job.record.terminal:
                return False
            if job.record.status is JobState.QUEUED:
                self._queue.remove(job_id)
            self._finish(job_id, JobState.CANCELLED, error=reason)  # a running one: its worker stops at `progress`
            return True

    def list_jobs(self, limit: int = 100) -> list[JobRecord]:
        with self._cond:
            self._expire()
            ids = list(self._jobs)[-limit:] if limit > 0 else []
            return [s for s in (self.status(i) for i in reversed(ids)) if s]

    def depth(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._running)

    def ping(self) -> bool:
        return True

    # Worker side ----------------------------------------------------------------------------------------
    def reserve(self, consumer: str, count: int, block_ms: int) -> list[Reserved]:
        deadline = time.monotonic() + block_ms / 1000
        with self._cond:
            while True:
                self._expire()
                if self._queue:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(remaining)
            out = []
            while self._queue and len(out) < count:
                job_id = self._queue.popleft()
                job = self._jobs[job_id]
                rec = dataclasses.replace(job.record, status=JobState.RUNNING, started_at=time.time(),
                                          worker=consumer, attempts=job.record.attempts + 1,
                                          progress_done=None, progress_total=None)
                job.record = rec
                self._running.add(job_id)
                self._touch(job_id)
                out.append(Reserved(job_id, rec.model, rec.params, job.data, rec.attempts, rec.created_at))
            return out

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 16) -> list[Reserved]:
        return []  # one process: a worker thread that dies takes the queue with it

    def renew(self, consumer: str, stream_ids: list[str]) -> int:
        return 0  # nothing is ever reclaimed: no lease to renew

    def has_group(self) -> bool:
        return True

    def progress(self, job_id: str, done: int, total: int) -> bool:
        with self._cond:
            if not self._is_running(job_id):
                return False
            job = self._jobs[job_id]
            job.record = dataclasses.replace(job.record, progress_done=done, progress_total=total)
            return True

    def complete(self, job: Reserved, result: bytes, media_type: str, compute_ms: float, batch_size: int) -> None:
        with self._cond:
            if self._is_running(job.id):
                self._jobs[job.id].result = result
                self._results[job.id] = len(result)
                self._result_bytes += len(result)
                self._finish(job.id, JobState.DONE, media_type=media_type, compute_ms=compute_ms,
                             batch_size=batch_size)
                self._evict_results()

    def fail(self, job: Reserved, error: str, retry: bool, status: int = 503) -> None:
        with self._cond:
            if not self._is_running(job.id):
                return
            if retry and job.attempt < self.max_attempts:
                mem = self._jobs[job.id]
                mem.record = dataclasses.replace(mem.record, status=JobState.QUEUED, error=error)
                self._running.discard(job.id)
                self._queue.append(job.id)  # at the back, as in Redis
                self._touch(job.id)
                self._cond.notify_all()
            else:
                self._finish(job.id, JobState.FAILED, error=error, error_status=status)

    def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        with self._cond:
            self._workers[worker_id] = {**info, "last_seen": time.time()}

    def workers(self, max_age_s: float = 15.0) -> list[dict[str, Any]]:
        now = time.time()
        with self._cond:
            return [dict(v, id=k) for k, v in self._workers.items() if now - v["last_seen"] <= max_age_s]

    # Internals (call with the lock held) ----------------------------------------------------------------
    def _is_running(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        return job is not None and job.record.status is JobState.RUNNING

    def _touch(self, job_id: str) -> None:
        expires_at = time.time() + self.ttl_s
        self._jobs[job_id].expires_at = expires_at
        self._expiry.append((expires_at, job_id))

    def _finish(self, job_id: str, status: JobState, **fields: Any) -> None:
        job = self._jobs[job_id]
        job.record = dataclasses.replace(job.record, status=status, finished_at=time.time(), **fields)
        job.data = b""
        self._running.discard(job_id)
        self._touch(job_id)
        job.done.set()

    def _evict_results(self) -> None:
        """Drop the oldest finished results until the rest fit in max_result_bytes (the newest is always kept)."""
        if self.max_result_bytes is None:
            return
        while self._result_bytes > self.max_result_bytes and len(self._results) > 1:
            job_id, size = self._results.popitem(last=False)
            self._result_bytes -= size
            job = self._jobs.get(job_id)
            if job is not None:
                job.result, job.evicted = None, True

    def evicted(self, job_id: str) -> bool:
        """Whether the job's result was dropped from the result cache (GET .../result answers 410)."""
        with self._cond:
            job = self._jobs.get(job_id)
            return job is not None and job.evicted

    def _expire(self) -> None:
        now = time.time()
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = self._expiry.popleft()
            job = self._jobs.get(job_id)
            if job is None or job.expires_at > now:  # gone already, or changed since (a later entry exists)
                continue
            del self._jobs[job_id]
            if job_id in self._results:
                self._result_bytes -= self._results.pop(job_id)
            if job.idempotency is not None and self._keys.get(job.idempotency[0]) == job_id:
                del self._keys[job.idempotency[0]]
            if job.record.status is JobState.QUEUED:
                self._queue.remove(job_id)
            self._running.discard(job_id)
            job.done.set()  # a waiter finds it gone


# ---------------------------------------------------------------------------------------------------------------
# Redis


# Blocking reads shorter than this poll instead (see `RedisQueue.reserve`): Redis's default timer tick is 100 ms.
SHORT_BLOCK_S = 0.1
POLL_S = 0.002


class RedisQueue:
    """The shared queue of several API processes and workers on several machines."""

    STREAM, GROUP = "percept:jobs", "workers"
    RECENT, WORKERS = "percept:recent", "percept:workers"
    RECENT_MAX = 10_000  # job ids list_jobs can reach (the API asks for 1000 at most)

    def __init__(self, url: str, max_depth: int = 256, ttl_s: float = 3600.0, max_attempts: int = 3,
                 socket_timeout_s: float = 2.0, connect_timeout_s: float = 1.0, probe_timeout_s: float = 0.5):
        import redis
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.retry import Retry

        # Short socket timeouts and no retry on a timeout (redis-py retries 10 times by default): a stalled Redis
        # (SIGSTOP, a network partition) makes a request fail in about `socket_timeout_s` (503 with Retry-After)
        # instead of hanging. One immediate retry on a broken connection: the pooled connections of a Redis that
        # restarted are dead, the retry opens a new one. Blocking reads (XREADGROUP, BLPOP) block in chunks
        # shorter than the socket timeout.
        self.socket_timeout_s = socket_timeout_s
        self.r = redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=connect_timeout_s,
                                      retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
        # /readyz: answers within a second even when Redis is stalled.
        self._probe = redis.Redis.from_url(url, socket_timeout=probe_timeout_s, socket_connect_timeout=probe_timeout_s,
                                           retry=Retry(NoBackoff(), 0))
        self.max_depth, self.ttl_s, self.max_attempts = max_depth, ttl_s, max_attempts
        self._group_ready = False
        self._scripts: dict[str, Any] = {}

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl_s * 1000))

    def _ensure_group(self, force: bool = False) -> None:
        """Create the stream and its consumer group unless they exist (BUSYGROUP: they do). Cached, but a lost
        group (Redis restarted without its data, a flush, a failover to an empty replica) is noticed where it
        matters: NOGROUP on a worker's read (`_on_nogroup`) and a missing stream on submit or requeue (NOSTREAM)."""
        if self._group_ready and not force:
            return
        import redis

        try:
            self.r.xgroup_create(self.STREAM, self.GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    def _on_nogroup(self, e: Exception) -> None:
        """A NOGROUP error (the group or the stream is gone: Redis lost its data): recreate both, or re-raise."""
        if "NOGROUP" not in str(e):
            raise e
        import logging

        logging.getLogger(__name__).warning("the consumer group %s of %s was gone (Redis lost its data?): "
                                            "recreated it", self.GROUP, self.STREAM)
        self._group_ready = False
        self._ensure_group(force=True)

    def _script(self, name: str) -> Any:
        """A Lua script of `_SCRIPTS` (EVALSHA, loaded on first use): several commands in one round trip."""
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.r.register_script(_SCRIPTS[name])
        return script

    def has_group(self) -> bool:
        """Whether the consumer group exists (/readyz: without it no job can flow); a lost one (an empty Redis) is
        recreated here too. On the short-timeout probe connection."""
        import redis

        try:
            if any(g["name"].decode() == self.GROUP for g in self._probe.xinfo_groups(self.STREAM)):
                return True
        except redis.ResponseError:  # no such key: the stream is gone
            pass
        try:
            self._probe.xgroup_create(self.STREAM, self.GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            return "BUSYGROUP" in str(e)
        return True

    @staticmethod
    def _key(job_id: str, part: str = "") -> str:
        return f"percept:job:{job_id}" + (f":{part}" if part else "")

    # API side -------------------------------------------------------------------------------------------
    def submit(self, model: str, params: JobParams, data: bytes, idempotency_key: str | None = None) -> str:
        self._ensure_group()
        job_id = new_job_id()
        idem_key = None
        if idempotency_key is not None:
            fingerprint = request_fingerprint(model, params, data)
            idem_key = "percept:idem:" + hashlib.sha256(idempotency_key.encode()).hexdigest()
            value = json.dumps({"job": job_id, "fingerprint": fingerprint, "at": time.time()})
            while not self.r.set(idem_key, value, px=self._ttl_ms, nx=True):
                raw = self.r.get(idem_key)
                if raw is None:  # expired in between: try to take it again
                    continue
                old = json.loads(raw)
                if old["fingerprint"] != fingerprint:
                    raise _conflict(idempotency_key)
                loaded = self._load(old["job"])
                for _ in range(20):  # a concurrent first request may be between its SET and its job's record
                    if loaded is not None or time.time() - old.get("at", 0) > 2.0:
                        break
                    time.sleep(0.05)
                    loaded = self._load(old["job"])
                if loaded is not None and _replayable(loaded[0], bool(self.r.exists(self._key(old["job"], "result")))):
                    self.r.pexpire(idem_key, self._ttl_ms)  # as long as the job it names
                    return str(old["job"])
                self.r.delete(idem_key)  # its job is gone or not worth replaying: this request makes a new one
        rec = _new_record(job_id, model, params)
        fields = _flat(rec.to_json())
        keys = [self.STREAM, self._key(job_id), self._key(job_id, "input"), self.RECENT]
        for _ in range(2):
            answer = self._script("submit")(keys=keys, args=[self.max_depth, self._ttl_ms, job_id, rec.created_at,
                                                             self.RECENT_MAX, data, *fields])
            if answer != b"NOSTREAM":
                break
            self._ensure_group(force=True)  # the stream vanished (an empty Redis): the group first, then again
        if answer == b"FULL":
            if idem_key is not None:
                self.r.delete(idem_key)
            raise QueueFull(f"the queue holds {self.max_depth} jobs")
        return job_id

    def status(self, job_id: str) -> JobRecord | None:
        loaded = self._load(job_id)
        if loaded is None:
            return None
        rec, stream_id = loaded
        if rec.status is JobState.QUEUED:
            rec = dataclasses.replace(rec, position=self._position(stream_id))
        return rec

    def _load(self, job_id: str) -> tuple[JobRecord, str] | None:
        """The stored record and its current stream entry; None when unknown, expired or incomplete."""
        return _parse(self.r.hgetall(self._key(job_id)))

    def _position(self, stream_id: str) -> int | None:
        import redis

        if not stream_id:
            return None
        try:
            groups = {g["name"].decode(): g for g in self.r.xinfo_groups(self.STREAM)}
        except redis.ResponseError:  # the stream is gone (Redis lost its data)
            return None
        last = groups[self.GROUP]["last-delivered-id"].decode() if self.GROUP in groups else "0-0"
        return len(self.r.xrange(self.STREAM, min=f"({last}", max=f"({stream_id}"))

    def result(self, job_id: str) -> bytes | None:
        return self.r.get(self._key(job_id, "result"))

    def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        # Three round trips for a job that ends while we wait (issue 15: there were seven): the record, BLPOP, and
        # the signal put back with the final record read. The queue position only for a job still queued.
        deadline = time.monotonic() + timeout
        done = self._key(job_id, "done")
        while True:
            loaded = self._load(job_id)  # None: expired, or lost with Redis's data: the waiter learns it at once
            if loaded is None or loaded[0].terminal:
                return loaded and loaded[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self.status(job_id)
            # In chunks shorter than the socket timeout (a longer BLPOP would read as a stalled Redis).
            # BLPOP takes whole seconds on old servers; a fractional timeout works on Redis >= 6.
            chunk = min(remaining, self._block_chunk_s)
            if self.r.blpop([done], timeout=max(chunk, 0.01)):
                pipe = self.r.pipeline(transaction=False)
                pipe.rpush(done, 1)  # leave the signal for any other waiter
                pipe.pexpire(done, self._ttl_ms)
                pipe.hgetall(self._key(job_id))
                loaded = _parse(pipe.execute()[-1])
                return loaded and loaded[0]

    @property
    def _block_chunk_s(self) -> float:
        return max(0.05, min(1.0, self.socket_timeout_s - 0.5))

    def cancel(self, job_id: str, reason: str = "cancelled by an administrator") -> bool:
        # A running job: its worker sees the state at its next `progress` call and stops; its late `complete` or
        # `fail` finds the job ended and changes nothing. Its stream entry goes, so the depth no longer counts it.
        return self._finish(job_id, JobState.CANCELLED, error=reason)

    def list_jobs(self, limit: int = 100) -> list[JobRecord]:
        out: list[JobRecord] = []
        seen: set[str] = set()
        start = 0
        while len(out) < limit:
            ids = [i.decode() for i in self.r.zrevrange(self.RECENT, start, start + limit - 1)]
            if not ids:
                break
            start += len(ids)
            for job_id in ids:
                if job_id in seen:  # a job submitted meanwhile shifts the ranks: never list one twice
                    continue
                seen.add(job_id)
                rec = self.status(job_id)
                if rec is None:
                    start -= int(self.r.zrem(self.RECENT, job_id))  # expired
                elif len(out) < limit:
                    out.append(rec)
        return out

    def depth(self) -> int:
        return int(self.r.xlen(self.STREAM))

    def ping(self) -> bool:
        try:
            return bool(self._probe.ping())  # short timeout: /readyz answers within a second
        except Exception:
            return False

    # Worker side ----------------------------------------------------------------------------------------
    def reserve(self, consumer: str, count: int, block_ms: int) -> list[Reserved]:
        import redis

        self._ensure_group()
        deadline = time.monotonic() + block_ms / 1000
        while True:  # blocks in chunks shorter than the socket timeout
            remaining = deadline - time.monotonic()
            chunk_ms = int(min(max(remaining, 0.001), self._block_chunk_s) * 1000)
            # Redis ends a BLOCK that times out only at its next timer tick (hz 10: every 100 ms), so a 10 ms
            # batch window read as BLOCK 10 lasted up to 100 ms (48 ms a request on average, issue 15). Windows
            # shorter than a tick poll without blocking instead, every POLL_S: a new job is seen within 2 ms.
            short = remaining < SHORT_BLOCK_S
            try:
                resp = self.r.xreadgroup(self.GROUP, consumer, {self.STREAM: ">"}, count=count,
                                         block=None if short else max(1, chunk_ms))
            except redis.ResponseError as e:
                self._on_nogroup(e)  # recreated: the next call reads again
                return []
            if resp and resp[0][1]:
                return self._take(consumer, resp[0][1])
            if time.monotonic() >= deadline:
                return []
            if short:
                time.sleep(max(0.0, min(POLL_S, deadline - time.monotonic())))

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 16) -> list[Reserved]:
        """Claim jobs a dead worker left pending for longer than the visibility timeout. A live worker renews the
        lease of the jobs it holds (`renew`), so only the jobs of a worker that stopped renewing are taken."""
        import redis

        self._ensure_group()
        try:
            _, entries, _ = self.r.xautoclaim(self.STREAM, self.GROUP, consumer, min_idle_ms, "0-0", count=count)
        except redis.ResponseError as e:
            self._on_nogroup(e)
            return []
        return self._take(consumer, entries)

    def renew(self, consumer: str, stream_ids: list[str]) -> int:
        """Renew the lease of jobs `consumer` holds: reset the idle time of those of its entries still pending for
        it (XCLAIM ... JUSTID with min-idle 0), so `reclaim` does not take a job from a worker that is computing
        it. Entries another worker has claimed meanwhile are left alone. Returns the entries renewed."""
        import redis

        if not stream_ids:
            return 0
        try:
            pending = self.r.xpending_range(self.STREAM, self.GROUP, min="-", max="+", count=max(100, len(stream_ids)),
                                            consumername=consumer)
        except redis.ResponseError as e:
            self._on_nogroup(e)
            return 0
        mine = {p["message_id"].decode() if isinstance(p["message_id"], bytes) else p["message_id"] for p in pending}
        ids = [i for i in stream_ids if i in mine]
        if ids:
            self.r.xclaim(self.STREAM, self.GROUP, consumer, 0, ids, justid=True)
        return len(ids)

    def _take(self, consumer: str, entries: list[Any]) -> list[Reserved]:
        # Two round trips for the whole batch (issue 15: four per job): every record and upload, then every update.
        ids = [(sid.decode() if isinstance(sid, bytes) else sid, fields[b"id"].decode()) for sid, fields in entries]
        pipe = self.r.pipeline(transaction=False)
        for _, job_id in ids:
            pipe.hgetall(self._key(job_id))
            pipe.get(self._key(job_id, "input"))
        read = pipe.execute()
        taken = []
        for (sid, _), raw, data in zip(ids, read[::2], read[1::2], strict=True):
            loaded = _parse(raw)
            if loaded is None or data is None or loaded[0].terminal:
                self._ack(sid)  # expired or cancelled while queued
            else:
                taken.append((sid, loaded[0], data))
        if not taken:
            return []
        pipe = self.r.pipeline()
        for _, rec, _ in taken:
            pipe.hincrby(self._key(rec.id), "attempts", 1)
            pipe.hset(self._key(rec.id), mapping=_encode({"status": JobState.RUNNING.value, "started_at": time.time(),
                                                          "worker": consumer, "progress_done": None,
                                                          "progress_total": None}))
            pipe.pexpire(self._key(rec.id), self._ttl_ms)
            pipe.pexpire(self._key(rec.id, "input"), self._ttl_ms)
        counts = pipe.execute()[::4]
        out = []
        for (sid, rec, data), attempts in zip(taken, counts, strict=True):
            if attempts > self.max_attempts:  # reclaimed from dead workers too often
                self._finish(rec.id, JobState.FAILED, ack=sid,
                             error=f"gave up after {attempts - 1} attempts: {rec.error}", error_status=503)
                continue
            out.append(Reserved(rec.id, rec.model, rec.params, data, int(attempts), rec.created_at, sid))
        return out

    def progress(self, job_id: str, done: int, total: int) -> bool:
        # One round trip: the state as it is, and the progress written only while the job runs (HSET on a key
        # that expired would leave a partial record behind).
        return bool(self._script("progress")(keys=[self._key(job_id)],
                                             args=[json.dumps(JobState.RUNNING.value), done, total]))

    def complete(self, job: Reserved, result: bytes, media_type: str, compute_ms: float, batch_size: int) -> None:
        # Expired, cancelled meanwhile, or a slower duplicate of a finished job: only its entry is acknowledged.
        self._finish(job.id, JobState.DONE, ack=job.stream_id, result=result, media_type=media_type,
                     compute_ms=compute_ms, batch_size=batch_size)

    def fail(self, job: Reserved, error: str, retry: bool, status: int = 503) -> None:
        if retry and job.attempt < self.max_attempts:
            # Queued again now (a new entry at the back of the stream) rather than after the visibility timeout, in
            # one atomic script: a job that ended meanwhile (a cancel) stays ended.
            keys = [self._key(job.id), self._key(job.id, "input"), self.STREAM]
            record = _flat({"status": JobState.QUEUED.value, "error": error})
            for _ in range(2):
                args = [self._ttl_ms, self.GROUP, job.stream_id or "", job.id, *_ENDED, *record]
                if self._script("requeue")(keys=keys, args=args) != b"NOSTREAM":
                    return
                self._ensure_group(force=True)  # the stream vanished (an empty Redis): the group first, then again
            return
        self._finish(job.id, JobState.FAILED, ack=job.stream_id, error=error, error_status=status)

    def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        self.r.hset(self.WORKERS, worker_id, json.dumps({**info, "last_seen": time.time()}))

    def workers(self, max_age_s: float = 15.0) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for k, v in self.r.hgetall(self.WORKERS).items():
            info = json.loads(v)
            if now - info["last_seen"] <= max_age_s:
                out.append(dict(info, id=k.decode()))
            elif now - info["last_seen"] > 3600:
                self.r.hdel(self.WORKERS, k)
        return out

    def _ack(self, stream_id: str) -> None:
        if stream_id:
            pipe = self.r.pipeline(transaction=False)
            pipe.xack(self.STREAM, self.GROUP, stream_id)
            pipe.xdel(self.STREAM, stream_id)
            _raise_unless_nogroup(pipe.execute(raise_on_error=False))

    def _finish(self, job_id: str, status: JobState, ack: str | None = None, result: bytes | None = None,
                **fields: Any) -> bool:
        """End the job unless it has ended (or expired) already, in one atomic round trip: its result and record,
        the `done` signal, its stream entry acknowledged and deleted (`ack`: the entry a worker holds; None: the
        job's current one). Atomic, so a cancel and a worker's `complete` that cross cannot both end the job: the
        first wins, the second only acknowledges its entry. Returns whether this call ended the job."""
        record = _flat({"status": status.value, "finished_at": time.time(), **fields})
        keys = [self._key(job_id), self._key(job_id, "input"), self._key(job_id, "done"), self._key(job_id, "result"),
                self.STREAM]
        args = [self._ttl_ms, self.GROUP, ack or "", *_ENDED, b"" if result is None else b"1",
                b"" if result is None else result, *record]
        return bool(self._script("finish")(keys=keys, args=args))


_SCRIPTS = {
    # KEYS: the stream, the job's hash, its input, the recent set. ARGV: max depth, TTL in ms, job id, created at,
    # how many ids `recent` keeps, the upload, then the record's field/value pairs. One round trip for a submit
    # (issue 15: four), the depth check atomic with the enqueue. NOSTREAM: the stream is gone (an empty Redis).
    "submit": """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'NOSTREAM' end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 'FULL' end
redis.call('HSET', KEYS[2], unpack(ARGV, 7))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[6], 'PX', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[5]) - 1)
redis.call('HSET', KEYS[2], 'stream_id', redis.call('XADD', KEYS[1], '*', 'id', ARGV[3]))
return 'OK'
""",
    # KEYS: the job's hash, its input, the stream. ARGV: TTL in ms, the consumer group, the entry the worker holds,
    # the job id, the three terminal states as JSON, then the record's field/value pairs. A new entry at the back,
    # noted on the job, the held one acknowledged; nothing but that acknowledgement when the job ended or expired.
    "requeue": """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or redis.call('HEXISTS', KEYS[1], 'id') == 0
    or status == ARGV[5] or status == ARGV[6] or status == ARGV[7] then
  if ARGV[3] ~= '' then
    redis.pcall('XACK', KEYS[3], ARGV[2], ARGV[3])
    redis.call('XDEL', KEYS[3], ARGV[3])
  end
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 0 then return 'NOSTREAM' end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'stream_id', redis.call('XADD', KEYS[3], '*', 'id', ARGV[4]))
if ARGV[3] ~= '' then
  redis.pcall('XACK', KEYS[3], ARGV[2], ARGV[3])
  redis.call('XDEL', KEYS[3], ARGV[3])
end
return 1
""",
    # KEYS: the job's hash, its input, its done list, its result, the stream. ARGV: TTL in ms, the consumer group,
    # the entry to acknowledge ("": the job's current one), the three terminal states as JSON, "1" when a result
    # follows, the result, then the record's field/value pairs. 1 when it ended the job; 0 when the job had ended
    # or expired (its entry is acknowledged all the same). XACK answers NOGROUP when the group is gone with its
    # pending entries (Redis lost its data): nothing to acknowledge then.
    "finish": """
local entry = ARGV[3]
if entry == '' then entry = redis.call('HGET', KEYS[1], 'stream_id') or '' end
local function ack()
  if entry ~= '' then
    redis.pcall('XACK', KEYS[5], ARGV[2], entry)
    redis.call('XDEL', KEYS[5], entry)
  end
end
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or redis.call('HEXISTS', KEYS[1], 'id') == 0
    or status == ARGV[4] or status == ARGV[5] or status == ARGV[6] then
  ack()
  return 0
end
if ARGV[7] == '1' then redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[3], 1)
redis.call('PEXPIRE', KEYS[3], ARGV[1])
ack()
return 1
""",
    # KEYS: the job's hash. ARGV: the JSON of "running", done, total. 1 when the job runs (progress stored), else
    # 0: one round trip, and no HSET on a key that expired (it would leave a partial record behind).
    "progress": """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress_done', ARGV[2], 'progress_total', ARGV[3])
return 1
""",
}


def _parse(raw: dict[bytes, bytes]) -> tuple[JobRecord, str] | None:
    """A job's hash as (its record, the id of its current stream entry); None when missing or incomplete."""
    if not raw or b"id" not in raw:  # an update that raced the key's expiry leaves a partial hash
        return None
    fields = {k.decode(): v for k, v in raw.items()}
    stream_id = fields.pop("stream_id", b"").decode()
    return JobRecord.from_json({k: json.loads(v) for k, v in fields.items()}), stream_id


def _raise_unless_nogroup(replies: list[Any]) -> None:
    """Raise the first error among a pipeline's replies, except NOGROUP from XACK: the consumer group is gone with
    its pending entries (Redis lost its data), so there is nothing left to acknowledge."""
    for reply in replies:
        if isinstance(reply, Exception) and "NOGROUP" not in str(reply):
            raise reply


def _encode(fields: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in fields.items()}


def _flat(fields: dict[str, Any]) -> list[str]:
    """A record's fields as a script's ARGV: field, JSON value, field, JSON value, ..."""
    return [x for kv in _encode(fields).items() for x in kv]


_ENDED = sorted(json.dumps(state.value) for state in TERMINAL)  # how a hash stores the terminal states


def open_queue(settings: QueueSettings) -> MemoryQueue | RedisQueue:
    """The queue the settings describe: Redis when REDIS_URL is set, else the in-memory one (embedded mode); the
    same limits (queue_max, job_ttl_s, max_attempts) either way."""
    limits = {"max_depth": settings.queue_max, "ttl_s": settings.job_ttl_s, "max_attempts": settings.max_attempts}
    if settings.redis_url:
        return RedisQueue(settings.redis_url, **limits, socket_timeout_s=settings.redis_socket_timeout_s,
                          connect_timeout_s=settings.redis_connect_timeout_s)
    return MemoryQueue(**limits, max_result_bytes=int(settings.result_cache_mb * 2**20))
