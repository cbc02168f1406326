"""`humove report` at scale: wall time and peak RSS of the report over a synthetic run dir with N records per
stage (download, ingest, shots, aesthetic, person, smooth, caption; random measures, some NaN or missing, ~90 %
kept per stage), against the anchor: the time duckdb takes to read every column of the run's current Parquet
files once. Goal: under 30 s and ≤ 500 MB peak RSS at 1M records per stage.

The run dir is written straight in the ledger's format (one part per stage, then `current.parquet`, as a run
leaves it); the clips are not written, so the sampled clip cards say so instead of drawing previews. Each report
runs in its own process (`humove report`), which prints its own peak RSS (VmHWM) as it ends.

    python -m bench.bench_report [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from humove.ledger import CURRENT_FILE, Ledger
from humove.registry import BUILTIN_STAGES
from schemas import aesthetic, caption, download, ingest, person, shots, smooth

REPO = Path(__file__).resolve().parent.parent
STAGES = {"download": download.SCHEMA, "ingest": ingest.SCHEMA, "shots": shots.SCHEMA,
          "aesthetic": aesthetic.SCHEMA, "person": person.SCHEMA, "smooth": smooth.SCHEMA, "caption": caption.SCHEMA}
VIDEO_STAGES = ("download", "ingest")
REASONS = ("too_short", "low_score", "occluded", "jittery_motion")
LIST_LENGTH = 8  # values per record of a list column (per-frame scores)


def synthetic_table(stage: str, schema, n: int, rng: np.random.Generator) -> pa.Table:
    """`n` records of a stage with every column filled: ~90 % ok, 8 % rejected over a few reasons, 2 % errors;
    numbers random with 1 % NaN and 1 % missing."""
    numbers = np.arange(n)
    videos = pc.binary_join_element_wise("v", pa.array(numbers.astype(str)), "")
    ids = videos if stage in VIDEO_STAGES else pc.binary_join_element_wise(videos, "-c", "")
    draw = rng.random(n)
    status = np.where(draw < 0.9, "ok", np.where(draw < 0.98, "rejected", "error"))
    rejected = status == "rejected"
    columns = {}
    for field in schema.arrow:
        name, kind = field.name, field.type
        if name == "id":
            column = ids
        elif name == "input_id":
            column = ids if stage != "shots" else videos
        elif name == "video_id":
            column = videos
        elif name == "status":
            column = pa.array(status)
        elif name == "reason":
            column = pa.array(np.array(REASONS)[rng.integers(0, len(REASONS), n)], mask=~rejected)
        elif name == "detail":
            column = pa.array(np.full(n, "measured x (needs ≥ y)"), mask=~rejected)
        elif name == "error_type":
            column = pa.array(np.full(n, "ValueError"), mask=status != "error")
        elif name == "error_message":
            column = pa.array(np.full(n, "synthetic failure"), mask=status != "error")
        elif name == "by_threshold":
            column = pa.array(np.zeros(n, bool))
        elif name in ("attempt", "schema_version"):
            column = pa.array(np.ones(n, np.int32))
        elif name == "stage_version":
            column = pa.array(np.full(n, "1"))
        elif name.endswith("_path"):
            column = pc.binary_join_element_wise(f"artifacts/{stage}/", ids, ".bin", "")
        elif pa.types.is_floating(kind):
            column = _numbers(rng, n, kind)
        elif pa.types.is_integer(kind):
            column = pa.array(rng.integers(8, 400, n)).cast(kind)
        elif pa.types.is_boolean(kind):
            column = pa.array(rng.random(n) < 0.5)
        elif pa.types.is_timestamp(kind):
            column = pa.array(np.full(n, dt.datetime(2026, 1, 1)), kind)
        elif pa.types.is_list(kind) and pa.types.is_floating(kind.value_type):
            offsets = pa.array(np.arange(0, n * LIST_LENGTH + 1, LIST_LENGTH, dtype=np.int32))
            column = pa.ListArray.from_arrays(offsets, _numbers(rng, n * LIST_LENGTH, kind.value_type)).cast(kind)
        elif pa.types.is_string(kind):
            column = pa.array(np.array([f"{name} {k}" for k in range(20)])[rng.integers(0, 20, n)])
        else:
            column = pa.nulls(n, kind)
        columns[name] = column.cast(kind) if column.type != kind else column
    return pa.table(columns, schema=schema.arrow)


def _numbers(rng: np.random.Generator, n: int, kind: pa.DataType) -> pa.Array:
    values = rng.gamma(2.0, 2.0, n)
    values[rng.random(n) < 0.01] = np.nan
    return pa.array(values, mask=rng.random(n) < 0.01).cast(kind)


def write_run(run_dir: Path, n: int) -> None:
    """A run dir with `n` records per stage and each stage's `current.parquet`, as a finished run leaves it."""
    rng = np.random.default_rng(0)
    ledger = Ledger(str(run_dir))
    ledger.write_run_info({"pipeline": "bench-report", "max_attempts": 3,
                           "stages": [{"name": stage, "class": BUILTIN_STAGES[stage]} for stage in STAGES]})
    for stage, schema in STAGES.items():
        ledger.append(stage, synthetic_table(stage, schema, n, rng))
    ledger.write_current()


def anchor_seconds(run_dir: Path) -> float:
    """duckdb reading every column of every stage's current records once (counting each column's values)."""
    connection = duckdb.connect(config={"threads": 2})
    start = time.perf_counter()
    for stage in STAGES:
        path = str(run_dir / stage / CURRENT_FILE)
        connection.sql(f"SELECT count(COLUMNS(*)) FROM read_parquet('{path}')").fetchall()
    return time.perf_counter() - start


# What the report imports before it reads a record: the report modules and every stage's class (its config
# declares the thresholds; the stages' model and video libraries load only where they work). A fixed cost, the
# same at any size.
IMPORTS = ("import sys; from humove.registry import BUILTIN_STAGES, load_stage_class; import humove.report.page; "
           "[load_stage_class(BUILTIN_STAGES[name]) for name in sys.argv[1:]]")
REPORT = ("import sys\nfrom humove.cli import app\n"
          "try:\n    app()\nexcept SystemExit as exit:\n    if exit.code:\n        raise")  # `humove report ...`
# The child prints its own peak, VmHWM: the memory of the command alone. `wait4`'s ru_maxrss also counts what the
# parent held when it forked (here the generated records, ~1 GB at 1M), which it read as the report's.
PEAK = ("\nprint(next(line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM:')), "
        "file=sys.stderr)")


def report(run_dir: Path, tree: Path = REPO) -> tuple[float, float]:
    """`humove report` of the code in `tree` in its own process: (seconds, peak RSS in MB). Each into a new
    folder: a report written again reuses the charts already drawn there."""
    out = Path(tempfile.mkdtemp(prefix="report-", dir=run_dir.parent), "report.html")
    return peak_of(REPORT, ["report", str(run_dir), "--out", str(out)], tree)


def imports_only() -> tuple[float, float]:
    """The imports of a report, in their own process: (seconds, peak RSS in MB)."""
    return peak_of(IMPORTS, list(STAGES))


def peak_of(code: str, args: list[str], tree: Path = REPO) -> tuple[float, float]:
    """Run the Python `code` with `args` and the code in `tree`: (seconds, peak RSS in MB)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code + PEAK, *args], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{args[:2]} failed: {done.stderr[-2000:]}")
    return seconds, int(done.stderr.split()[-1]) / 1024


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--previous", type=Path, help="a checkout of another version (`git archive REV | tar -x`, "
                        "then copy its stages/, schemas/, model/ and pipelines/ into its humove/: the editable "
                        "install would take humove.stages & co. from this checkout): its report over the same run "
                        "dirs, for comparison")
    args = parser.parse_args(argv)
    import_seconds, import_peak = imports_only()
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp, "run")
            write_run(run_dir, n)
            anchor = anchor_seconds(run_dir)
            seconds, peak = report(run_dir)
            rows.append((n, anchor, seconds, peak))
            if args.previous:
                previous = report(run_dir, args.previous)
                rows.append((f"{n} previous", anchor, *previous))
    print(f"\nhumove report over {len(STAGES)} stages, {os.cpu_count()} CPUs")
    print(f"{'records/stage':>14}{'anchor s':>10}{'report s':>10}{'× anchor':>10}{'peak RSS MB':>13}"
          f"{'above imports MB':>18}")
    print(f"{'imports only':>14}{'':>10}{import_seconds:>10.1f}{'':>10}{import_peak:>13.0f}{0:>18}")
    for n, anchor, seconds, peak in rows:
        print(f"{n:>14}{anchor:>10.2f}{seconds:>10.1f}{seconds / anchor:>9.1f}×{peak:>13.0f}"
              f"{peak - import_peak:>18.0f}")
    print("anchor: duckdb reads every column of the current Parquet once; goal at 1M records per stage: "
          "report < 30 s, peak RSS ≤ 500 MB")


if __name__ == "__main__":
    main(sys.argv[1:])
