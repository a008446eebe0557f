"""Peak rate and peak concurrency of recorded events (times in microseconds), and the
peak memory of this process while a block runs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil


def max_in_window(times_us: list[int], window_us: int = 1_000_000) -> int:
    """Most events in any half-open window [t, t + window)."""
    times = sorted(times_us)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_us:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def max_overlap(intervals: list[tuple[int, int]]) -> int:
    """The most intervals ``(start, end)`` open at one time."""
    events = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = current = 0
    for _, delta in events:  # at equal times a release (-1) sorts before a start
        current += delta
        best = max(best, current)
    return best


@contextmanager
def rss_sampler() -> Iterator[Callable[[], float]]:
    """Peak resident set size (MiB) of this process while the block runs."""
    process = psutil.Process()
    peak = process.memory_info().rss
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.02):
            peak = max(peak, process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: peak / 2**20
    finally:
        stop.set()
        thread.join()
        peak = max(peak, process.memory_info().rss)
