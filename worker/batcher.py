"""Dynamic batching with Triton's semantics.

`collect` waits for a first job, then keeps taking jobs until some group of compatible jobs (same model, same
input size) holds `max_batch_size` jobs — a full batch goes at once — or until `max_batch_delay` has passed since
the first job arrived; it then returns every group, each split into batches of at most `max_batch_size`.

Sizes are grouped exactly (no padding to buckets): the networks are fully convolutional and instance norm makes
padding change the output, so only equal-size inputs share a forward pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


def collect(
    reserve: Callable[[int, int], list[Any]],
    prepare: Callable[[Any], T | None],
    key: Callable[[T], Hashable],
    max_batch_size: int,
    max_batch_delay_s: float,
    first_wait_ms: int = 1000,
) -> list[list[T]]:
    """Batches of prepared jobs. `reserve(count, block_ms)` takes jobs from the queue; `prepare` turns one into
    an item (or None when it failed and was dealt with)."""
    groups: dict[Hashable, list[T]] = {}

    def take(block_ms: int) -> None:
        for job in reserve(max_batch_size, block_ms):
            item = prepare(job)
            if item is not None:
                groups.setdefault(key(item), []).append(item)

    take(first_wait_ms)
    if not groups:
        return []
    deadline = time.monotonic() + max_batch_delay_s
    while all(len(g) < max_batch_size for g in groups.values()):
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        if remaining_ms <= 0:
            break
        take(remaining_ms)
    return [g[i : i + max_batch_size] for g in groups.values() for i in range(0, len(g), max_batch_size)]
