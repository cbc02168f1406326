"""Driver memory and time per record as the inputs grow: source → fan-out 3 → map, at 100k and 1M inputs.

Each size runs in its own process (the stages are trivial, so what is measured is the engine's own bookkeeping),
which reports its peak RSS. With the Ray executor the fan-out and the map stream together (`run.streaming`); with
the local one they run stage after stage. The goal: peak RSS at 1M ≤ 1.3× that at 100k, and time per record no
worse.

    python -m bench.bench_scale [--sizes 100000 1000000] [--executor local|ray]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import yaml

from humove.schemas.records import RecordSchema
from humove.stage import MapStage, Resources

REPO = Path(__file__).resolve().parent.parent
FAN_OUT = 3


class ScaleFanOut(MapStage):
    """Three clips per video."""

    name = "scale_clips"
    version = "1"
    schema = RecordSchema("scale_clips", 1, "clip_id", (pa.field("video_id", pa.string()),
                                                        pa.field("start", pa.float64())))
    resources = Resources(batch_size=256)

    def process(self, item):
        return [self.ok(f"{item['video_id']}-{k}", video_id=item["video_id"], start=2.0 * k) for k in range(FAN_OUT)]


class ScaleMap(MapStage):
    """One measure per clip."""

    name = "scale_measure"
    version = "1"
    schema = RecordSchema("scale_measure", 1, "clip_id", (pa.field("score", pa.float64()),))
    resources = Resources(batch_size=256)

    def process(self, item):
        return self.ok(item["clip_id"], score=item["start"] + item["number"] * 1e-3)


def run_one(items: int, executor: str) -> dict:
    """One run in this process; returns its seconds, records and peak RSS."""
    from humove.config import load_pipeline
    from humove.engine import Runner
    from humove.ledger import Ledger

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "scale.yaml")
        path.write_text(yaml.safe_dump({"name": "scale", "run": {"executor": executor}, "stages": [
            {"stage": "bench.bench_engine:NoopSource", "config": {"items": items}, "resources": {"batch_size": 256}},
            {"stage": "bench.bench_scale:ScaleFanOut"},
            {"stage": "bench.bench_scale:ScaleMap"},
        ]}))
        config, stages = load_pipeline(path)
        start = time.perf_counter()
        Runner(config, stages, str(Path(tmp, "run")), executor=executor).run()
        seconds = time.perf_counter() - start
        counts = {s.stage: s.ok for s in Ledger(str(Path(tmp, "run"))).summary()}
    expected = {"noop": items, "scale_clips": items * FAN_OUT, "scale_measure": items * FAN_OUT}
    assert counts == expected, counts
    return {"items": items, "records": sum(counts.values()), "seconds": seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def measure(items: int, executor: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--one", str(items), "--executor", executor],
                         cwd=REPO, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--executor", default="local", choices=["local", "ray"])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.executor)))
        return
    rows = [measure(items, args.executor) for items in args.sizes]
    print(f"\nsource → fan-out {FAN_OUT} → map, {args.executor} executor, {os.cpu_count()} CPUs")
    print(f"{'inputs':>9}{'records':>10}{'total s':>10}{'µs/record':>11}{'peak RSS MB':>13}{'RSS ratio':>11}")
    base = rows[0]
    for row in rows:
        print(f"{row['items']:>9}{row['records']:>10}{row['seconds']:>10.1f}"
              f"{row['seconds'] / row['records'] * 1e6:>11.1f}{row['peak_mb']:>13.0f}"
              f"{row['peak_mb'] / base['peak_mb']:>10.2f}×")
    print(f"goal: peak RSS ratio ≤ 1.30× (at {rows[-1]['items']} against {base['items']} inputs); "
          "time per record no worse")


if __name__ == "__main__":
    main(sys.argv[1:])
