"""The FastAPI application: `create_app` wires settings, the queue, metrics, error handlers and the routes.

Embedded mode (no Redis URL): an in-memory queue and one worker thread in this process, started (with its model
warm-up) in the app's lifespan and stopped on shutdown. Redis mode: the app only enqueues; `percept worker`
processes do the inference.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import page, routes
from service.deps import ServiceState
from service.metrics import Metrics, MetricsMiddleware
from service.settings import ServiceSettings
from worker.memory_queue import MemoryQueue
from worker.open_queue import open_queue
from worker.queue import JobQueue, QueueFull

log = logging.getLogger(__name__)

DESCRIPTION = """Fast neural style transfer and super-resolution with perceptual-loss networks
(Johnson et al., ECCV 2016).

Send an image as the raw body (`Content-Type: image/png`, `image/jpeg`, ...) or as the multipart field `file`.
Synchronous calls answer with the image; a job that is not finished within `wait` seconds (or any call with
`async=true`) answers 202 with the job and a `Location` to poll. Errors are JSON: `{"detail": "..."}`."""


class EmbeddedWorker:
    """A `worker.runner.Worker` on a daemon thread: warm-up, then the loop until `stop`."""

    def __init__(self, queue: JobQueue, state: ServiceState):
        from worker.runner import Worker  # torch and the models load only where a worker runs
        from worker.settings import WorkerSettings

        worker_id = f"embedded-{socket.gethostname()}-{os.getpid()}"
        self.worker = Worker(queue, WorkerSettings(), worker_id=worker_id)
        # One worker thread: a long tiled job lets the jobs queued behind it run between its tiles (every 0.5 s
        # at most), so a quick request is not held up for minutes (docs/architecture.md, "Long jobs").
        self.worker.interleave_s = 0.5
        self.state = state
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="percept-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run(self.stop_event)
        except Exception as e:
            log.exception("the embedded worker stopped")
            self.state.worker_error = f"{type(e).__name__}: {e}"

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("the embedded worker did not stop within %.0f s", timeout)


def _plain(errors: list[dict[str, Any]]) -> str:
    """FastAPI's validation errors as one sentence: "query parameter 'strength': Input should be <= 1"."""
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ())]
        where = ""
        if loc and loc[0] in ("query", "path", "header", "body", "cookie"):
            name = ".".join(loc[1:])
            where = f"{loc[0]} parameter {name!r}: " if loc[0] != "body" else (f"body field {name!r}: " if name
                                                                               else "body: ")
        parts.append(where + str(err.get("msg", "invalid value")))
    return "invalid request: " + "; ".join(parts) if parts else "invalid request"


def _allowed_methods(request: Request) -> list[str]:
    """Every method the routes of the request's path answer (GET and DELETE on /jobs/{id})."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _install_error_handlers(app: FastAPI, settings: ServiceSettings) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        headers = exc.headers
        if exc.status_code == 405:  # Starlette names the first matching route's methods only (GET of /jobs/{id})
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _plain(list(exc.errors()))}, status_code=422)

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": f"the service is busy ({exc}); try again shortly"}, status_code=503,
                            headers={"Retry-After": str(settings.retry_after_s)})

    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover - redis is a dependency of the service
        return

    @app.exception_handler(RedisError)
    async def queue_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("queue error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": f"the job queue is unavailable: {exc}"}, status_code=503,
                            headers={"Retry-After": str(settings.retry_after_s)})


class QuietJobPolls(logging.Filter):
    """uvicorn's access log: a successful ``GET /jobs/{id}`` poll at debug level, not info. The web page polls
    every second or so while a job runs (356 access lines in 15 minutes of use, issue 16), which buried the
    lines worth reading; `--log-level debug` shows them again. Errors (4xx/5xx) and results stay at info."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not (isinstance(args, tuple) and len(args) == 5 and args[1] == "GET"):
            return True
        path, status = str(args[2]), args[4]
        if not (path.startswith("/jobs/") and not path.split("?", 1)[0].endswith("/result")
                and isinstance(status, int) and status < 400):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_job_polls(logger: logging.Logger | None = None) -> None:
    """Install `QuietJobPolls` on uvicorn's access logger (once)."""
    logger = logger or logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QuietJobPolls) for f in logger.filters):
        logger.addFilter(QuietJobPolls())


DOCS_ASSETS = "/docs-assets"


def _install_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their JavaScript and CSS served from here, not from a CDN, so the API
    docs work offline and behind firewalls (FastAPI's "Self-hosting JavaScript and CSS for docs"). The files come
    from the `fastapi-offline` wheel (Swagger UI 5, which renders OpenAPI 3.1; ReDoc), only its static folder."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} · API docs",
            oauth2_redirect_url=f"{root}{oauth2_redirect}" if oauth2_redirect else None,
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png")

    if oauth2_redirect:
        @app.get(oauth2_redirect, include_in_schema=False)
        async def swagger_ui_redirect() -> HTMLResponse:
            return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} · API reference",
                              redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False)


def create_app(settings: ServiceSettings | None = None, queue: JobQueue | None = None,
               start_worker: bool | None = None) -> FastAPI:
    """The service. `queue`: an existing MemoryQueue/RedisQueue (default: the one `settings` describe, with their
    queue_max, job_ttl_s and max_attempts in either mode); `start_worker`: run a worker thread in this process
    (default: only with an in-memory queue)."""
    settings = settings or ServiceSettings()
    if queue is None:
        queue = open_queue(settings)
    if start_worker is None:
        start_worker = isinstance(queue, MemoryQueue)
    state = ServiceState(settings=settings, queue=queue, metrics=Metrics(queue, settings.worker_stale_s),
                         embedded_worker=start_worker)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Threads blocked on a job's completion; bounded apart from the default pool used by sync handlers.
        state.wait_limiter = anyio.CapacityLimiter(max(32, min(settings.queue_max + 16, 512)))
        quiet_job_polls()  # here: after uvicorn has configured its loggers
        worker = None
        if start_worker:
            worker = EmbeddedWorker(queue, state)
            worker.start()
            log.info("embedded worker %s started (warming up)", worker.worker.id)
        try:
            yield
        finally:
            if worker is not None:
                await anyio.to_thread.run_sync(worker.stop)
                log.info("embedded worker stopped")

    from importlib.metadata import PackageNotFoundError, version

    try:
        app_version = version("percept")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        app_version = "0.0.0"
    app = FastAPI(title="percept", version=app_version, description=DESCRIPTION, lifespan=lifespan,
                  responses={422: {"model": routes.Error}}, docs_url=None, redoc_url=None)
    app.state.service = state
    _install_docs(app)
    _install_error_handlers(app, settings)
    app.include_router(routes.public)
    app.include_router(routes.probes)
    app.include_router(routes.admin)
    app.include_router(page.router)
    routes.document(app, settings)
    app.add_middleware(MetricsMiddleware, metrics=lambda: state.metrics)
    return app
