"""What the handlers share and how they get it: the per-app state, FastAPI dependencies, API-key checks."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import anyio
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.metrics import Metrics
from service.settings import ServiceSettings
from worker.queue import JobQueue

# Multipart framing (boundaries, part headers) around the file: allowed on top of max_upload_bytes.
MULTIPART_SLACK = 64 * 1024
THUMBNAIL_SIDE = 256
JOB_ID_LENGTH = 32  # uuid4().hex


@dataclass
class ServiceState:
    """What the handlers share: one per app."""

    settings: ServiceSettings
    queue: JobQueue  # worker.memory_queue.MemoryQueue | worker.redis_queue.RedisQueue
    metrics: Metrics
    wait_limiter: anyio.CapacityLimiter | None = None  # threads blocked waiting on jobs (set in the lifespan)
    worker_error: str | None = None  # embedded mode: why the in-process worker stopped
    embedded_worker: bool = False
    thumbnails: OrderedDict[tuple[str, int, int], bytes] = field(default_factory=OrderedDict)
    thumbnail_lock: threading.Lock = field(default_factory=threading.Lock)




# Dependencies
# All `async def` although none awaits: FastAPI runs a plain `def` dependency in its thread pool, a thread hop
# each (0.1-0.6 ms a request for these three, measured in-process; issue 15), for work of a microsecond.


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_settings(state: ServiceState = Depends(get_state)) -> ServiceSettings:
    return state.settings


async def get_queue(state: ServiceState = Depends(get_state)) -> JobQueue:
    return state.queue


_admin_bearer = HTTPBearer(scheme_name="AdminKey", auto_error=False,
                           description="PERCEPT_API_KEY: required by every /admin endpoint")
# The public endpoints' key is read by hand (no HTTPBearer dependency): the schema declares it only when
# PERCEPT_PUBLIC_API_KEY is set (`document_public_key`), so it never claims a requirement that is not enforced.
PUBLIC_SCHEME = {"type": "http", "scheme": "bearer",
                 "description": "PERCEPT_PUBLIC_API_KEY (or send it as X-API-Key): required by the public endpoints"}


def _matches(token: str | None, *keys: Any) -> bool:
    given = (token or "").encode()
    # Compare with every key (no early exit) so timing does not tell which one matched.
    found = False
    for key in keys:
        if key is not None:
            found |= secrets.compare_digest(given, key.get_secret_value().encode())
    return found


async def require_admin(creds: HTTPAuthorizationCredentials | None = Depends(_admin_bearer),
                  settings: ServiceSettings = Depends(get_settings)) -> None:
    if settings.api_key is None:
        raise HTTPException(403, "the admin endpoints are disabled: set PERCEPT_API_KEY to enable them")
    if creds is None:
        raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <PERCEPT_API_KEY>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not _matches(creds.credentials, settings.api_key):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def require_public(request: Request, settings: ServiceSettings = Depends(get_settings)) -> None:
    if settings.public_api_key is None:
        return
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    token = credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
    token = token or request.headers.get("x-api-key")
    if token is None:
        raise HTTPException(401, "missing credentials: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not _matches(token, settings.public_api_key, settings.api_key):
        raise HTTPException(401, "invalid API key", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


def unavailable(message: str, settings: ServiceSettings) -> HTTPException:
    return HTTPException(503, message, headers={"Retry-After": str(settings.retry_after_s)})
