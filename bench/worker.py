"""The worker path without HTTP: images/s of `worker.runner.Worker` draining a queue of jobs, and where its time goes.

`--jobs` PNG uploads of one photo (chicago, resized to `--size`²) are queued at once in the in-memory queue; one
Worker (the default backend, `--batch` jobs per forward pass at most) takes them in batches until the queue is
empty, once per `--codec-threads` value (PERCEPT_CODEC_THREADS: 1 = everything on the worker's thread).
Printed: images/s over the whole drain, the mean batch, and per image the wall time of each stage of a batch,
which follow each other: decode (the uploads to tensors, side by side on the codec threads), forward (the batch's
pass divided by its size), encode (output conversion, PNG encode and `complete`, side by side), other (the
queue, the batcher). The GPU goal of issue 15 (2,000 images/s at 512² with `muse` on one H100-class GPU) is
measured with this, not over HTTP:

    python -m bench.worker [--device auto|cpu|cuda] [--size 512] [--jobs 64] [--batch 8] [--style muse]
                           [--codec-threads 1,8]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from PIL import Image

from worker.memory_queue import MemoryQueue
from worker.queue import JobParams
from worker.runner import Worker
from worker.settings import WorkerSettings

PHOTO = "../shared/data/content/chicago.jpg"


def _timed(totals: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start

    return wrapper


def upload(size: int) -> bytes:
    buffer = io.BytesIO()
    with Image.open(PHOTO) as im:
        im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(buffer, "PNG")
    return buffer.getvalue()


def drain(worker: Worker, queue: MemoryQueue, style: str, data: bytes, jobs: int) -> dict[str, float]:
    """Queue `jobs` copies of `data`, run the worker until it has finished them; seconds per stage and in all."""
    totals: dict[str, float] = defaultdict(float)
    # Instance attributes shadow the methods for this worker only: the wall time of each stage, summed.
    pmap = worker._pmap

    def timed_pmap(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        start = time.perf_counter()
        out = list(pmap(fn, items))  # the work happens as the results are taken
        totals["decode" if fn == worker._prepare else "encode"] += time.perf_counter() - start
        return out

    worker._pmap = timed_pmap  # type: ignore[method-assign]
    worker._forward = _timed(totals, "forward", worker._forward)  # type: ignore[method-assign]
    passes = worker.counters["forward_passes"]
    ids = [queue.submit(style, JobParams(format="png"), data) for _ in range(jobs)]
    start = time.perf_counter()
    done = 0
    while done < jobs:
        done += worker.step(first_wait_ms=0)
    totals["all"] = time.perf_counter() - start
    totals["passes"] = worker.counters["forward_passes"] - passes
    failed = [i for i in ids if (rec := queue.status(i)) is None or rec.error]
    if failed:
        raise SystemExit(f"{len(failed)} jobs failed, e.g. {queue.status(failed[0])}")
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="max batch size (PERCEPT_MAX_BATCH_SIZE)")
    parser.add_argument("--style", default="muse")
    parser.add_argument("--codec-threads", default=f"1,{WorkerSettings().codec_threads}",
                        help="comma-separated values to compare (default: 1 and the default setting)")
    args = parser.parse_args(argv)

    data = upload(args.size)
    rows = []
    for threads in [int(v) for v in args.codec_threads.split(",")]:
        queue = MemoryQueue(max_depth=args.jobs)
        worker = Worker(queue, WorkerSettings(device=args.device, max_batch_size=args.batch, codec_threads=threads))
        worker.models.get(args.style)  # only this model, warmed up by the first drain
        drain(worker, queue, args.style, data, min(args.jobs, 2 * args.batch))
        t = drain(worker, queue, args.style, data, args.jobs)
        ms = {k: t[k] / args.jobs * 1000 for k in ("all", "decode", "forward", "encode")}
        rows.append((threads, args.jobs / t["all"], args.jobs / t["passes"], ms))
    print(f"worker path: {args.style}, {args.size}² PNG in and out, {args.jobs} jobs queued at once, "
          f"max batch {args.batch}, {worker.device} / {worker.backend.label}, {os.cpu_count()} CPUs")
    print("| codec threads | images/s | vs 1 thread | mean batch | decode ms/img | forward ms/img | encode ms/img "
          "| other ms/img |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for threads, rate, batch, ms in rows:
        other = ms["all"] - ms["decode"] - ms["forward"] - ms["encode"]
        print(f"| {threads} | {rate:.1f} | {rate / rows[0][1]:.2f}x | {batch:.2f} | {ms['decode']:.2f} | "
              f"{ms['forward']:.2f} | {ms['encode']:.2f} | {other:.2f} |")


if __name__ == "__main__":
    main()
