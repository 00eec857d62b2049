"""Load test of the HTTP service: throughput, latency and batching of ``POST /stylize`` (or ``/upscale``).

Measures, over real HTTP on the loopback interface, for each number of concurrent clients (default 1, 4, 16):

- requests/s: successful answers / wall time of the level (first request sent to last answer received);
- client-side latency p50 / p95 / p99 and mean (ms) of the successful requests;
- the mean batch size a request ran in (``X-Batch-Size``; request-weighted, so a batch of 8 counts 8 times);
- model compute per request: the batch's forward pass (``X-Compute-Ms``) divided by its batch size, mean;
- mean queue wait (``X-Queue-Wait-Ms``: submitted until a worker took the job);
- overhead beyond the model: latency - queue wait - the batch's compute time, mean (HTTP, upload validation,
  queue round trips, the batcher's wait for more jobs, PNG decode/encode, result transfer);
- errors by kind (HTTP status, 202 = not finished within the server's wait, timeout, connection error).

Every level sends the same number of requests (``--requests``), shared by its clients (threads, one
``httpx.Client`` each), all the same size (random-noise PNGs made with Pillow, a few different ones cycled) so
that the worker can batch them. Before the levels, ``--warmup`` requests are sent at 4 clients and not counted.

By default the service is started here as subprocesses on a free 127.0.0.1 port, once per mode:

- ``embedded``: ``percept serve --port P`` (the API and its in-process worker thread, no Redis);
- ``redis``: a private ``redis-server`` on a free port (no persistence, stopped after), then ``percept worker
  --redis-url ...`` and ``percept serve --redis-url ... --port P``; with ``--redis-url`` that database instead,
  flushed before and after.

The service reads its settings from the environment as usual (``PERCEPT_MAX_BATCH_SIZE``,
``PERCEPT_MAX_BATCH_DELAY_MS``, ...; ``--max-batch-size`` / ``--max-batch-delay-ms`` set them for the
subprocesses); ``PERCEPT_WARMUP_SIZES`` defaults to ``--size`` here, and both run with ``--log-level warning`` (no
access log). The clients run on the same machine as the service and compete with it for the CPU: on a small CPU
the numbers are noisy and load-dependent (the load average is printed before and after).
With ``--url`` an already running service is measured instead (loopback addresses only; nothing is started or
flushed, and the settings printed are only this process's environment).

Run from the repository root::

    python -m bench.load [--mode embedded|redis|both] [--requests N] [--concurrency 1,4,16] [--size 128]
                         [--endpoint stylize|upscale] [--url URL] [--json PATH]

The defaults (64 requests per level, 128² images, the ``muse`` style) finish ``--mode both`` in a few minutes on
a 2-core CPU (``/upscale`` x4 is about 10x slower per image there: pass ``--requests 16``). Everything is bounded:
``--timeout`` per request, ``--ready-timeout`` for the service to start, ``--time-limit`` for the whole run (levels
past it are skipped, a level stops sending at it); the subprocesses are stopped on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import ipaddress
import itertools
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WARMUP_CLIENTS = 4


# ---------------------------------------------------------------------------------------------------------------
# Requests


@dataclass
class Sample:
    """One request as the client saw it."""

    ok: bool
    latency_ms: float
    error: str | None = None
    batch: int | None = None
    compute_ms: float | None = None  # the whole batch's forward pass
    queue_ms: float | None = None


def _float(headers: httpx.Headers, name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, ValueError):
        return None


def send(client: httpx.Client, path: str, params: dict[str, Any], body: bytes) -> Sample:
    start = time.perf_counter()
    try:
        r = client.post(path, params=params, content=body, headers={"Content-Type": "image/png"})
    except httpx.TimeoutException:
        return Sample(False, 1000 * (time.perf_counter() - start), "timeout")
    except httpx.HTTPError as e:
        return Sample(False, 1000 * (time.perf_counter() - start), type(e).__name__)
    latency = 1000 * (time.perf_counter() - start)
    if r.status_code != 200:
        return Sample(False, latency, f"HTTP {r.status_code}")
    if not r.content.startswith(PNG_MAGIC):
        return Sample(False, latency, "not a PNG")
    batch = _float(r.headers, "x-batch-size")
    return Sample(True, latency, batch=int(batch) if batch else None, compute_ms=_float(r.headers, "x-compute-ms"),
                  queue_ms=_float(r.headers, "x-queue-wait-ms"))


@dataclass
class Level:
    mode: str
    clients: int
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    note: str = ""


def run_level(url: str, path: str, params: dict[str, Any], bodies: list[bytes], clients: int, requests: int,
              timeout: float, deadline: float, headers: dict[str, str]) -> tuple[list[Sample], float]:
    """`requests` requests shared by `clients` threads; none is started after `deadline` (time.monotonic)."""
    counter, lock, samples = itertools.count(), threading.Lock(), []
    go = threading.Event()

    def take() -> int | None:
        with lock:
            i = next(counter)
        return i if i < requests and time.monotonic() < deadline else None

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=timeout, headers=headers) as client:
            go.wait()
            while (i := take()) is not None:
                sample = send(client, path, params, bodies[i % len(bodies)])
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=loop, daemon=True, name=f"client-{k}") for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let every client build its httpx.Client before the clock starts
    start = time.perf_counter()
    go.set()
    for t in threads:  # each request is bounded by `timeout`, and no new one starts past `deadline`
        t.join(max(0.0, deadline - time.monotonic()) + timeout + 10)
    wall = time.perf_counter() - start
    with lock:
        return list(samples), wall


def noise_pngs(size: int, count: int = 8) -> list[bytes]:
    out = []
    for seed in range(count):
        rng = random.Random(seed)
        img = Image.frombytes("RGB", (size, size), rng.randbytes(size * size * 3))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------------------------
# The service under test


def check_loopback(url: str, what: str) -> None:
    host = httpx.URL(url).host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host in LOOPBACK_NAMES
    if not loopback:
        raise SystemExit(f"{what} {url!r}: only loopback addresses (127.0.0.1, localhost, ::1) are allowed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A throwaway `redis-server` on a free loopback port (no RDB, no AOF); its URL. Nobody else's data is near."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server), or pass --redis-url")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="percept-load-redis-") as workdir:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                 "no", "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            end = time.monotonic() + 10
            while redis_server_version(url).startswith("unreachable"):
                if time.monotonic() > end or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {port}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def flush_redis(redis_url: str) -> None:
    import redis

    conn = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        conn.flushdb()
    finally:
        conn.close()


def redis_server_version(redis_url: str) -> str:
    import redis

    conn = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    try:
        return str(conn.info("server").get("redis_version", "?"))
    except redis.RedisError as e:
        return f"unreachable ({e})"
    finally:
        conn.close()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(url: str, procs: list[tuple[subprocess.Popen[bytes], Path]], deadline: float) -> float:
    """Poll /readyz until it answers 200; seconds taken. Fails if a process exits or the deadline passes."""
    start, detail = time.perf_counter(), "no answer yet"
    with httpx.Client(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            for proc, log in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{log.stem} exited with {proc.returncode}; log tail:\n{_tail(log)}")
            try:
                r = client.get("/readyz")
                if r.status_code == 200:
                    return time.perf_counter() - start
                detail = r.json().get("detail") or r.text
            except (httpx.HTTPError, ValueError) as e:
                detail = type(e).__name__
            time.sleep(0.5)
    logs = "\n".join(f"--- {log.name}:\n{_tail(log)}" for _, log in procs)
    raise RuntimeError(f"the service was not ready in time (last /readyz: {detail})\n{logs}")


def stop(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """SIGTERM every process (API first), then wait; SIGKILL what is still running after 30 s."""
    for proc, _ in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
    end = time.monotonic() + 30
    for proc, _ in procs:
        try:
            proc.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def started_service(mode: str, redis_url: str, env: dict[str, str], deadline: float,
                    ready_timeout: float, flush: bool = True) -> Iterator[tuple[str, float]]:
    """Start the service (and in Redis mode its worker) on a free port; yield (base URL, seconds to ready)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cli = [sys.executable, "-m", "percept.cli"]
    serve = [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    commands = []
    if mode == "redis":
        commands.append(("worker", [*cli, "worker", "--redis-url", redis_url, "--log-level", "warning"]))
        serve += ["--redis-url", redis_url]
    commands.insert(0, ("api", serve))  # stopped first
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    with tempfile.TemporaryDirectory(prefix="percept-load-") as logdir:
        try:
            if mode == "redis" and flush:
                flush_redis(redis_url)
            for name, cmd in reversed(commands):  # the worker first: it takes longest to warm up
                log = Path(logdir) / f"{mode}-{name}.log"
                with log.open("wb") as out:
                    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
                procs.insert(0, (proc, log))
            ready_s = wait_ready(url, procs, min(deadline, time.monotonic() + ready_timeout))
            yield url, ready_s
            for proc, log in procs:
                if proc.poll() is not None:
                    print(f"warning: {log.stem} exited with {proc.returncode} during the run:\n{_tail(log)}",
                          file=sys.stderr)
        finally:
            stop(procs)
            if mode == "redis" and flush:
                try:
                    flush_redis(redis_url)
                except Exception as e:  # noqa: BLE001 - reported, the run's results still stand
                    print(f"warning: could not flush {redis_url}: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------
# Report


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def summarize(level: Level) -> dict[str, Any]:
    ok = [s for s in level.samples if s.ok]
    lat = [s.latency_ms for s in ok]
    timed = [s for s in ok if s.batch and s.compute_ms is not None and s.queue_ms is not None]
    errors = Counter(s.error for s in level.samples if not s.ok)
    return {
        "mode": level.mode, "clients": level.clients, "sent": len(level.samples), "ok": len(ok),
        "errors": dict(errors), "wall_s": round(level.wall_s, 3),
        "req_per_s": len(ok) / level.wall_s if level.wall_s > 0 else math.nan,
        "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
        "mean_ms": mean(lat),
        "batch_mean": mean([s.batch for s in ok if s.batch]),
        "compute_per_req_ms": mean([s.compute_ms / s.batch for s in timed]),
        "queue_ms": mean([s.queue_ms for s in timed]),
        "overhead_ms": mean([s.latency_ms - s.queue_ms - s.compute_ms for s in timed]),
        "note": level.note,
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = ["mode", "clients", "sent", "ok", "req/s", "p50", "p95", "p99", "mean", "batch", "compute/req", "queue",
            "overhead", "errors"]

    def num(x: float, digits: int = 0) -> str:
        return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"

    cells = []
    for r in rows:
        errors = ", ".join(f"{k} x{v}" for k, v in sorted(r["errors"].items())) or "0"
        if r["note"]:
            errors = f"{errors}; {r['note']}" if r["errors"] else r["note"]
        cells.append([r["mode"], str(r["clients"]), str(r["sent"]), str(r["ok"]), num(r["req_per_s"], 2),
                      num(r["p50_ms"]), num(r["p95_ms"]), num(r["p99_ms"]), num(r["mean_ms"]), num(r["batch_mean"], 2),
                      num(r["compute_per_req_ms"], 1), num(r["queue_ms"], 1), num(r["overhead_ms"], 1), errors])
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    left = {0, len(head) - 1}
    lines = ["  ".join(c[i].ljust(w) if i in left else c[i].rjust(w) for i, w in enumerate(widths))
             for c in [head, *cells]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(f"{p} {_version(p)}" for p in ("percept", "torch", "fastapi", "uvicorn", "httpx", "redis"))
    info: dict[str, Any] = {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": f"{cpu}, {os.cpu_count()} cores (shared by the service and these clients)",
        "python": platform.python_version(),
        "versions": versions,
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if args.url:
        info["service"] = f"{args.url} (already running; its settings are unknown here)"
    else:
        from service.settings import ServiceSettings
        from worker.settings import WorkerSettings

        saved = os.environ.copy()
        try:  # the subprocesses' environment, as their settings classes read it
            os.environ.clear()
            os.environ.update(env)
            w, s = WorkerSettings(), ServiceSettings()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        info["worker"] = (f"max_batch_size {w.max_batch_size}, max_batch_delay_ms {w.max_batch_delay_ms}, device "
                          f"{w.device}, warmup_sizes {w.warmup_sizes}, torch threads "
                          f"{env.get('OMP_NUM_THREADS', 'default')}")
        info["api"] = f"default_wait_s {s.default_wait_s:g}, queue_max {s.queue_max}, uvicorn 1 process"
        if args.mode in ("redis", "both"):
            info["redis"] = (f"{args.redis_url} (server {redis_server_version(args.redis_url)})" if args.redis_url
                             else "a private redis-server on a free port") + ", one worker process"
    query = f"style={args.style}" if args.endpoint == "stylize" else "factor=4"
    info["workload"] = (f"POST /{args.endpoint}?{query}, {args.size}x{args.size} random-noise PNG, {args.requests} "
                        f"requests per level (+{args.warmup} warm-up), request timeout {args.timeout:g} s, "
                        f"time limit {args.time_limit:g} s")
    return info


# ---------------------------------------------------------------------------------------------------------------
# Main


def measure(mode: str, url: str, args: argparse.Namespace, bodies: list[bytes], deadline: float,
            headers: dict[str, str]) -> list[Level]:
    path = f"/{args.endpoint}"
    params = {"style": args.style} if args.endpoint == "stylize" else {"factor": 4}
    if args.warmup:
        warm, _ = run_level(url, path, params, bodies, WARMUP_CLIENTS, args.warmup, args.timeout, deadline, headers)
        if not any(s.ok for s in warm):
            errors = Counter(s.error for s in warm)
            raise RuntimeError(f"every warm-up request failed: {dict(errors)}")
    levels = []
    for clients in args.concurrency:
        level = Level(mode, clients)
        if time.monotonic() >= deadline:
            level.note = "skipped: time limit"
        else:
            level.samples, level.wall_s = run_level(url, path, params, bodies, clients, args.requests, args.timeout,
                                                    deadline, headers)
            if len(level.samples) < args.requests:
                level.note = f"time limit: {len(level.samples)} of {args.requests} sent"
        print(f"  {mode}: {clients} client(s) done ({len(level.samples)} requests in {level.wall_s:.1f} s)",
              file=sys.stderr, flush=True)
        levels.append(level)
    return levels


def parse_concurrency(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 or v > 256 for v in values):
        raise argparse.ArgumentTypeError("each concurrency must be between 1 and 256")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["embedded", "redis", "both"], default="both",
                        help="service(s) to start and measure (ignored with --url)")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level (default 64)")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[1, 4, 16],
                        help="comma-separated client counts (default 1,4,16)")
    parser.add_argument("--size", type=int, default=128, help="side of the square input images (default 128)")
    parser.add_argument("--endpoint", choices=["stylize", "upscale"], default="stylize")
    parser.add_argument("--style", default="muse", help="style model for /stylize (default muse)")
    parser.add_argument("--url", help="measure this already running service (loopback only) instead")
    parser.add_argument("--redis-url", help="Redis database for --mode redis, flushed before and after (default: a "
                                            "private redis-server on a free port, stopped after)")
    parser.add_argument("--max-batch-size", type=int, help="PERCEPT_MAX_BATCH_SIZE for the started service")
    parser.add_argument("--max-batch-delay-ms", type=int, help="PERCEPT_MAX_BATCH_DELAY_MS for the started service")
    parser.add_argument("--warmup", type=int, default=8, help="uncounted requests before the levels (default 8)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    parser.add_argument("--ready-timeout", type=float, default=300.0,
                        help="seconds for a started service to become ready (default 300)")
    parser.add_argument("--time-limit", type=float, default=900.0,
                        help="seconds for the whole run; later levels are skipped (default 900)")
    parser.add_argument("--api-key", default=os.environ.get("PERCEPT_PUBLIC_API_KEY"),
                        help="sent as X-API-Key (default: PERCEPT_PUBLIC_API_KEY)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.size < 8 or args.warmup < 0 or args.timeout <= 0 or args.time_limit <= 0:
        parser.error("--requests >= 1, --size >= 8, --warmup >= 0, --timeout and --time-limit > 0")
    if args.url:
        check_loopback(args.url, "--url")
    elif args.mode in ("redis", "both") and args.redis_url:
        check_loopback(args.redis_url, "--redis-url")

    # SIGTERM: unwind like Ctrl-C, so that the `finally` blocks stop the subprocesses.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    deadline = time.monotonic() + args.time_limit
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("PERCEPT_WARMUP_SIZES", str(args.size))
    if args.max_batch_size is not None:
        env["PERCEPT_MAX_BATCH_SIZE"] = str(args.max_batch_size)
    if args.max_batch_delay_ms is not None:
        env["PERCEPT_MAX_BATCH_DELAY_MS"] = str(args.max_batch_delay_ms)
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    bodies = noise_pngs(args.size)

    info = machine(args, env)
    print(f"percept load test ({args.endpoint})")
    for k, v in info.items():
        print(f"  {k:13} {v}")
    print(flush=True)

    levels: list[Level] = []
    failures: list[str] = []
    modes = ["external"] if args.url else (["embedded", "redis"] if args.mode == "both" else [args.mode])
    for mode in modes:
        if time.monotonic() >= deadline:
            failures.append(f"{mode}: skipped (time limit)")
            continue
        try:
            if args.url:
                levels += measure(mode, args.url.rstrip("/"), args, bodies, deadline, headers)
                continue
            with contextlib.ExitStack() as stack:
                redis_url = args.redis_url or (stack.enter_context(private_redis()) if mode == "redis" else "")
                url, ready_s = stack.enter_context(started_service(mode, redis_url, env, deadline, args.ready_timeout,
                                                                   flush=bool(args.redis_url)))
                print(f"  {mode}: ready after {ready_s:.1f} s on {url}", file=sys.stderr, flush=True)
                levels += measure(mode, url, args, bodies, deadline, headers)
        except Exception as e:  # noqa: BLE001 - one mode failing should not hide the other's results
            failures.append(f"{mode}: {type(e).__name__}: {e}")
            print(f"  {mode}: FAILED: {e}", file=sys.stderr, flush=True)

    rows = [summarize(level) for level in levels]
    if rows:
        print(table(rows), flush=True)
        print("\nms; latency percentiles and mean are client-side, over successful requests. batch: mean X-Batch-Size "
              "per request; compute/req: X-Compute-Ms / X-Batch-Size;\nqueue: X-Queue-Wait-Ms; overhead: latency - "
              "queue - X-Compute-Ms (the whole batch's forward pass), mean.")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for failure in failures:
        print(f"FAILED {failure}")
    if args.json:
        clean = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]
        args.json.write_text(json.dumps({"machine": info, "results": clean, "failures": failures}, indent=2) + "\n")
        print(f"wrote {args.json}")
    errors = sum(r["sent"] - r["ok"] for r in rows)
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
