"""Toy stages for the engine tests: numbers instead of videos, so the engine logic is tested fast.

ToySource lists `count` numbers; ToySquare squares them (failing on configured items for a configured number of
attempts) and rejects squares below a threshold; ToySum writes one aggregate file; ToyFrames is a model-style
stage that `prepare`s numpy frames on CPU and sums them in `process_batch`; ToyEnv reports an environment
variable as its worker sees it. Each `process` call is counted in a file, so tests can prove what was (not)
recomputed.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from humove.schemas.records import RecordSchema
from humove.stage import AggregateStage, MapStage, Reads, Rejection, Resources, StageConfig, decision, listing

SOURCE_SCHEMA = RecordSchema("toy_source", 1, "video_id", (pa.field("number", pa.int64()),))
SQUARE_SCHEMA = RecordSchema("toy_square", 1, "clip_id", (pa.field("video_id", pa.string()),
                                                          pa.field("square", pa.int64())))
SUM_SCHEMA = RecordSchema("toy_sum", 1, "clip_id", (pa.field("total", pa.int64()),))
FRAMES_SCHEMA = RecordSchema("toy_frames", 1, "clip_id", (
    pa.field("video_id", pa.string()), pa.field("frames_sum", pa.int64()), pa.field("frames_type", pa.string()),
    pa.field("prepare_pid", pa.int64()), pa.field("model_pid", pa.int64()), pa.field("batch_items", pa.int64()),
))
ENV_SCHEMA = RecordSchema("toy_env", 1, "clip_id", (
    pa.field("video_id", pa.string()), pa.field("env_value", pa.string()), pa.field("pid", pa.int64())))


def _calls_path(run_dir: str, stage: str) -> Path:
    # Object-store run dirs (memory://) keep their call log in a local folder the test names.
    root = os.environ.get("TOY_CALLS_DIR") if "://" in str(run_dir) else run_dir
    return Path(root) / "calls" / f"{stage}.jsonl"


def _count_call(run_dir: str, stage: str, item_id: str) -> None:
    path = _calls_path(run_dir, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(item_id) + "\n")


def calls(run_dir, stage: str) -> list[str]:
    path = _calls_path(run_dir, stage)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class SourceConfig(StageConfig):
    count: int = listing(10, "how many numbers to list")
    unreadable: list[int] = []


class ToySource(MapStage):
    name = "toy_source"
    version = "1"
    schema = SOURCE_SCHEMA
    Config = SourceConfig
    is_source = True
    resources = Resources(batch_size=3)

    def list_inputs(self):
        return [{"input_id": f"n{i:03d}", "number": i} for i in range(self.config.count)]

    def process(self, item):
        _count_call(self.context.run_dir, self.name, item["input_id"])
        if item["number"] in self.config.unreadable:
            return self.reject(f"v{item['number']}", "unreadable", detail="toy unreadable input")
        return self.ok(f"v{item['number']}", number=item["number"])


class SquareConfig(StageConfig):
    crash_numbers: list[int] = []  # the worker process dies (as on a segfault) on these
    fail_numbers: list[int] = []
    fail_attempts: int = 1         # fail this many times, then succeed
    slow_seconds: float = 0.0
    multiplier: int = 1
    setup_command: list[str] = []  # run once per worker in setup(), as `import scenedetect` runs `ffmpeg`
    missing_weights: str = ""      # setup() fails as a stage whose weight file is missing
    log_nodes: bool = False        # note the Ray node each item runs on (calls/toy_square.nodes)
    wait_numbers: list[int] = []   # on these, wait (up to `wait_seconds`) until toy_echo has run an item
    wait_seconds: float = 20.0
    hold_while: str = ""           # each item waits (up to `wait_seconds`) while this file exists
    min_square: int = decision(0, "reject squares below this")


class ToySquare(MapStage):
    name = "toy_square"
    version = "1"
    schema = SQUARE_SCHEMA
    Config = SquareConfig
    resources = Resources(batch_size=2)

    def setup(self):
        if self.config.setup_command:
            subprocess.call(self.config.setup_command)
        if self.config.missing_weights:
            raise FileNotFoundError(f"toy_square: weight file {self.config.missing_weights} does not exist")

    def process(self, item):
        _count_call(self.context.run_dir, self.name, item["input_id"])
        if item["number"] in self.config.crash_numbers:
            os._exit(1)
        failures = calls(self.context.run_dir, self.name).count(item["input_id"])
        if item["number"] in self.config.fail_numbers and failures <= self.config.fail_attempts:
            raise RuntimeError(f"toy failure for {item['number']}")
        if self.config.log_nodes:
            import ray

            with open(_calls_path(self.context.run_dir, self.name).with_suffix(".nodes"), "a") as handle:
                handle.write(f"{item['input_id']} {ray.get_runtime_context().get_node_id()}\n")
        time.sleep(self.config.slow_seconds)
        deadline = time.monotonic() + self.config.wait_seconds
        while self.config.hold_while and os.path.exists(self.config.hold_while) and time.monotonic() < deadline:
            time.sleep(0.05)
        if item["number"] in self.config.wait_numbers:
            deadline = time.monotonic() + self.config.wait_seconds
            while not calls(self.context.run_dir, "toy_echo") and time.monotonic() < deadline:
                time.sleep(0.05)
            _count_call(self.context.run_dir, "toy_square_waited", bool(calls(self.context.run_dir, "toy_echo")))
        square = item["number"] ** 2 * self.config.multiplier
        # Two clips per video, to exercise fan-out.
        return [self.ok(f"{item['video_id']}-{k}", video_id=item["video_id"], square=square) for k in (0, 1)]

    def decide(self, record):
        if record["square"] < self.config.min_square:
            return Rejection("square_below_min", record["square"])
        return None


class ToySum(AggregateStage):
    name = "toy_sum"
    version = "1"
    schema = SUM_SCHEMA

    def run(self, inputs):
        _count_call(self.context.run_dir, self.name, "all")
        total = sum(item["square"] + item["number"] for item in inputs)
        storage = self.context.storage
        storage.write_text(storage.join("toy_sum.json"), json.dumps({"total": total, "n": len(inputs)}))
        return [self.ok(item["clip_id"], total=total) for item in inputs]


class FramesConfig(StageConfig):
    undecodable: list[int] = []  # prepare() raises on these numbers
    crash_numbers: list[int] = []  # the preparing worker process dies on these (a decoder segfault)


class ToyFrames(MapStage):
    """Model-style stage: `prepare` makes (2, 4, 4, 3) uint8 frames of the item's number (CPU work), the
    "model" sums them per item in one stacked batch. Records say which process prepared and which ran the model."""

    name = "toy_frames"
    version = "1"
    schema = FRAMES_SCHEMA
    Config = FramesConfig
    resources = Resources(num_cpus=0.5, batch_size=3, concurrency=1)
    prepare_resources = Resources(num_cpus=0.5, batch_size=2)

    def prepare(self, item):
        if item["number"] in self.config.crash_numbers:
            os._exit(1)
        if item["number"] in self.config.undecodable:
            raise ValueError(f"toy undecodable input {item['number']}")
        frames = np.full((2, 4, 4, 3), item["number"], np.uint8)
        return {**item, "frames": frames, "prepare_pid": os.getpid()}

    def process_batch(self, items):
        kinds = [f"{type(item['frames']).__name__}:{getattr(item['frames'], 'dtype', None)}" for item in items]
        stacked = np.stack([np.asarray(item["frames"]) for item in items])  # (B, 2, 4, 4, 3)
        sums = stacked.reshape(len(items), -1).astype(np.int64).sum(axis=1)
        return [self.ok(f"{item['video_id']}-f", video_id=item["video_id"], frames_sum=int(total), frames_type=kind,
                        prepare_pid=item["prepare_pid"], model_pid=os.getpid(), batch_items=len(items))
                for item, total, kind in zip(items, sums, kinds, strict=True)]


class EnvConfig(StageConfig):
    variable: str = "HUMOVE_TOY_VALUE"


class ToyEnv(MapStage):
    """Reports, per item, the value of an environment variable in the process that ran it (None: unset)."""

    name = "toy_env"
    version = "1"
    schema = ENV_SCHEMA
    Config = EnvConfig
    resources = Resources(batch_size=4)

    def process(self, item):
        value = os.environ.get(self.config.variable)
        return self.ok(f"{item['video_id']}-env", video_id=item["video_id"], env_value=value, pid=os.getpid())


ECHO_SCHEMA = RecordSchema("toy_echo", 1, "clip_id", (pa.field("seen", pa.string()),))
READER_SCHEMA = RecordSchema("toy_reader", 1, "clip_id", (pa.field("read", pa.string()),))


class ReaderConfig(StageConfig):
    reads: list[str] | None = None  # the upstream columns it declares (None: everything upstream)


class ToyReader(MapStage):
    """Declares `config.reads` as what it reads of the upstream records and records exactly those values."""

    name = "toy_reader"
    version = "1"
    schema = READER_SCHEMA
    Config = ReaderConfig
    resources = Resources(batch_size=2)

    @classmethod
    def reads(cls, config: ReaderConfig) -> Reads | None:
        return None if config.reads is None else Reads(config.reads)

    def process(self, item):
        _count_call(self.context.run_dir, self.name, item["input_id"])
        return self.ok(item["clip_id"], read=json.dumps({name: item[name] for name in self.config.reads or []}))


class ToyEcho(MapStage):
    """Records the input item exactly as it was handed over (JSON, keys sorted): what the engine joined for it."""

    name = "toy_echo"
    version = "1"
    schema = ECHO_SCHEMA
    resources = Resources(batch_size=2)

    def process(self, item):
        _count_call(self.context.run_dir, self.name, item["input_id"])
        return self.ok(item["clip_id"], seen=json.dumps(item, sort_keys=True))
