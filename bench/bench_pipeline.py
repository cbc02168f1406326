"""Whole pipelines through the engine: the demo pipeline, and a toy pipeline whose stages sleep per item in place
of GPU work, on the local Ray and in-process, one column per engine.

    python -m bench.bench_pipeline [--toy-items 32] [--demo-videos 9] [--engines streaming-ray barrier-ray]

Per run: the wall time (Ray's own start-up excluded); when the first item left the last map stage and when the
first shard was written, in seconds from the start; and each stage's busy fraction, the share of the wall time in
which at least one of its workers was inside `prepare` or `process_batch` (for a model stage: the share of the
run its GPUs have work). The anchor of each run is its slowest stage's busy time, measured in the same run: what
an engine that runs every stage at once, with the same pools, could at best reach (`ratio` = wall ÷ anchor; 1.00×
means the slowest stage never waited for the others). The toy pipeline also prints the bounds its configuration
gives: one stage after another (Σ items × seconds ÷ pool) against all stages at once (the slowest stage's share).

Engines (`ENGINES`, one column each): `streaming-ray` (the default on Ray: consecutive clip stages run as one Ray
Data pipeline, every stage's pool alive at once, items moving on as they pass), `barrier-ray` (`run.streaming:
false`: each stage a Ray Data pass of its own, to its end) and `barrier-local` (in-process, stage after stage).
The toy's stages make clips, so its four sleeping stages stream together; in the demo, keywords, download and
ingest (videos: the ledger decides duplicates once each has finished) run alone, shots to caption stream.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import yaml

from bench.bench_engine import NoopSource
from humove.registry import BUILTIN_STAGES, load_stage_class
from humove.schemas.records import RecordSchema
from humove.stage import AggregateStage, MapStage, Resources, Stage, StageConfig

REPO = Path(__file__).resolve().parent.parent


# --- busy-time log: every worker appends (stage, start, end) of each call, one file per process ------------------

def times_dir(run_dir: str) -> Path:
    """Beside the run dir, never inside it (the engine owns what is in a run dir)."""
    return Path(f"{run_dir}.times")


def _log(stage: Stage, start: float) -> None:
    folder = times_dir(stage.context.run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{os.getpid()}.jsonl", "a") as handle:
        handle.write(json.dumps([stage.name, start, time.time()]) + "\n")


def timed(cls: type[Stage], name: str) -> type[Stage]:
    """`cls` with each call of its work (`prepare`, `process_batch`; an aggregate stage's `run`) logged; nothing
    else changes. `name`: its attribute in this module, which workers import it by."""

    def logged(method: str):
        def call(self, argument):
            start = time.time()
            try:
                return getattr(cls, method)(self, argument)
            finally:
                _log(self, start)
        return call

    methods = ("run",) if issubclass(cls, AggregateStage) else ("prepare", "process_batch")
    work = {method: logged(method) for method in methods}
    return type(name, (cls,), {**work, "__module__": __name__, "__qualname__": name})


def __getattr__(name: str):
    """`bench.bench_pipeline:Timed_<stage>`: the built-in stage, timed (made on first use, in workers too)."""
    if name.startswith("Timed_") and name[len("Timed_"):] in BUILTIN_STAGES:
        cls = timed(load_stage_class(name[len("Timed_"):]), name)
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# --- the toy pipeline: a source, then stages that sleep per item ------------------------------------------------
# The source: bench_engine's NoopSource (lists `items` numbers), in batches of 4 here (the pipeline sets it).


class SleepConfig(StageConfig):
    seconds: float = 0.05


TOY_POOL = 2  # workers per toy stage, as a GPU stage's fixed pool


def sleep_stage(stage_name: str) -> type[MapStage]:
    """A stage that sleeps `seconds` per item, as a model stage waits for its GPU; its own column, as stages have."""
    column = f"{stage_name}_pid"

    class Sleep(MapStage):
        name, version = stage_name, "1"
        schema = RecordSchema(stage_name, 1, "clip_id", (pa.field(column, pa.int64()),))  # clips: they stream
        Config = SleepConfig
        resources = Resources(num_cpus=0.25, batch_size=4, concurrency=TOY_POOL)

        def process(self, item):
            time.sleep(self.config.seconds)
            return self.ok(item["input_id"], **{column: os.getpid()})

    return Sleep


ToyList = timed(NoopSource, "ToyList")
ToyDetect = timed(sleep_stage("detect"), "ToyDetect")
ToyPose = timed(sleep_stage("pose"), "ToyPose")
ToyFit = timed(sleep_stage("fit"), "ToyFit")
ToyCaption = timed(sleep_stage("caption"), "ToyCaption")
TOY_STAGES = {  # stage: seconds per item
    "bench.bench_pipeline:ToyDetect": 0.02, "bench.bench_pipeline:ToyPose": 0.04,
    "bench.bench_pipeline:ToyFit": 0.08, "bench.bench_pipeline:ToyCaption": 0.04,
}


def toy_pipeline(items: int) -> dict:
    return {"name": "toy", "run": {"max_attempts": 1}, "stages": [
        {"stage": "bench.bench_pipeline:ToyList", "config": {"items": items}, "resources": {"batch_size": 4}},
        *({"stage": ref, "config": {"seconds": seconds}} for ref, seconds in TOY_STAGES.items())]}


def toy_bounds(items: int) -> tuple[float, float]:
    """(one stage after another, all stages at once): the toy's work divided by its pools, no overhead."""
    per_stage = [items * seconds / TOY_POOL for seconds in TOY_STAGES.values()]
    return sum(per_stage), max(per_stage)


def demo_pipeline(videos: int) -> dict:
    """pipelines/demo.yaml with every stage timed; `videos` sample videos per keyword."""
    from humove.config import builtin_pipeline, read_pipeline_file

    raw = read_pipeline_file(builtin_pipeline("demo.yaml"))
    for spec in raw["stages"]:
        if spec["stage"] == "download":
            spec.setdefault("config", {})["results_per_keyword"] = videos
        spec["stage"] = f"bench.bench_pipeline:Timed_{spec['stage']}"
    return raw


# --- engines: a column name → run(pipeline file, run dir) -----------------------------------------------------

def engine(executor: str, streaming: bool) -> Callable[[Path, str], None]:
    def run(pipeline: Path, run_dir: str) -> None:
        from humove.config import load_pipeline
        from humove.engine import Runner

        config, stages = load_pipeline(pipeline)
        config = config.model_copy(update={"run": config.run.model_copy(update={"streaming": streaming})})
        Runner(config, stages, run_dir, executor=executor).run()

    return run


ENGINES: dict[str, Callable[[Path, str], None]] = {
    "streaming-ray": engine("ray", streaming=True),  # consecutive clip stages in one Ray Data pipeline, all pools alive
    "barrier-ray": engine("ray", streaming=False),   # a Ray Data pass per stage, each to its end
    "barrier-local": engine("local", streaming=False),  # in-process, stage after stage
}


def measure(engine: str, pipeline: dict) -> dict:
    """One run of `pipeline` by `engine` in a fresh run dir: wall time, when the first item left the last map stage,
    when the first shard was written, and each stage's busy time."""
    classes = [load_stage_class(spec["stage"]) for spec in pipeline["stages"]]
    last_map = [cls.name for cls in classes if issubclass(cls, MapStage)][-1]
    with tempfile.TemporaryDirectory() as tmp:
        path, run_dir = Path(tmp, "pipeline.yaml"), str(Path(tmp, "run"))
        path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
        start = time.time()
        ENGINES[engine](path, run_dir)
        wall = time.time() - start
        calls: dict[str, list[tuple[float, float]]] = {}
        for log in times_dir(run_dir).glob("*.jsonl"):
            for line in log.read_text().splitlines():
                stage, begin, end = json.loads(line)
                calls.setdefault(stage, []).append((begin, end))
        shards = sorted(Path(run_dir, "dataset").rglob("*.tar"), key=lambda p: p.stat().st_mtime)
        first_shard = shards[0].stat().st_mtime - start if shards else None
    return {"wall": wall, "first_out": min(end for _, end in calls[last_map]) - start, "first_shard": first_shard,
            "busy": {cls.name: busy_seconds(calls.get(cls.name, [])) for cls in classes}}


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of the intervals: the time at least one worker of the stage was working."""
    total, reach = 0.0, float("-inf")
    for begin, end in sorted(intervals):
        if end > reach:
            total += end - max(begin, reach)
            reach = end
    return total


def print_table(title: str, runs: dict[str, dict]) -> None:
    width = max(14, *(len(name) + 2 for name in runs))
    print(f"\n{title}")
    print(f"{'':<22}" + "".join(f"{name:>{width}}" for name in runs))

    def row(label: str, cell: Callable[[dict], str]) -> None:
        print(f"{label:<22}" + "".join(f"{cell(r):>{width}}" for r in runs.values()))

    row("wall s", lambda r: f"{r['wall']:.1f}")
    row("anchor s (slowest)", lambda r: f"{max(r['busy'].values()):.1f}")
    row("ratio wall/anchor", lambda r: f"{r['wall'] / max(r['busy'].values()):.2f}×")
    row("first item out s", lambda r: f"{r['first_out']:.1f}")
    row("first shard s", lambda r: "–" if r["first_shard"] is None else f"{r['first_shard']:.1f}")
    print("busy fraction")
    for name in next(iter(runs.values()))["busy"]:
        row(f"  {name}", lambda r, name=name: f"{r['busy'][name] / r['wall']:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-items", type=int, default=32)
    parser.add_argument("--demo-videos", type=int, default=9, help="sample videos per keyword (0: no demo run)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    args = parser.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if any(engine.endswith("-ray") for engine in args.engines):
        import ray

        ray.init(include_dashboard=False, logging_level="WARNING")  # start-up excluded from every wall time
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")

    toy = toy_pipeline(args.toy_items)
    runs = {engine: measure(engine, toy) for engine in args.engines}
    one_by_one, at_once = toy_bounds(args.toy_items)
    print_table(f"toy pipeline: {args.toy_items} items, sleeps of {list(TOY_STAGES.values())} s per item, pools of "
                f"{TOY_POOL}; bounds from its configuration: one stage after another {one_by_one:.1f} s, all at once "
                f"{at_once:.1f} s", runs)

    if args.demo_videos:
        demo = demo_pipeline(args.demo_videos)
        runs = {engine: measure(engine, demo) for engine in args.engines}
        print_table(f"demo pipeline (pipelines/demo.yaml, {args.demo_videos} sample videos per keyword)", runs)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main(sys.argv[1:])
