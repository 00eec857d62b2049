"""The Redis job queue, shared by several API processes and workers on several machines (Redis Streams).

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
import time
from typing import Any

from worker.queue import (
    TERMINAL,
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
                    raise conflict(idempotency_key)
                loaded = self._load(old["job"])
                for _ in range(20):  # a concurrent first request may be between its SET and its job's record
                    if loaded is not None or time.time() - old.get("at", 0) > 2.0:
                        break
                    time.sleep(0.05)
                    loaded = self._load(old["job"])
                if loaded is not None and replayable(loaded[0], bool(self.r.exists(self._key(old["job"], "result")))):
                    self.r.pexpire(idem_key, self._ttl_ms)  # as long as the job it names
                    return str(old["job"])
                self.r.delete(idem_key)  # its job is gone or not worth replaying: this request makes a new one
        rec = new_record(job_id, model, params)
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


# What the scripts that end or requeue a job share. `ended`: the job's hash is gone, partial (an update raced its
# key's expiry) or in one of `states` (the terminal ones, as JSON). `ack`: a stream entry acknowledged and deleted;
# XACK answers NOGROUP when the group is gone with its pending entries (Redis lost its data): nothing to do then.
_LUA_JOB_END = """
local function ended(hash, states)
  local status = redis.call('HGET', hash, 'status')
  if (not status) or redis.call('HEXISTS', hash, 'id') == 0 then return true end
  for _, state in ipairs(states) do
    if status == state then return true end
  end
  return false
end
local function ack(stream, group, entry)
  if entry ~= '' then
    redis.pcall('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
  end
end
"""

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
    "requeue": _LUA_JOB_END + """
if ended(KEYS[1], {ARGV[5], ARGV[6], ARGV[7]}) then ack(KEYS[3], ARGV[2], ARGV[3]) return 0 end
if redis.call('EXISTS', KEYS[3]) == 0 then return 'NOSTREAM' end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'stream_id', redis.call('XADD', KEYS[3], '*', 'id', ARGV[4]))
ack(KEYS[3], ARGV[2], ARGV[3])
return 1
""",
    # KEYS: the job's hash, its input, its done list, its result, the stream. ARGV: TTL in ms, the consumer group,
    # the entry to acknowledge ("": the job's current one), the three terminal states as JSON, "1" when a result
    # follows, the result, then the record's field/value pairs. 1 when it ended the job; 0 when the job had ended
    # or expired (its entry is acknowledged all the same).
    "finish": _LUA_JOB_END + """
local entry = ARGV[3]
if entry == '' then entry = redis.call('HGET', KEYS[1], 'stream_id') or '' end
if ended(KEYS[1], {ARGV[4], ARGV[5], ARGV[6]}) then ack(KEYS[5], ARGV[2], entry) return 0 end
if ARGV[7] == '1' then redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[3], 1)
redis.call('PEXPIRE', KEYS[3], ARGV[1])
ack(KEYS[5], ARGV[2], entry)
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
