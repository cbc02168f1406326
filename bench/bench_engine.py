"""Engine overhead per item: a no-op stage through the engine (local and Ray executors) vs a plain loop.

    python -m bench.bench_engine [--items 2000] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import yaml

from humove.schemas.records import RecordSchema
from humove.stage import MapStage, Resources, StageConfig, listing

REPO = Path(__file__).resolve().parent.parent


class NoopConfig(StageConfig):
    items: int = listing(1000)


class NoopSource(MapStage):
    """Lists `items` numbers and returns each unchanged: only the engine's own cost remains."""

    name = "noop"
    version = "1"
    schema = RecordSchema("noop", 1, "video_id", (pa.field("number", pa.int64()),))
    Config = NoopConfig
    is_source = True
    resources = Resources(batch_size=64)

    def list_inputs(self):
        # A generator, as a listing read from a file or a bucket streams.
        return ({"input_id": f"i{n:08d}", "number": n} for n in range(self.config.items))

    def process(self, item):
        return self.ok(item["input_id"], number=item["number"])


def time_engine(executor: str, items: int, batch_size: int) -> float:
    from humove.config import load_pipeline
    from humove.engine import Runner

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "p.yaml")
        path.write_text(yaml.safe_dump({"name": "bench", "stages": [{
            "stage": "bench.bench_engine:NoopSource", "config": {"items": items},
            "resources": {"batch_size": batch_size}}]}))
        config, stages = load_pipeline(path)
        start = time.perf_counter()
        Runner(config, stages, str(Path(tmp, "run")), executor=executor).run()
        return time.perf_counter() - start


def time_plain_loop(items: int) -> float:
    stage = NoopSource(NoopConfig(items=items), None)
    start = time.perf_counter()
    rows = [stage.process(item) for item in stage.list_inputs()]
    assert len(rows) == items
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import ray

    ray.init(include_dashboard=False, logging_level="WARNING")  # start-up excluded from the engine timing
    rows = [("plain python loop", time_plain_loop(args.items))]
    rows.append(("engine, local executor", time_engine("local", args.items, args.batch_size)))
    rows.append(("engine, ray executor", time_engine("ray", args.items, args.batch_size)))
    print(f"\n{args.items} items, batch size {args.batch_size}, {os.cpu_count()} CPUs")
    print(f"{'runner':<26}{'total s':>10}{'per item ms':>14}{'items/s':>12}")
    for name, seconds in rows:
        print(f"{name:<26}{seconds:>10.3f}{seconds / args.items * 1e3:>14.4f}{args.items / seconds:>12.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
