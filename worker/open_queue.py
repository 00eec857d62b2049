"""Which job queue a process uses: Redis when REDIS_URL is set, else the in-memory one (embedded mode)."""

from __future__ import annotations

from worker.memory_queue import MemoryQueue
from worker.redis_queue import RedisQueue
from worker.settings import QueueSettings


def open_queue(settings: QueueSettings) -> MemoryQueue | RedisQueue:
    """The queue the settings describe: Redis when REDIS_URL is set, else the in-memory one (embedded mode); the
    same limits (queue_max, job_ttl_s, max_attempts) either way."""
    limits = {"max_depth": settings.queue_max, "ttl_s": settings.job_ttl_s, "max_attempts": settings.max_attempts}
    if settings.redis_url:
        return RedisQueue(settings.redis_url, **limits, socket_timeout_s=settings.redis_socket_timeout_s,
                          connect_timeout_s=settings.redis_connect_timeout_s)
    return MemoryQueue(**limits, max_result_bytes=int(settings.result_cache_mb * 2**20))
