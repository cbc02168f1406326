"""Benchmarks: `python -m bench` runs them all; `python -m bench.<name>` runs one. Each prints a table."""

import time


def seconds(fn) -> float:
    """Wall seconds of one call of `fn()`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
