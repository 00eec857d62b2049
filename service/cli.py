"""`percept serve` (the HTTP API, embedded worker without Redis) and `percept worker` (a Redis-fed worker).

Options left out fall back to the environment (``PERCEPT_*``, ``REDIS_URL``; see service/settings.py and
worker/settings.py). The web stack is imported only when a command runs, so ``percept --help`` stays quick.
"""

from __future__ import annotations

import logging
from typing import Any

import typer


def _logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# Bytes of a request's line and headers at most (h11's incomplete-event limit): larger ones get 431/400 at once
# rather than being buffered whole (a 64 MB header used to be accepted).
MAX_HEADER_BYTES = 64 * 1024


def _settings(cls: Any) -> Any:
    """`cls()` from the environment; an invalid value exits (code 2) with one readable line per problem."""
    from pydantic import ValidationError

    try:
        return cls()
    except ValidationError as e:
        for err in e.errors():
            name = "PERCEPT_" + "_".join(str(p) for p in err["loc"]).upper() if err["loc"] else cls.__name__
            msg = str(err["msg"]).removeprefix("Value error, ")
            if not msg.startswith(name):
                msg = f"{name}={err.get('input')!r}: {msg}"
            typer.echo(f"percept: invalid configuration: {msg}", err=True)
        raise typer.Exit(2) from None


def _override(settings: Any, **values: Any) -> Any:
    """Settings with the options that were given (not None) replacing the environment's values.

    model_copy sets fields by name (redis_url's environment aliases make it init-only by alias); typer has
    already checked the options' types and ranges."""
    return settings.model_copy(update={k: v for k, v in values.items() if v is not None})


def serve(
    host: str = typer.Option(None, "--host", help="Interface to bind (default: PERCEPT_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, "--port", min=0, max=65535, help="Port (default: PERCEPT_PORT or 8000)."),
    redis_url: str = typer.Option(None, "--redis-url", help="Redis queue (default: REDIS_URL). Without one the "
                                                             "service runs embedded: an in-process worker thread."),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning | error"),
) -> None:
    """Run the HTTP API (uvicorn)."""
    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings
    from worker.settings import WorkerSettings

    _logging(log_level)
    settings = _override(_settings(ServiceSettings), host=host, port=port, redis_url=redis_url or None)
    if settings.embedded:
        _settings(WorkerSettings)  # the embedded worker's: a bad value is reported now, not as a start-up crash
    mode = f"Redis queue at {settings.redis_url}" if settings.redis_url else "embedded worker"
    typer.echo(f"percept API on http://{settings.host}:{settings.port} ({mode})", err=True)
    # h11 (not httptools) so that the header size limit applies.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=log_level.lower(),
                http="h11", h11_max_incomplete_event_size=MAX_HEADER_BYTES)


def worker(
    redis_url: str = typer.Option(None, "--redis-url", help="Redis queue (default: REDIS_URL)."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N (default: PERCEPT_DEVICE, auto)."),
    max_batch_size: int = typer.Option(None, "--max-batch-size", min=1, max=256,
                                       help="Jobs per forward pass at most (default: PERCEPT_MAX_BATCH_SIZE, 8)."),
    max_batch_delay_ms: int = typer.Option(None, "--max-batch-delay-ms", min=0, max=10_000,
                                           help="Wait at most this long for a batch to fill (default 10)."),
    log_level: str = typer.Option("info", "--log-level", help="debug | info | warning | error"),
) -> None:
    """Run an inference worker on the Redis queue until SIGTERM/SIGINT."""
    from worker.runner import serve_forever
    from worker.settings import WorkerSettings

    _logging(log_level)
    settings = _override(_settings(WorkerSettings), redis_url=redis_url or None, device=device,
                         max_batch_size=max_batch_size, max_batch_delay_ms=max_batch_delay_ms)
    serve_forever(settings)
