"""The inference worker: resident models, dynamic batches, post-processing, results back to the queue.

One `Worker` serves every model in the store. Models are loaded and warmed up at start and stay on the device
(CUDA when present); a newly published default version is picked up within `reload_interval_s` without a
restart; past `memory_budget_mb` the least recently used model is evicted. On CUDA, inference runs in fp16 with
an fp32 retry when the output holds NaN/Inf.

Liveness is separate from the work: a keep-alive thread (`start_keepalive`) sends the heartbeat every
`heartbeat_s` and renews the lease of every job the worker holds every `visibility_timeout_s / 3`, however long a
forward pass takes (torch releases the GIL while it computes). So a slow job is never taken from a live worker,
/readyz and `percept_workers_live` count a busy worker (the heartbeat reports `busy` and its `jobs` apart), and a
worker that died is noticed (its jobs reclaimed) within about the visibility timeout.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imaging import codec, tensors
from imaging.tensors import Decoded
from imaging.video import sniff as sniff_video
from model_store import backends, inference, pipeline, store
from model_store.networks import TransformNet
from worker.batcher import collect
from worker.open_queue import open_queue
from worker.queue import JobCancelled, JobQueue, Reserved
from worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class ModelCache:
    """Loaded models by name, least recently used first, within a byte budget."""

    def __init__(self, device: torch.device, budget_bytes: float, half: bool):
        self.device, self.budget, self.half = device, budget_bytes, half and device.type == "cuda"
        self.models: OrderedDict[str, tuple[TransformNet, store.ModelVersion]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, name: str) -> tuple[TransformNet, store.ModelVersion]:
        with self.lock:
            if name in self.models:
                self.models.move_to_end(name)
                return self.models[name]
        net, entry = store.load(name, device=self.device)
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        with self.lock:
            self.models[name] = (net, entry)
            while len(self.models) > 1 and self.used_bytes() > self.budget:
                evicted, _ = self.models.popitem(last=False)
                log.info("evicted %s (memory budget)", evicted)
        return net, entry

    def used_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for net, _ in self.models.values() for p in net.parameters())

    def refresh(self) -> list[str]:
        """Reload models whose default version changed since they were loaded."""
        reloaded = []
        for name, (_, entry) in list(self.models.items()):
            try:
                if store.default_version(name) != entry.version:
                    with self.lock:
                        self.models.pop(name, None)
                    self.get(name)
                    reloaded.append(name)
            except store.ModelStoreError as e:
                log.warning("cannot refresh %s: %s", name, e)
        return reloaded


@dataclass
class Item:
    """A decoded job ready for the network."""

    job: Reserved
    image: Decoded
    tiled: bool  # its output passes the pixel budget: it runs alone, in tiles

    @property
    def key(self) -> tuple[str, int, int, bool, float | None, float]:
        # Jobs share a forward pass only when they have the same model, size and dials and none needs tiling.
        p = self.job.params
        return self.job.model, self.image.height, self.image.width, self.tiled, p.detail, p.stroke


class Worker:
    def __init__(self, queue: JobQueue, settings: WorkerSettings | None = None,
                 worker_id: str | None = None):
        self.queue = queue
        self.settings = settings or WorkerSettings()
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident() % 10000}"
        self.device = inference.resolve_device(self.settings.device)
        self.models = ModelCache(self.device, self.settings.memory_budget_mb * 2**20, self.settings.half)
        # The engine and precision of untiled passes (and SR tiles); style tiles run layer by layer in torch.
        self.backend = backends.choose(self.settings.backend, self.settings.precision, self.device,
                                       self.settings.half)
        # One per process and choice (thread-safe: an infer request per call): workers of one process share the
        # compiled models, and no OpenVINO Core is made and dropped per worker (the test suite makes hundreds;
        # a Core destroyed while another computed was the suspect of a rare segmentation fault).
        self._backend_forward = backends.shared_forward(self.backend)
        log.info("inference backend %s (%s)", self.backend.label, self.backend.reason)
        self._factors: dict[str, int] = {}  # model name -> upscaling factor, for the batch key
        self.counters = {"forward_passes": 0, "jobs_done": 0, "jobs_failed": 0, "batched_jobs": 0,
                         "compute_ms": 0.0}
        self.ready = False
        self._last_reload = self._last_reclaim = self._last_heartbeat = 0.0
        self._held: dict[str, Reserved] = {}  # jobs taken and not yet finished, by job id (their leases renewed)
        self._held_lock = threading.Lock()
        self._keepalive: threading.Thread | None = None
        # Interleaving (the embedded worker sets it): while a tiled job runs, every `interleave_s` seconds the
        # worker takes the jobs queued behind it between two tiles and runs the small ones there, so a long job
        # does not hold up short ones (issue 16: a quick stylize waited 15 s behind an x8 upscale). Tiled jobs
        # taken that way wait (held, leases renewed) and run right after the current one: their FIFO place.
        self.interleave_s: float | None = None
        self._interleaving = False
        self._last_interleave = 0.0
        self._deferred: list[Item] = []
        codecs = self.settings.codec_threads
        self._codec_pool = ThreadPoolExecutor(codecs, thread_name_prefix="percept-codec") if codecs > 1 else None

    # Start-up -------------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Load every model in the store and run each once per warm-up size (allocations, kernel choice)."""
        sizes = [int(s) for s in self.settings.warmup_sizes.split(",") if s.strip()]
        for name in store.list_models():
            net, entry = self.models.get(name)
            for size in sizes:
                side = max(8, size // net.config.factor)
                self._forward(net, torch.full((1, 3, side, side), 128.0))
            log.info("loaded %s v%d on %s", name, entry.version, self.device)
        self.ready = True
        self.heartbeat(force=True)

    # The loop ---------------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        self.start_keepalive(stop)
        if not self.ready:
            self.warm_up()
        last_error = None
        while not stop.is_set():
            try:
                self.step(first_wait_ms=500)
            except Exception as e:  # a broken batch must not take the worker down; its jobs were failed already
                error = f"{type(e).__name__}: {e}"
                if _is_queue_error(e):  # Redis down or restarting: one line per outage, not a traceback a cycle
                    if error != last_error:
                        log.warning("the job queue is unavailable (retrying every 0.5 s): %s", error)
                else:
                    log.exception("worker step failed")
                last_error = error
                stop.wait(0.5)
            else:
                if last_error is not None:
                    log.info("the job queue answers again")
                    last_error = None

    # Liveness -------------------------------------------------------------------------------------------------
    def start_keepalive(self, stop: threading.Event) -> threading.Thread:
        """Start (once) the thread that sends the heartbeat and renews the leases of the held jobs until `stop`."""
        if self._keepalive is None or not self._keepalive.is_alive():
            self._keepalive = threading.Thread(target=self._keepalive_loop, args=(stop,), daemon=True,
                                               name=f"percept-keepalive-{self.id}")
            self._keepalive.start()
        return self._keepalive

    def _keepalive_loop(self, stop: threading.Event) -> None:
        renew_every = max(0.05, self.settings.visibility_timeout_s / 3)
        next_beat = next_renew = time.monotonic()
        last_error = None
        while not stop.is_set():
            now = time.monotonic()
            try:
                if now >= next_renew:
                    next_renew = now + renew_every
                    self.renew_leases()
                if now >= next_beat:
                    next_beat = now + self.settings.heartbeat_s
                    self.heartbeat(force=True)
                last_error = None
            except Exception as e:  # noqa: BLE001 - Redis down: try again at the next tick
                if str(e) != last_error:
                    log.warning("heartbeat or lease renewal failed: %s", e)
                last_error = str(e)
            stop.wait(max(0.01, min(next_beat, next_renew) - time.monotonic()))

    def renew_leases(self) -> int:
        """Reset the visibility timeout of every job this worker holds (see `JobQueue.renew`)."""
        with self._held_lock:
            ids = [j.stream_id for j in self._held.values() if j.stream_id]
        return self.queue.renew(self.id, ids) if ids else 0

    def _hold(self, jobs: list[Reserved]) -> list[Reserved]:
        with self._held_lock:
            self._held.update((j.id, j) for j in jobs)
        return jobs

    def _release(self, jobs: list[Reserved]) -> None:
        with self._held_lock:
            for j in jobs:
                if self._held.get(j.id) is j:
                    del self._held[j.id]

    def step(self, first_wait_ms: int = 1000) -> int:
        """One cycle: housekeeping, one round of batches. Returns the number of jobs processed."""
        now = time.monotonic()
        if now - self._last_reload > self.settings.reload_interval_s:
            self._last_reload = now
            for name in self.models.refresh():
                log.info("serving new version of %s", name)
        stale: list[Reserved] = []
        if now - self._last_reclaim > max(1.0, self.settings.visibility_timeout_s / 4):
            self._last_reclaim = now
            stale = self.queue.reclaim(self.id, int(self.settings.visibility_timeout_s * 1000))
        self.heartbeat()
        taken: list[Reserved] = self._hold(list(stale))
        pending = list(stale)

        def reserve(count: int, block_ms: int) -> list[Reserved]:
            if pending:
                jobs = pending[:count]
                del pending[:count]
                return jobs
            jobs = self._hold(self.queue.reserve(self.id, count, block_ms))
            taken.extend(jobs)
            return jobs

        try:
            batches = collect(reserve, self._prepare, lambda item: item.key, self.settings.max_batch_size,
                              self.settings.max_batch_delay_ms / 1000, first_wait_ms, pmap=self._prepare_many)
            for batch in batches:
                # Tiled jobs one at a time: each reports its own progress and stops alone when cancelled.
                for part in ([[item] for item in batch] if batch[0].tiled else [batch]):
                    self._run_batch(part)
                    self._run_deferred()
        finally:
            self._release(taken)
        if batches:
            self.heartbeat(force=True)  # fresh counters for /metrics and /readyz as soon as work is done
        return sum(len(b) for b in batches)

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_heartbeat > self.settings.heartbeat_s:
            self._last_heartbeat = now
            loaded = {name: entry.version for name, (_, entry) in list(self.models.models.items())}
            with self._held_lock:
                jobs = sorted(self._held)
            # `ready`: alive with its models loaded (it takes work); `busy`/`jobs`: what it computes now.
            self.queue.heartbeat(self.id, {"ready": self.ready, "busy": bool(jobs), "jobs": jobs,
                                           "device": str(self.device), "backend": self.backend.label,
                                           "models": loaded, **dict(self.counters)})

    # One batch --------------------------------------------------------------------------------------------
    def _prepare(self, job: Reserved) -> Item | None:
        if sniff_video(job.data[:16]):  # a clip runs here, alone, to the end (its frames batch among themselves)
            self._run_video(job)
            return None
        try:
            image = tensors.decode(job.data, max_pixels=job.params.max_pixels or 1 << 62)
            image = pipeline.prepare(image, job.params)
            factor = self._factor(job.model)
            return Item(job, image, pipeline.needs_tiling(image, factor, self.settings.tile_pixels))
        except codec.ImageError as e:
            self._fail(job, e.message, retry=False, status=e.status)
        except store.ModelStoreError as e:
            self._fail(job, str(e), retry=False, status=503)
        except Exception as e:  # noqa: BLE001 - reported on the job, never silently dropped
            self._fail(job, f"could not read the image: {e}", retry=False, status=400)
        return None

    def _factor(self, model: str) -> int:
        if model not in self._factors:
            self._factors[model] = int(store.get(model).manifest["factor"])
        return self._factors[model]

    def _forward(self, net: TransformNet, x: torch.Tensor) -> torch.Tensor:
        return self._backend_forward(net, x)

    def _run_batch(self, batch: list[Item]) -> None:
        model = batch[0].job.model
        try:
            net, _ = self.models.get(model)
        except store.ModelStoreError as e:
            for item in batch:
                self._fail(item.job, str(e), retry=False, status=503)
            return
        factor = net.config.factor
        start = time.perf_counter()
        try:
            # The dials (detail, stroke) bring in the store's other SR networks through the model cache.
            outputs = pipeline.infer_with(net, [i.image.rgb for i in batch], batch[0].job.params,
                                          lambda name: self.models.get(name)[0],
                                          tile_pixels=self.settings.tile_pixels, forward=self._forward,
                                          half=self.models.half, progress=self._progress([i.job for i in batch]))
        except JobCancelled:
            log.info("cancelled %s while running: stopped", ", ".join(i.job.id for i in batch))
            for item in batch:  # ended already: this only acknowledges its queue entry
                self.queue.fail(item.job, "cancelled", retry=False, status=410)
            return
        except Exception as e:  # e.g. CUDA out of memory: let another attempt (or worker) try
            log.exception("forward pass failed for %s", model)
            for item in batch:
                self._fail(item.job, f"inference failed: {e}", retry=True, status=503)
            return
        compute_ms = (time.perf_counter() - start) * 1000
        self.counters["forward_passes"] += 1
        self.counters["batched_jobs"] += len(batch)
        self.counters["compute_ms"] += compute_ms

        def deliver(pair: tuple[Item, torch.Tensor]) -> tuple[int, str] | None:
            """Encode one result and complete its job (on a codec thread); the failure, if any, as (status, error)."""
            item, out = pair
            try:
                options = item.job.params  # a JobParams is the pipeline's Options plus the API's limits
                data, media_type = pipeline.encode(pipeline.finish(item.image, out, factor, options), item.image,
                                                   options)
            except codec.ImageError as e:
                return e.status, e.message
            except Exception as e:  # noqa: BLE001
                return 503, f"could not encode the result: {e}"
            self.queue.complete(item.job, data, media_type, round(compute_ms, 3), len(batch))
            return None

        for item, failure in zip(batch, self._pmap(deliver, list(zip(batch, outputs, strict=True))), strict=True):
            if failure is None:
                self.counters["jobs_done"] += 1
            else:
                self._fail(item.job, failure[1], retry=False, status=failure[0])

    def _run_video(self, job: Reserved) -> None:
        """A video job through `model_store.video.process`: progress in frames, cancellable between batches,
        the H.264 file as the result; a clip that cannot be read fails with its 4xx."""
        from model_store import video  # PyAV's encoder: loaded with the first clip

        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="percept-video-") as tmp:
            src, dst = Path(tmp) / f"in.{sniff_video(job.data[:16])}", Path(tmp) / "out.mp4"
            src.write_bytes(job.data)
            try:
                net, _ = self.models.get(job.model)
                frames = video.process(net, src, dst, job.params, progress=self._progress([job]),
                                       smooth=video.DEFAULT_SMOOTH if net.config.factor == 1 else 0.0,
                                       tile_pixels=self.settings.tile_pixels, forward=self._forward,
                                       get=lambda name: self.models.get(name)[0])
                data = dst.read_bytes()
            except JobCancelled:
                log.info("cancelled video job %s while running: stopped", job.id)
                self.queue.fail(job, "cancelled", retry=False, status=410)
                return
            except video.VideoError as e:
                self._fail(job, e.message, retry=False, status=e.status)
                return
            except store.ModelStoreError as e:
                self._fail(job, str(e), retry=False, status=503)
                return
            except Exception as e:  # e.g. out of memory: another attempt (or worker) may manage
                log.exception("video job %s failed", job.id)
                self._fail(job, f"video processing failed: {e}", retry=True, status=503)
                return
        compute_ms = (time.perf_counter() - start) * 1000
        self.counters["compute_ms"] += compute_ms
        self.counters["jobs_done"] += 1
        log.info("video job %s: %d frames in %.1f s", job.id, frames, compute_ms / 1000)
        self.queue.complete(job, data, "video/mp4", round(compute_ms, 3), 1)

    def _progress(self, jobs: list[Reserved]) -> pipeline.Progress:
        """The pipeline's progress callback for a batch: stores (done, total) on each job and raises JobCancelled
        (the work stops at this tile) once every job of the batch was cancelled."""

        def report(done: int, total: int) -> None:
            running = [self.queue.progress(job.id, done, total) for job in jobs]
            if not any(running):
                raise JobCancelled(", ".join(job.id for job in jobs))
            if self.interleave_s is not None and 0 < done < total:
                self._interleave()

        return report

    def _interleave(self) -> None:
        """Between two tiles of a long job: run the untiled jobs queued now (one level deep, at most every
        `interleave_s`); tiled ones are held for `_run_deferred`."""
        now = time.monotonic()
        if self._interleaving or now - self._last_interleave < (self.interleave_s or 0.0):
            return
        self._last_interleave = now
        self._interleaving = True
        try:
            jobs = self._hold(self.queue.reserve(self.id, self.settings.max_batch_size, 0))
            groups: dict[tuple, list[Item]] = {}  # by Item.key
            for job in jobs:
                item = self._prepare(job)
                if item is None:
                    self._release([job])
                elif item.tiled:
                    self._deferred.append(item)
                else:
                    groups.setdefault(item.key, []).append(item)
            for group in groups.values():
                try:
                    self._run_batch(group)
                finally:
                    self._release([i.job for i in group])
        finally:
            self._interleaving = False

    def _run_deferred(self) -> None:
        """The tiled jobs taken while interleaving, in the order they were queued."""
        while self._deferred:
            item = self._deferred.pop(0)
            try:
                self._run_batch([item])
            finally:
                self._release([item.job])

    def _prepare_many(self, prepare: Callable[[Reserved], Item | None], jobs: list[Reserved]) -> list[Item | None]:
        """`prepare` over the jobs a read returned, in their order: images decoded side by side on the codec threads,
        clips here, one after the other. A clip runs to its end inside `prepare`, forward passes and interleaved jobs
        included: on a codec thread two clips would share the compiled network, and an interleaved batch would wait
        for codec threads held by its own caller."""
        images = [job for job in jobs if not sniff_video(job.data[:16])]
        decoded = dict(zip((job.id for job in images), self._pmap(prepare, images), strict=True))
        return [decoded[job.id] if job.id in decoded else prepare(job) for job in jobs]

    def _pmap(self, fn: Callable[[Any], Any], items: list[Any]) -> Iterable[Any]:
        """`fn` over `items` on the codec threads (in order), or here for one item or without a pool."""
        if self._codec_pool is None or len(items) < 2:
            return map(fn, items)
        return self._codec_pool.map(fn, items)

    def _fail(self, job: Reserved, error: str, retry: bool, status: int) -> None:
        """`status`: the HTTP status the API answers with: 4xx the input's fault, 503 the service's. Called from
        codec threads too (an upload that does not decode): the count under a lock."""
        with self._held_lock:
            self.counters["jobs_failed"] += 0 if retry else 1
        self.queue.fail(job, error, retry, status)


def _is_queue_error(e: Exception) -> bool:
    """A Redis connection/timeout error (the queue is down or restarting), without importing redis here."""
    return any(c.__module__.startswith("redis.") and c.__name__ in ("ConnectionError", "TimeoutError")
               for c in type(e).__mro__)


def serve_forever(settings: WorkerSettings | None = None) -> None:
    """`percept worker`: a worker process on the Redis queue until SIGTERM/SIGINT."""
    import signal

    settings = settings or WorkerSettings()
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is not set: a standalone worker needs Redis (embedded mode is `percept serve`)")
    worker = Worker(open_queue(settings), settings)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.start_keepalive(stop)  # heartbeats (ready: false) while the models load
    worker.warm_up()
    log.info("worker %s ready on %s", worker.id, worker.device)
    worker.run(stop)
