"""Settings of every percept process, from the environment (prefix ``PERCEPT_``, plus ``REDIS_URL``), with laptop
defaults. One style everywhere: pydantic-settings classes, each environment variable declared in one class:

* `PerceptSettings`: the common configuration (the prefix, empty values count as unset, fields settable by name).
* `RedisSettings`: ``REDIS_URL`` (the API, the inference worker, the trainer's ``--queue``).
* `QueueSettings`: the job queue's limits. The API process builds its queue from them in both modes (the in-memory
  queue of embedded mode and the Redis queue), and worker processes read the same variables.
* `WorkerSettings`: the inference worker (a `percept worker` process, or the embedded worker thread).

`service.settings.ServiceSettings` extends `QueueSettings`; `trainer.settings.TrainerSettings` extends
`RedisSettings`. Nothing here imports torch, FastAPI or Redis.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

TILE_PIXELS_MIN = 1_000_000


class PerceptSettings(BaseSettings):
    # empty = unset; populate_by_name: `Settings(redis_url=...)` works although the variable is REDIS_URL.
    model_config = SettingsConfigDict(env_prefix="PERCEPT_", extra="ignore", env_ignore_empty=True,
                                      populate_by_name=True)


class RedisSettings(PerceptSettings):
    # None: no Redis (the API runs embedded: an in-memory queue and an in-process worker thread); a URL such as
    # redis://host:6379/0: the shared Redis queue, served by separate `percept worker` processes.
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "PERCEPT_REDIS_URL"))


class QueueSettings(RedisSettings):
    # Jobs queued or running at most; past it new requests get 503 with Retry-After.
    queue_max: int = Field(256, ge=1)
    # A job's record, upload and result are kept this long (seconds) after its last change (submitted, taken by a
    # worker, finished); then GET /jobs/{id} answers 404.
    job_ttl_s: float = Field(3600.0, gt=0)
    # Deliveries of one job at most (a failed try that may succeed elsewhere is retried at the back of the queue).
    max_attempts: int = Field(3, ge=1)
    # Redis client timeouts (seconds): a stalled Redis fails a request within about this long (503 with
    # Retry-After) instead of hanging it; blocking reads wait in shorter chunks. /readyz probes with 0.5 s.
    redis_socket_timeout_s: float = Field(2.0, ge=0.5, le=60)
    redis_connect_timeout_s: float = Field(1.0, gt=0, le=60)
    # Embedded mode: results kept in memory at most (MiB, besides the time to live); past it the oldest finished
    # results are dropped first and fetching one answers 410. Redis mode bounds results with Redis's maxmemory.
    result_cache_mb: float = Field(512.0, gt=0)

    @property
    def embedded(self) -> bool:
        return not self.redis_url


class WorkerSettings(QueueSettings):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_batch_size: int = Field(8, ge=1, le=256)
    max_batch_delay_ms: int = Field(10, ge=0, le=10_000)  # wait at most this long for a batch to fill
    # A job whose worker stopped renewing its lease for this long is re-delivered: it only bounds how long a dead
    # worker goes unnoticed (a live one renews the lease of the jobs it computes every third of it, and sends its
    # heartbeat from a thread of its own, however long a forward pass takes).
    visibility_timeout_s: float = Field(10.0, gt=0)
    memory_budget_mb: float = Field(2048.0, gt=0)  # resident model weights; least recently used are evicted
    # Output pixels above which a request runs in tiles; at least TILE_PIXELS_MIN (1,000,000: one tile must hold
    # the networks' receptive field with room to spare).
    tile_pixels: int = 4_000_000
    half: bool = True  # fp16 inference on CUDA (fp32 fallback on NaN/Inf)
    # CPU inference engine and precision (model_store.backends): auto = the fastest measured combination within
    # the stated tolerance of fp32 that this machine has (OpenVINO bf16 where bf16 is native, else OpenVINO fp32);
    # asking for one the machine lacks (bf16 without native support, openvino not installed) stops the worker.
    backend: Literal["auto", "torch", "openvino"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    reload_interval_s: float = Field(5.0, gt=0)  # how often to look for newly published versions
    warmup_sizes: str = "256"  # comma-separated square sizes run once per model at start
    heartbeat_s: float = Field(2.0, gt=0)
    # Threads that decode the uploads of a batch and encode its results, side by side (Pillow and zlib release the
    # GIL): 512² PNGs cost ~18 ms of one core per image here against 85 ms of forward pass on 2 cores, and ~0.1 ms
    # of a GPU's (`python -m bench.worker`). 1: on the worker's own thread.
    codec_threads: int = Field(default_factory=lambda: min(32, os.cpu_count() or 1), ge=1, le=64)

    @field_validator("tile_pixels")
    @classmethod
    def _tile_pixels_min(cls, value: int) -> int:
        if value < TILE_PIXELS_MIN:
            raise ValueError(f"PERCEPT_TILE_PIXELS must be at least {TILE_PIXELS_MIN:,} (output pixels per tile), "
                             f"got {value:,}")
        return value
