"""Benchmarks: `python -m bench` runs them all; `python -m bench.<name>` runs one. Each prints a table."""

import time

import humove  # noqa: F401 - first, so that its process settings apply as for the `humove` command


def seconds(fn) -> float:
    """Wall seconds of one call of `fn()`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def best_seconds(fn, repeats: int = 3) -> float:
    """The shortest wall time of `repeats` calls of `fn()` (the machine may be shared; the first call warms up)."""
    return min(seconds(fn) for _ in range(repeats))
