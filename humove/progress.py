"""How a run reports its progress: callbacks the engine calls (`Progress`), as plain log lines (`ProgressLines`).

The CLI draws rich bars on a terminal; where output goes to a file (nohup, Slurm, Kubernetes logs) bars show only
at the end, so it prints `ProgressLines` instead: one line per stage start and finish, and while a stage runs a
line every `every_s` seconds (`HUMOVE_PROGRESS_EVERY_S`, `--progress-every`; default 30):

    2026-12-06 18:30:00 clip 120/1000 (12%) · 3.4 items/s · ETA 4m18s · records: ok 100, rejected 20, error 0

The engine writes the same lines to the run's log (`<run_dir>/run.log`, `RunLog`) whatever the terminal.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

EVERY_S_ENV = "HUMOVE_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 30.0


class Progress:
    """Callbacks the engine makes while it runs; the default does nothing."""

    def message(self, text: str) -> None:
        pass

    def start(self, stage: str, total: int, done: int = 0) -> None:
        """`total`: the inputs this run works on (0: nothing to do); `done`: those earlier runs finished."""

    def advance(self, stage: str, records: list[dict], items: int) -> None:
        pass

    def grow(self, stage: str, items: int) -> None:
        """A started stage has `items` more inputs to run: streamed to it by the stage before, or left by a
        stream to run again."""

    def finish(self, stage: str, summary=None) -> None:
        """`summary` (`ledger.StageSummary`): the stage's counts once its records are written, as `humove status`
        shows them."""

    def close(self) -> None:
        pass


def progress_interval(value: float | str | None = None) -> float:
    """Seconds between progress lines: `value` if given, else `HUMOVE_PROGRESS_EVERY_S`, else 30."""
    raw = value if value is not None else os.environ.get(EVERY_S_ENV)
    if raw is None or raw == "":
        return DEFAULT_EVERY_S
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{EVERY_S_ENV}={raw!r}: expected a number of seconds, e.g. 30") from None
    if not seconds > 0:
        raise ValueError(f"progress interval {raw!r}: expected a number of seconds above 0, e.g. 30")
    return seconds


def status_counts(summary) -> str:
    """A stage's counts as `humove status` has them (`ledger.StageSummary`: rejections include duplicates;
    quarantined apart)."""
    text = f"ok {summary.ok} · rejected {sum(summary.rejected.values())} · error {summary.error}"
    return text + (f" · quarantined {summary.quarantined}" if summary.quarantined else "")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class ProgressLines(Progress):
    """Progress as plain, timestamped lines given to `write`: at each stage's start and finish, and every
    `every_s` seconds while it runs, one line per running stage (stages stream at once); from a timer thread, so
    a batch that takes longer than that still shows the stage is alive."""

    def __init__(self, write: Callable[[str], None], every_s: float = DEFAULT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self.write = write
        self.every_s = every_s
        self.clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, _StageTally] = {}
        self._earlier: dict[str, int] = {}
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    def _line(self, text: str) -> None:
        self.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}")

    def message(self, text: str) -> None:
        self._line(text)

    def start(self, stage: str, total: int, done: int = 0) -> None:
        self._earlier[stage] = done
        if not total:  # `finish` says so in one line, unless the stage is streamed items meanwhile (`grow`)
            return
        with self._lock:
            self._running[stage] = _StageTally(total, self.clock())
        self._line(f"{stage} started: {total} items to run" + (f" ({done} done before)" if done else ""))
        self._start_timer()

    def grow(self, stage: str, items: int) -> None:
        if not items:
            return
        with self._lock:
            tally = self._running.get(stage)
            if tally is None:
                self._running[stage] = _StageTally(items, self.clock())
            else:
                tally.total += items
        if tally is None:
            self._line(f"{stage} started: items streaming in from the stage before")
            self._start_timer()

    def advance(self, stage: str, records: list[dict], items: int) -> None:
        with self._lock:
            tally = self._running.get(stage)
            if tally is None:
                return
            tally.done += items
            for record in records:
                tally.counts[record["status"]] = tally.counts.get(record["status"], 0) + 1

    def finish(self, stage: str, summary=None) -> None:
        counts = status_counts(summary) if summary is not None else ""
        with self._lock:
            tally = self._running.pop(stage, None)
            if tally is not None:
                line = self._status(stage, tally, done=True) + (f" · status: {counts}" if counts else "")
            else:
                earlier = self._earlier.get(stage, 0)
                line = f"stage {stage}: nothing to do ({earlier} done{'; ' + counts if counts else ''})"
        self._line(line)

    def close(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = threading.Thread(target=self._tick, name="humove-progress", daemon=True)
            self._timer.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.every_s):
            with self._lock:
                lines = [self._status(stage, tally) for stage, tally in self._running.items()]
            for line in lines:
                self._line(line)

    def _status(self, stage: str, tally: _StageTally, done: bool = False) -> str:
        """A running stage's line; call with the lock held."""
        elapsed = max(self.clock() - tally.started, 1e-9)
        rate = tally.done / elapsed
        share = f" ({100 * tally.done // tally.total}%)" if tally.total else ""
        if done:
            timing = f"done in {_duration(elapsed)}"
        else:
            left = tally.total - tally.done
            timing = f"ETA {_duration(left / rate)}" if rate > 0 else "ETA unknown"
        counts = ", ".join(f"{status} {count}" for status, count in tally.counts.items())
        return f"{stage} {tally.done}/{tally.total}{share} · {rate:.2f} items/s · {timing} · records: {counts}"


@dataclass
class _StageTally:
    total: int
    started: float
    done: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"ok": 0, "rejected": 0, "error": 0})


class Fanout(Progress):
    """Every callback to each of several `Progress` (the user's display and the run's log)."""

    def __init__(self, *targets: Progress):
        self.targets = targets

    def message(self, text: str) -> None:
        for target in self.targets:
            target.message(text)

    def start(self, stage: str, total: int, done: int = 0) -> None:
        for target in self.targets:
            target.start(stage, total, done)

    def advance(self, stage: str, records: list[dict], items: int) -> None:
        for target in self.targets:
            target.advance(stage, records, items)

    def grow(self, stage: str, items: int) -> None:
        for target in self.targets:
            target.grow(stage, items)

    def finish(self, stage: str, summary=None) -> None:
        for target in self.targets:
            target.finish(stage, summary)

    def close(self) -> None:
        for target in self.targets:
            target.close()


class RunLog:
    """The run's log, `<run_dir>/run.log`: lines appended as they come on a local run dir; on an object store
    (no appends there) gathered and the file rewritten with them at most every `every_s` seconds and at
    `close`. Secrets in a line (a URL's password) are masked."""

    NAME = "run.log"

    def __init__(self, storage, every_s: float = DEFAULT_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.storage = storage
        self.url = storage.join(self.NAME)
        self.every_s = every_s
        self.clock = clock
        self._pending: list[str] = []
        self._flushed = clock()
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        from humove.redact import redact_text

        with self._lock:
            self._pending.append(redact_text(line))
            if self.storage.local or self.clock() - self._flushed >= self.every_s:
                self._flush()

    def close(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self.storage.append_text(self.url, "".join(f"{line}\n" for line in self._pending))
            self._pending.clear()
        self._flushed = self.clock()
