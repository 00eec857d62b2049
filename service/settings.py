"""HTTP service settings, from the environment (prefix ``PERCEPT_``, plus ``REDIS_URL``), with laptop defaults
(worker/settings.py declares the variables the service shares with the worker).

``PERCEPT_API_KEY=secret percept serve`` runs an embedded service (API and one worker thread in one process,
an in-memory queue) with the admin endpoints enabled; with ``REDIS_URL`` set the API only enqueues jobs and
`percept worker` processes (any number, any machine) do the inference.
"""

from __future__ import annotations

from pydantic import Field, SecretStr

from worker.settings import QueueSettings


class ServiceSettings(QueueSettings):
    """The API process. REDIS_URL (None: embedded mode) and the queue's limits (PERCEPT_QUEUE_MAX, PERCEPT_JOB_TTL_S,
    PERCEPT_MAX_ATTEMPTS) are `QueueSettings`, shared with the worker; the queue is built from them in both modes."""

    # Bearer token of the /admin endpoints. None: they are disabled and answer 403 saying to set PERCEPT_API_KEY.
    api_key: SecretStr | None = None
    # When set, the public endpoints (stylize, upscale, jobs, styles, models) require this token too
    # (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the admin key is accepted as well).
    # /healthz, /readyz and /metrics stay open for probes and scrapers.
    public_api_key: SecretStr | None = None

    # Uploads: bytes of one image (checked against Content-Length first, then while reading the body).
    max_upload_bytes: int = Field(20 * 2**20, ge=1)
    # Pixels (width x height, read from the image header before decoding) of one input image.
    max_pixels: int = Field(16_000_000, ge=1)
    # Pixels of one output image (after max_side and the upscaling factor): an x8 upscale of a large photo is
    # refused with 413 and a hint to pass max_side rather than tying up a worker for minutes.
    max_output_pixels: int = Field(64_000_000, ge=1)
    # Longer side inputs are shrunk to when the request gives no max_side. None: processed at their own size.
    max_side_default: int | None = Field(None, ge=1)
    # Bytes of a training checkpoint uploaded to POST /admin/models/{name}/publish.
    max_checkpoint_bytes: int = Field(1024 * 2**20, ge=1)
    # Video uploads (MP4/MOV/MKV/WebM, told from images by their bytes; always a 202 job): bytes, seconds, and
    # frames x pixels of the input (500 M: about a minute of 640x360 at 30 fps, which a 2-core CPU worker
    # stylizes in about 6 minutes: bench/video.py measures 11 frames/s at 454x256 and 3.2 at 852x480).
    max_video_bytes: int = Field(100 * 2**20, ge=1)
    max_video_seconds: float = Field(60.0, gt=0)
    max_video_frame_pixels: int = Field(500_000_000, ge=1)

    # Synchronous requests wait this long for their result (seconds) unless they pass ?wait=...; past it they
    # get 202 and the job's URL. A request may ask for at most max_wait_s.
    default_wait_s: float = Field(30.0, ge=0)
    max_wait_s: float = Field(120.0, ge=0)

    # A worker whose last heartbeat is older than this (seconds) does not count for /readyz.
    worker_stale_s: float = Field(15.0, gt=0)
    # Retry-After (seconds) sent with 503 answers (queue full, inference failure, no queue).
    retry_after_s: int = Field(5, ge=1)

    # `percept serve` binds here.
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
