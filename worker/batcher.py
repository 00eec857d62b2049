"""Dynamic batching with Triton's semantics.

`collect` waits for a first job, then keeps taking jobs until some group of compatible jobs (same model, same
input size) holds `max_batch_size` jobs — a full batch goes at once — or until `max_batch_delay` has passed since
the first job arrived; it then returns every group, each split into batches of at most `max_batch_size`. Unlike
Triton it waits for more only under load (jobs already queued when it asks), so a lone client never waits.

Sizes are grouped exactly (no padding to buckets): the networks are fully convolutional and instance norm makes
padding change the output, so only equal-size inputs share a forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def collect(
    reserve: Callable[[int, int], list[Any]],
    prepare: Callable[[Any], T | None],
    key: Callable[[T], Hashable],
    max_batch_size: int,
    max_batch_delay_s: float,
    first_wait_ms: int = 1000,
    pmap: Callable[[Callable[[Any], T | None], list[Any]], Iterable[T | None]] = map,
) -> list[list[T]]:
    """Batches of prepared jobs. `reserve(count, block_ms)` takes jobs from the queue; `prepare` turns one into
    an item (or None when it failed and was dealt with); `pmap` applies it to the jobs taken together (a thread
    pool's map decodes them side by side), results in their order."""
    groups: dict[Hashable, list[T]] = {}

    def add(jobs: list[Any]) -> None:
        for item in pmap(prepare, jobs):
            if item is not None:
                groups.setdefault(key(item), []).append(item)

    # The window opens only under load. A job already queued when we ask means jobs arrive while we compute: wait
    # up to the delay for a fuller batch. A job we had to wait for means a quiet queue (one client, or the first
    # of a burst): run it now with whatever came with it; jobs that queue meanwhile make the next batch a waiting
    # one. Triton's fixed window cost every request of a lone client the whole delay (10 ms of its 23 ms
    # overhead, issue 15). The window opens when the job arrives, before it is decoded: decoding (~10 ms for a
    # 256² noise PNG on 2 cores) overlaps the wait instead of coming on top of it.
    first = reserve(max_batch_size, 0)
    window = max_batch_delay_s if first else 0.0
    if not first:
        first = reserve(max_batch_size, first_wait_ms)
    deadline = time.monotonic() + window
    add(first)
    if not groups:
        return []
    while all(len(g) < max_batch_size for g in groups.values()):
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        add(reserve(max_batch_size, remaining_ms))
    return [g[i : i + max_batch_size] for g in groups.values() for i in range(0, len(g), max_batch_size)]
