"""Prometheus metrics of one API process, on its own registry (several apps in one process do not collide).

* ``percept_http_requests_total{method,route,status}`` and ``percept_http_request_duration_seconds{method,route}``:
  the route is the path template (``/jobs/{job_id}``), never the raw path, so job ids do not explode the labels;
  requests that match no route count as ``<unmatched>``.
* ``percept_jobs_submitted_total{model}``, ``percept_jobs_rejected_total{reason}``.
* ``percept_queue_wait_seconds{model}`` and ``percept_job_compute_seconds{model}``: observed once per job, when this
  process learns that the job finished.
* Read from the queue at scrape time: ``percept_queue_depth``, ``percept_queue_up``, ``percept_workers_live`` and,
  per worker (from its heartbeat), ``percept_worker_*``: forward passes, batched jobs, mean batch size
  (batched jobs / forward passes), compute seconds (per model when the worker reports them), jobs done and failed,
  ready, loaded model versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.queue import JobQueue, JobRecord, JobState

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
UNMATCHED = "<unmatched>"


class QueueCollector(Collector):
    """Queue depth and the workers' counters, read from the queue when Prometheus scrapes."""

    def __init__(self, queue: JobQueue, stale_s: float):
        self.queue, self.stale_s = queue, stale_s

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("percept_queue_up", "1 when the job queue answers")
        depth = GaugeMetricFamily("percept_queue_depth", "jobs queued or running")
        try:
            depth.add_metric([], float(self.queue.depth()))
            workers = self.queue.workers(self.stale_s)
            up.add_metric([], 1.0)
        except Exception as e:  # noqa: BLE001 - a scrape must not fail because Redis is down
            log.warning("metrics: queue unavailable: %s", e)
            up.add_metric([], 0.0)
            yield up
            return
        yield up
        yield depth
        yield from worker_metrics(workers)


def worker_metrics(workers: list[dict[str, Any]]) -> Iterable[Metric]:
    live = GaugeMetricFamily("percept_workers_live", "workers whose heartbeat is recent")
    live.add_metric([], float(len(workers)))
    yield live
    counters = {
        "forward_passes": ("percept_worker_forward_passes", "forward passes (batches) run"),
        "batched_jobs": ("percept_worker_batched_jobs", "jobs that went through a forward pass"),
        "jobs_done": ("percept_worker_jobs_done", "jobs completed"),
        "jobs_failed": ("percept_worker_jobs_failed", "jobs failed for good"),
    }
    for key, (name, doc) in counters.items():
        family = CounterMetricFamily(name, doc, labels=["worker"])
        for w in workers:
            family.add_metric([w["id"]], float(w.get(key) or 0))
        yield family
    compute = CounterMetricFamily("percept_worker_compute_seconds", "time spent in forward passes",
                                  labels=["worker"])
    batch = GaugeMetricFamily("percept_worker_batch_size_mean", "batched jobs / forward passes", labels=["worker"])
    ready = GaugeMetricFamily("percept_worker_ready", "1 once the worker has loaded and warmed up its models",
                              labels=["worker", "device"])
    backend = GaugeMetricFamily("percept_worker_backend", "1 for the inference backend/precision the worker chose "
                                "(PERCEPT_BACKEND, PERCEPT_PRECISION)", labels=["worker", "backend"])
    loaded = GaugeMetricFamily("percept_worker_model_version", "model versions loaded on the worker",
                               labels=["worker", "model"])
    per_model = CounterMetricFamily("percept_worker_model_compute_seconds", "forward pass time per model",
                                    labels=["worker", "model"])
    for w in workers:
        wid = w["id"]
        compute.add_metric([wid], float(w.get("compute_ms") or 0) / 1000)
        passes = float(w.get("forward_passes") or 0)
        if passes:
            batch.add_metric([wid], float(w.get("batched_jobs") or 0) / passes)
        ready.add_metric([wid, str(w.get("device") or "")], 1.0 if w.get("ready") else 0.0)
        if w.get("backend"):
            backend.add_metric([wid, str(w["backend"])], 1.0)
        for model, version in (w.get("models") or {}).items():
            loaded.add_metric([wid, model], float(version))
        # Reported by workers that keep per-model timings ({"model": ms}); absent otherwise.
        for model, ms in (w.get("compute_ms_by_model") or {}).items():
            per_model.add_metric([wid, model], float(ms) / 1000)
    yield from (compute, batch, ready, backend, loaded, per_model)


class Metrics:
    """The API process's metrics and the registry /metrics renders."""

    def __init__(self, queue: JobQueue, worker_stale_s: float = 15.0):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("percept_http_requests", "HTTP requests answered", ["method", "route", "status"],
                                registry=r)
        self.latency = Histogram("percept_http_request_duration_seconds", "HTTP request latency",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=r)
        self.submitted = Counter("percept_jobs_submitted", "jobs enqueued by this process", ["model"], registry=r)
        self.rejected = Counter("percept_jobs_rejected", "requests refused before enqueueing", ["reason"],
                                registry=r)
        self.queue_wait = Histogram("percept_queue_wait_seconds", "time jobs spent queued before a worker took them",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("percept_job_compute_seconds", "forward pass time of the batch holding a job",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(QueueCollector(queue, worker_stale_s))
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def observe_job(self, rec: JobRecord) -> None:
        """Record a finished job's queue wait and compute time, once per job id."""
        if rec.status is not JobState.DONE:
            return
        with self._lock:
            if rec.id in self._seen:
                return
            self._seen[rec.id] = None
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        if rec.started_at:
            self.queue_wait.labels(rec.model).observe(max(0.0, rec.started_at - rec.created_at))
        if rec.compute_ms is not None:
            self.compute.labels(rec.model).observe(rec.compute_ms / 1000)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: counts and times every HTTP request by route template and status.

    It is also the last line of defence: an exception nothing else handled becomes a JSON 500 (never a bare
    text page), logged with its traceback.
    """

    def __init__(self, app: Callable[..., Any], metrics: Callable[[], Metrics | None]):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            status["code"] = 500
            if not status["started"]:
                body = b'{"detail":"internal error: the request could not be processed"}'
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = scope.get("route")
                template = getattr(route, "path", None) or UNMATCHED
                metrics.observe_request(scope.get("method", ""), template, status["code"],
                                        time.perf_counter() - start)
