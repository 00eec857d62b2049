"""Dynamic batching: a full batch goes at once, a partial one when the delay expires, groups never mix."""

from __future__ import annotations

import threading
import time

from worker.batcher import collect
from worker.memory_queue import MemoryQueue
from worker.queue import JobParams


def _collect(q: MemoryQueue, max_batch: int, delay_s: float, first_wait_ms: int = 200):
    return collect(lambda n, ms: q.reserve("w", n, ms), lambda job: job, lambda job: (job.model, job.params.max_side),
                   max_batch, delay_s, first_wait_ms)


def test_full_batch_goes_at_once():
    q = MemoryQueue()
    for _ in range(4):
        q.submit("muse", JobParams(max_side=64), b"x")
    start = time.monotonic()
    batches = _collect(q, max_batch=4, delay_s=5.0)
    assert time.monotonic() - start < 1.0  # did not wait for the 5 s delay
    assert [len(b) for b in batches] == [4]


def test_partial_batch_waits_for_the_delay_and_collects_late_arrivals():
    q = MemoryQueue()
    q.submit("muse", JobParams(max_side=64), b"x")
    threading.Timer(0.1, lambda: q.submit("muse", JobParams(max_side=64), b"x")).start()
    start = time.monotonic()
    batches = _collect(q, max_batch=8, delay_s=0.4)
    elapsed = time.monotonic() - start
    assert [len(b) for b in batches] == [2]
    assert 0.35 < elapsed < 2.0


def test_groups_by_model_and_size():
    q = MemoryQueue()
    for model, size in [("muse", 64), ("muse", 32), ("wave", 64), ("muse", 64), ("muse", 64)]:
        q.submit(model, JobParams(max_side=size), b"x")
    batches = _collect(q, max_batch=4, delay_s=0.05)
    assert sorted(len(b) for b in batches) == [1, 1, 3]
    for b in batches:
        assert len({(j.model, j.params.max_side) for j in b}) == 1


def test_oversized_groups_are_split():
    q = MemoryQueue()
    for model in ["muse"] * 3 + ["wave"]:
        q.submit(model, JobParams(max_side=64), b"x")
    def late_arrivals() -> None:
        with q._cond:  # the four arrive together, so one reserve call sees them all (the lock is reentrant)
            for _ in range(4):
                q.submit("muse", JobParams(max_side=64), b"x")

    threading.Timer(0.05, late_arrivals).start()
    batches = _collect(q, max_batch=4, delay_s=5.0)  # returns as soon as the late arrivals fill the group
    assert sorted(len(b) for b in batches) == [1, 3, 4]  # seven muse jobs -> 4 + 3


def test_nothing_queued_returns_empty_after_first_wait():
    start = time.monotonic()
    assert _collect(MemoryQueue(), max_batch=4, delay_s=1.0, first_wait_ms=100) == []
    assert time.monotonic() - start < 1.0


def test_failed_preparation_is_dropped():
    q = MemoryQueue()
    for i in range(3):
        q.submit("muse", JobParams(max_side=64, histmatch=i == 1), b"x")
    batches = collect(lambda n, ms: q.reserve("w", n, ms), lambda j: None if j.params.histmatch else j,
                      lambda j: j.model, 8, 0.05, 100)
    assert [len(b) for b in batches] == [2]


def test_the_window_opens_when_the_first_job_arrives_so_its_decode_counts_in_it():
    # A first job whose preparation (decoding) outlasts the batch delay: no further read, no second wait.
    q = MemoryQueue()
    q.submit("muse", JobParams(max_side=64), b"x")
    reads: list[int] = []

    def reserve(n: int, ms: int):
        reads.append(ms)
        return q.reserve("w", n, ms)

    def slow_prepare(job):
        time.sleep(0.15)
        return job

    batches = collect(reserve, slow_prepare, lambda job: job.model, 8, 0.05, 200)
    assert [len(b) for b in batches] == [1]
    assert reads == [0]  # the job was waiting: one non-blocking read, then the window had passed


def test_a_quiet_queue_runs_its_job_at_once_and_a_busy_one_waits_for_a_batch():
    """The window opens only under load: a job that arrives while the worker waits runs without the delay; the
    jobs that queue while it runs make the next batch wait the delay for late arrivals."""
    q = MemoryQueue()
    threading.Timer(0.05, lambda: q.submit("muse", JobParams(max_side=64), b"x")).start()
    start = time.monotonic()
    assert [len(b) for b in _collect(q, max_batch=8, delay_s=5.0, first_wait_ms=2000)] == [1]
    assert time.monotonic() - start < 1.0  # not the 5 s window
    q.submit("muse", JobParams(max_side=64), b"x")  # queued while the first ran: the queue is busy
    threading.Timer(0.1, lambda: q.submit("muse", JobParams(max_side=64), b"x")).start()
    start = time.monotonic()
    assert [len(b) for b in _collect(q, max_batch=8, delay_s=0.4)] == [2]
    assert time.monotonic() - start > 0.35


def test_the_jobs_taken_together_are_prepared_through_pmap_in_their_order():
    """`pmap` gets every job a read returned at once (a thread pool decodes them side by side); the batch keeps
    the queue's order whatever order the preparations finish in."""
    from concurrent.futures import ThreadPoolExecutor

    q = MemoryQueue()
    ids = [q.submit("muse", JobParams(max_side=64), b"x") for _ in range(4)]
    calls: list[int] = []

    def slow_first(job):
        time.sleep(0.1 if job.id == ids[0] else 0.0)  # the first finishes last
        return job

    with ThreadPoolExecutor(4) as pool:
        def pmap(fn, jobs):
            calls.append(len(jobs))
            return pool.map(fn, jobs)

        batches = collect(lambda n, ms: q.reserve("w", n, ms), slow_first, lambda job: job.model, 4, 0.05, 100,
                          pmap=pmap)
    assert calls == [4]
    assert [[job.id for job in b] for b in batches] == [ids]
