"""The job queue between API processes and inference workers: Redis Streams, or an in-memory queue (embedded mode).

Both backends have the same methods, so the API and the worker loop do not know which one they talk to.

Redis layout (prefix ``percept:``)::

    jobs                     stream of job ids, consumer group ``workers`` (XREADGROUP / XACK / XAUTOCLAIM)
    job:<id>                 hash: status, model, params (JSON), size, timings, attempts, error, stream_id
    job:<id>:input           the uploaded bytes            (expire after the job TTL)
    job:<id>:result          the encoded output image      (expire after the job TTL)
    job:<id>:done            list pushed once when the job ends; an API process waiting on it uses BLPOP
    workers                  hash worker id -> JSON heartbeat (models loaded, counters, last seen)

Delivery is at least once: a job stays pending in the consumer group until a worker acknowledges it; a worker
that dies leaves its jobs pending, and another worker claims them (XAUTOCLAIM) once they have been idle for the
visibility timeout. A job delivered more than `max_attempts` times is marked failed with its last error.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

TERMINAL = ("done", "failed", "cancelled")


class QueueFull(Exception):
    """The bounded queue has no room; the API answers 503 with Retry-After."""


@dataclass
class Reserved:
    """A job handed to a worker."""

    id: str
    model: str
    params: dict[str, Any]
    data: bytes
    attempt: int
    enqueued_at: float
    stream_id: str = ""


@dataclass
class _MemJob:
    record: dict[str, Any]
    data: bytes
    result: bytes | None = None
    done: threading.Event = field(default_factory=threading.Event)


def new_job_id() -> str:
    return uuid.uuid4().hex


def _record(job_id: str, model: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"id": job_id, "status": "queued", "model": model, "params": params, "created_at": time.time(),
            "started_at": None, "finished_at": None, "attempts": 0, "error": None, "worker": None,
            "media_type": None, "compute_ms": None, "batch_size": None, "error_status": None}


class MemoryQueue:
    """In-process queue for embedded mode (one process: the API and its worker thread)."""

    def __init__(self, max_depth: int = 256, ttl_s: float = 3600.0, max_attempts: int = 3):
        self.max_depth, self.ttl_s, self.max_attempts = max_depth, ttl_s, max_attempts
        self._jobs: OrderedDict[str, _MemJob] = OrderedDict()
        self._queue: list[str] = []
        self._cond = threading.Condition()
        self._workers: dict[str, dict[str, Any]] = {}

    # API side -------------------------------------------------------------------------------------------
    def submit(self, model: str, params: dict[str, Any], data: bytes) -> str:
        with self._cond:
            self._expire()
            if self.depth() >= self.max_depth:
                raise QueueFull(f"the queue holds {self.max_depth} jobs")
            job_id = new_job_id()
            self._jobs[job_id] = _MemJob(_record(job_id, model, params), data)
            self._queue.append(job_id)
            self._cond.notify_all()
            return job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            rec = dict(job.record)
            rec["position"] = self._queue.index(job_id) if job_id in self._queue else None
            return rec

    def result(self, job_id: str) -> bytes | None:
        job = self._jobs.get(job_id)
        return job.result if job else None

    def wait(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.done.wait(max(0.0, timeout))
        return self.status(job_id)

    def cancel(self, job_id: str) -> bool:
        with self._cond:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._finish(job_id, "cancelled", error="cancelled by an administrator")
                return True
            return False

    def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        ids = list(self._jobs)[-limit:]
        return [s for s in (self.status(i) for i in reversed(ids)) if s]

    def depth(self) -> int:
        return len(self._queue) + sum(1 for j in self._jobs.values() if j.record["status"] == "running")

    def ping(self) -> bool:
        return True

    # Worker side ----------------------------------------------------------------------------------------
    def reserve(self, consumer: str, count: int, block_ms: int) -> list[Reserved]:
        deadline = time.monotonic() + block_ms / 1000
        with self._cond:
            while not self._queue:
                remaining = deadline - time.monotonic()
                if (remaining <= 0 or not self._cond.wait(remaining)) and not self._queue:
                    return []
            taken, self._queue = self._queue[:count], self._queue[count:]
            out = []
            for job_id in taken:
                job = self._jobs[job_id]
                rec = job.record
                rec.update(status="running", started_at=time.time(), worker=consumer, attempts=rec["attempts"] + 1)
                out.append(Reserved(job_id, rec["model"], rec["params"], job.data, rec["attempts"], rec["created_at"]))
            return out

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 16) -> list[Reserved]:
        return []  # one process: a worker thread that dies takes the queue with it

    def complete(self, job: Reserved, result: bytes, media_type: str, compute_ms: float, batch_size: int) -> None:
        with self._cond:
            if job.id in self._jobs and self._jobs[job.id].record["status"] == "running":
                self._jobs[job.id].result = result
                self._finish(job.id, "done", media_type=media_type, compute_ms=compute_ms, batch_size=batch_size)

    def fail(self, job: Reserved, error: str, retry: bool, status: int = 503) -> None:
        with self._cond:
            if job.id not in self._jobs:
                return
            if retry and job.attempt < self.max_attempts:
                self._jobs[job.id].record["status"] = "queued"
                self._jobs[job.id].record["error"] = error
                self._queue.insert(0, job.id)
                self._cond.notify_all()
            else:
                self._finish(job.id, "failed", error=error, error_status=status)

    def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        self._workers[worker_id] = {**info, "last_seen": time.time()}

    def workers(self, max_age_s: float = 15.0) -> list[dict[str, Any]]:
        now = time.time()
        return [dict(v, id=k) for k, v in self._workers.items() if now - v["last_seen"] <= max_age_s]

    def _finish(self, job_id: str, status: str, **fields: Any) -> None:
        job = self._jobs[job_id]
        job.record.update(status=status, finished_at=time.time(), **fields)
        job.data = b""
        job.done.set()

    def _expire(self) -> None:
        cutoff = time.time() - self.ttl_s
        for job_id in [i for i, j in self._jobs.items() if j.record["status"] in TERMINAL
                       and (j.record["finished_at"] or 0) < cutoff]:
            del self._jobs[job_id]


class RedisQueue:
    """The shared queue of several API processes and workers on several machines."""

    STREAM, GROUP = "percept:jobs", "workers"

    def __init__(self, url: str, max_depth: int = 256, ttl_s: float = 3600.0, max_attempts: int = 3):
        import redis

        self.r = redis.Redis.from_url(url)
        self.max_depth, self.ttl_s, self.max_attempts = max_depth, int(ttl_s), max_attempts
        self._group_ready = False

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        import redis

        try:
            self.r.xgroup_create(self.STREAM, self.GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    @staticmethod
    def _key(job_id: str, part: str = "") -> str:
        return f"percept:job:{job_id}" + (f":{part}" if part else "")

    # API side -------------------------------------------------------------------------------------------
    def submit(self, model: str, params: dict[str, Any], data: bytes) -> str:
        self._ensure_group()
        if self.depth() >= self.max_depth:
            raise QueueFull(f"the queue holds {self.max_depth} jobs")
        job_id = new_job_id()
        rec = _record(job_id, model, params)
        pipe = self.r.pipeline()
        pipe.hset(self._key(job_id), mapping=_encode(rec))
        pipe.expire(self._key(job_id), self.ttl_s)
        pipe.set(self._key(job_id, "input"), data, ex=self.ttl_s)
        pipe.execute()
        stream_id = self.r.xadd(self.STREAM, {"id": job_id})
        self.r.hset(self._key(job_id), "stream_id", stream_id)
        return job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self._key(job_id))
        if not raw:
            return None
        rec = _decode(raw)
        rec["position"] = self._position(rec.get("stream_id")) if rec["status"] == "queued" else None
        return rec

    def _position(self, stream_id: str | None) -> int | None:
        if not stream_id:
            return None
        groups = {g["name"].decode(): g for g in self.r.xinfo_groups(self.STREAM)}
        last = groups[self.GROUP]["last-delivered-id"].decode() if self.GROUP in groups else "0-0"
        return len(self.r.xrange(self.STREAM, min=f"({last}", max=f"({stream_id}"))

    def result(self, job_id: str) -> bytes | None:
        return self.r.get(self._key(job_id, "result"))

    def wait(self, job_id: str, timeout: float) -> dict[str, Any] | None:
        rec = self.status(job_id)
        if rec is None or rec["status"] in TERMINAL or timeout <= 0:
            return rec
        # BLPOP takes whole seconds on old servers; a fractional timeout works on Redis >= 6.
        if self.r.blpop([self._key(job_id, "done")], timeout=max(timeout, 0.01)):
            self.r.rpush(self._key(job_id, "done"), 1)  # leave the signal for any other waiter
            self.r.expire(self._key(job_id, "done"), self.ttl_s)
        return self.status(job_id)

    def cancel(self, job_id: str) -> bool:
        rec = self.status(job_id)
        if rec is None or rec["status"] != "queued":
            return False
        self._finish(job_id, "cancelled", error="cancelled by an administrator")
        self._ack(rec.get("stream_id") or "")  # out of the stream now, so the depth no longer counts it
        return True

    def list_jobs(self, limit: int = 100) -> list[dict[str, Any]]:
        ids = [f[b"id"].decode() for _, f in self.r.xrevrange(self.STREAM, count=limit)]
        return [s for s in (self.status(i) for i in ids) if s]

    def depth(self) -> int:
        return int(self.r.xlen(self.STREAM))

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except Exception:
            return False

    # Worker side ----------------------------------------------------------------------------------------
    def reserve(self, consumer: str, count: int, block_ms: int) -> list[Reserved]:
        self._ensure_group()
        resp = self.r.xreadgroup(self.GROUP, consumer, {self.STREAM: ">"}, count=count, block=max(1, block_ms))
        entries = resp[0][1] if resp else []
        return self._take(consumer, entries)

    def reclaim(self, consumer: str, min_idle_ms: int, count: int = 16) -> list[Reserved]:
        """Claim jobs a dead worker left pending for longer than the visibility timeout."""
        self._ensure_group()
        _, entries, _ = self.r.xautoclaim(self.STREAM, self.GROUP, consumer, min_idle_ms, "0-0", count=count)
        return self._take(consumer, entries)

    def _take(self, consumer: str, entries: list[Any]) -> list[Reserved]:
        out = []
        for stream_id, fields in entries:
            sid = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
            job_id = fields[b"id"].decode()
            rec = self.status(job_id)
            data = self.r.get(self._key(job_id, "input"))
            if rec is None or data is None or rec["status"] in TERMINAL:
                self._ack(sid)  # expired or cancelled while queued
                continue
            attempts = int(self.r.hincrby(self._key(job_id), "attempts", 1))
            if attempts > self.max_attempts:
                self._finish(job_id, "failed", error=f"gave up after {attempts - 1} attempts: {rec.get('error')}",
                             error_status=503)
                self._ack(sid)
                continue
            self.r.hset(self._key(job_id), mapping=_encode({"status": "running", "started_at": time.time(),
                                                            "worker": consumer}))
            out.append(Reserved(job_id, rec["model"], rec["params"], data, attempts, rec["created_at"], sid))
        return out

    def complete(self, job: Reserved, result: bytes, media_type: str, compute_ms: float, batch_size: int) -> None:
        if (self.status(job.id) or {}).get("status") in TERMINAL:
            self._ack(job.stream_id)  # a slower duplicate of an already finished job
            return
        self.r.set(self._key(job.id, "result"), result, ex=self.ttl_s)
        self._finish(job.id, "done", media_type=media_type, compute_ms=compute_ms, batch_size=batch_size)
        self._ack(job.stream_id)

    def fail(self, job: Reserved, error: str, retry: bool, status: int = 503) -> None:
        if retry and job.attempt < self.max_attempts:
            self.r.hset(self._key(job.id), mapping=_encode({"status": "queued", "error": error}))
            # Queue it again now rather than after the visibility timeout.
            self.r.hset(self._key(job.id), "stream_id", self.r.xadd(self.STREAM, {"id": job.id}))
            self._ack(job.stream_id)
            return
        self._finish(job.id, "failed", error=error, error_status=status)
        self._ack(job.stream_id)

    def heartbeat(self, worker_id: str, info: dict[str, Any]) -> None:
        self.r.hset("percept:workers", worker_id, json.dumps({**info, "last_seen": time.time()}))

    def workers(self, max_age_s: float = 15.0) -> list[dict[str, Any]]:
        now = time.time()
        out = []
        for k, v in self.r.hgetall("percept:workers").items():
            info = json.loads(v)
            if now - info["last_seen"] <= max_age_s:
                out.append(dict(info, id=k.decode()))
            elif now - info["last_seen"] > 3600:
                self.r.hdel("percept:workers", k)
        return out

    def _ack(self, stream_id: str) -> None:
        if stream_id:
            self.r.xack(self.STREAM, self.GROUP, stream_id)
            self.r.xdel(self.STREAM, stream_id)

    def _finish(self, job_id: str, status: str, **fields: Any) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self._key(job_id), mapping=_encode({"status": status, "finished_at": time.time(), **fields}))
        pipe.delete(self._key(job_id, "input"))
        pipe.rpush(self._key(job_id, "done"), 1)
        pipe.expire(self._key(job_id, "done"), self.ttl_s)
        pipe.execute()


def _encode(rec: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in rec.items()}


def _decode(raw: dict[bytes, bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = k.decode()
        out[key] = v.decode() if key == "stream_id" else json.loads(v)
    return out


def connect(redis_url: str | None, **kwargs: Any) -> MemoryQueue | RedisQueue:
    """The Redis queue when a URL is given, else the in-memory one (embedded mode)."""
    return RedisQueue(redis_url, **kwargs) if redis_url else MemoryQueue(**kwargs)
