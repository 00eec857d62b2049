"""Worker settings, from the environment (prefix ``PERCEPT_``, plus ``REDIS_URL``), with laptop defaults."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PERCEPT_", extra="ignore", env_ignore_empty=True)  # empty = unset

    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "PERCEPT_REDIS_URL"))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    max_batch_size: int = Field(8, ge=1, le=256)
    max_batch_delay_ms: int = Field(10, ge=0, le=10_000)  # wait at most this long for a batch to fill
    visibility_timeout_s: float = Field(60.0, gt=0)  # a job pending this long on a silent worker is re-delivered
    max_attempts: int = Field(3, ge=1)
    job_ttl_s: float = Field(3600.0, gt=0)
    memory_budget_mb: float = Field(2048.0, gt=0)  # resident model weights; least recently used are evicted
    tile_pixels: int = Field(4_000_000, ge=1_000_000)  # output pixels above which a request runs in tiles
    half: bool = True  # fp16 inference on CUDA (fp32 fallback on NaN/Inf)
    reload_interval_s: float = Field(5.0, gt=0)  # how often to look for newly published versions
    warmup_sizes: str = "256"  # comma-separated square sizes run once per model at start
    heartbeat_s: float = Field(2.0, gt=0)
