"""The in-memory job queue of embedded mode: the API and its worker thread in one process, no Redis.

It keeps `worker.queue.JobQueue`'s contract (tests/test_queue.py runs the same tests on it and on Redis); what it
cannot lose it does not have to keep: its worker thread dies with it, so nothing is ever reclaimed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from worker.queue import (
    JobParams,
    JobRecord,
    JobState,
    QueueFull,
    Reserved,
    conflict,
    new_job_id,
    new_record,
    replayable,
    request_fingerprint,
)


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
                        raise conflict(idempotency_key)
                    if replayable(old.record, old.result is not None):
                        return old.record.id
            if self.depth() >= self.max_depth:
                raise QueueFull(f"the queue holds {self.max_depth} jobs")
            job_id = new_job_id()
            self._jobs[job_id] = _MemJob(new_record(job_id, model, params), data, 0.0, idempotency=idem)
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
