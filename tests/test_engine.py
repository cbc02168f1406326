"""Engine: resume, retries, quarantine, threshold re-decisions, invalidation, locking, joins (toy stages)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
import yaml
from toy_stages import calls

from humove.config import ConfigError, load_pipeline, stage_sources
from humove.engine import Runner, joined_inputs, stage_fingerprints
from humove.items import all_items
from humove.ledger import Ledger
from humove.lock import RunLock, RunLockedError
from humove.progress import Progress
from humove.registry import BUILTIN_STAGES, load_stage_class
from humove.stage import Resources, fingerprint


def write_pipeline(tmp_path: Path, source=None, square=None, max_attempts=3, with_sum=True) -> Path:
    stages = [
        {"stage": "toy_stages:ToySource", "config": source or {}},
        {"stage": "toy_stages:ToySquare", "config": square or {}},
    ]
    if with_sum:
        stages.append({"stage": "toy_stages:ToySum"})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "run": {"max_attempts": max_attempts, "executor": "local"},
                                    "stages": stages}))
    return path


def run(path, run_dir, **kwargs):
    config, stages = load_pipeline(path, kwargs.pop("overrides", None))
    return Runner(config, stages, str(run_dir), **kwargs).run()


def by_status(run_dir, stage):
    return {r["id"]: r for r in Ledger(str(run_dir)).records(stage).to_pylist()}


def test_full_run_joins_fanout_and_aggregates(tmp_path):
    run_dir = tmp_path / "run"
    run(write_pipeline(tmp_path, source={"count": 5, "unreadable": [2]}), run_dir)
    source = by_status(run_dir, "toy_source")
    assert source["v2"]["status"] == "rejected" and source["v2"]["reason"] == "unreadable"
    squares = by_status(run_dir, "toy_square")
    assert sorted(squares) == sorted(f"v{n}-{k}" for n in (0, 1, 3, 4) for k in (0, 1))
    assert squares["v3-1"]["square"] == 9 and squares["v3-1"]["input_id"] == "v3"
    total = json.loads((run_dir / "toy_sum.json").read_text())
    assert total == {"total": 2 * sum(n * n + n for n in (0, 1, 3, 4)), "n": 8}
    summary = {s.stage: s for s in Ledger(str(run_dir)).summary()}
    assert summary["toy_source"].ok == 4 and summary["toy_source"].rejected == {"unreadable": 1}
    assert summary["toy_square"].ok == 8 and summary["toy_square"].pending == 0


def test_rerun_skips_done_items_and_picks_up_new_inputs(tmp_path):
    run_dir = tmp_path / "run"
    run(write_pipeline(tmp_path, source={"count": 4}), run_dir)
    assert len(calls(run_dir, "toy_square")) == 4
    run(write_pipeline(tmp_path, source={"count": 4}), run_dir)
    assert len(calls(run_dir, "toy_square")) == 4, "a re-run must not recompute finished items"
    assert calls(run_dir, "toy_sum") == ["all"], "the aggregate reruns only when its inputs change"
    # The source lists more inputs: only the new ones are processed.
    run(write_pipeline(tmp_path, source={"count": 6}), run_dir, force=[])
    assert sorted(calls(run_dir, "toy_square")) == ["v0", "v1", "v2", "v3", "v4", "v5"]
    assert calls(run_dir, "toy_sum") == ["all", "all"]


def test_one_failing_item_does_not_fail_its_batch_and_is_retried(tmp_path):
    run_dir = tmp_path / "run"
    pipeline = write_pipeline(tmp_path, source={"count": 4}, square={"fail_numbers": [1], "fail_attempts": 1})
    run(pipeline, run_dir)
    records = by_status(run_dir, "toy_square")
    assert records["v1"]["status"] == "error" and records["v1"]["error_type"] == "RuntimeError"
    assert "toy failure for 1" in records["v1"]["error_message"] and records["v1"]["attempt"] == 1
    assert records["v0-0"]["status"] == "ok", "the batch-mate of the failing item must succeed"
    run(pipeline, run_dir)  # second attempt succeeds
    records = by_status(run_dir, "toy_square")
    assert "v1" not in records and records["v1-0"]["attempt"] == 2 and records["v1-0"]["status"] == "ok"


def test_errors_are_quarantined_after_max_attempts(tmp_path):
    run_dir = tmp_path / "run"
    pipeline = write_pipeline(tmp_path, source={"count": 3}, square={"fail_numbers": [2], "fail_attempts": 99},
                              max_attempts=2)
    for _ in range(4):
        run(pipeline, run_dir)
    assert calls(run_dir, "toy_square").count("v2") == 2, "no attempts beyond max_attempts"
    summary = {s.stage: s for s in Ledger(str(run_dir)).summary()}
    assert summary["toy_square"].quarantined == 1 and summary["toy_square"].error == 0
    assert by_status(run_dir, "toy_square")["v2"]["error_message"].startswith("toy failure for 2")


def test_threshold_change_redecides_without_recomputing(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run(write_pipeline(tmp_path, source={"count": 5}), run_dir)
    before = len(calls(run_dir, "toy_square"))
    run(write_pipeline(tmp_path, source={"count": 5}, square={"min_square": 5}), run_dir)
    assert len(calls(run_dir, "toy_square")) == before, "a threshold change must not recompute measures"
    records = by_status(run_dir, "toy_square")
    assert records["v1-0"]["status"] == "rejected" and records["v1-0"]["reason"] == "square_below_min"
    assert records["v1-0"]["value"] == 1 and records["v3-0"]["status"] == "ok"
    assert len(by_status(run_dir, "toy_sum")) == 4, "downstream sees only what is still kept"
    # Lower it again: the rejected ones come back without recomputing.
    run(write_pipeline(tmp_path, source={"count": 5}, square={"min_square": 0}), run_dir)
    assert by_status(run_dir, "toy_square")["v1-0"]["status"] == "ok"
    assert len(calls(run_dir, "toy_square")) == before


def test_config_change_invalidates_stage_and_downstream(tmp_path):
    run_dir = tmp_path / "run"
    messages = []

    class Recorder:
        def message(self, text): messages.append(text)
        def start(self, *a): pass
        def advance(self, *a): pass
        def finish(self, *a): pass

    run(write_pipeline(tmp_path, source={"count": 3}), run_dir)
    run(write_pipeline(tmp_path, source={"count": 3}, square={"multiplier": 2}), run_dir, progress=Recorder())
    assert "stage 'toy_square' config changed (multiplier): invalidating toy_square" in messages, messages
    assert "stage 'toy_sum' reads toy_square (all of it): invalidating toy_sum" in messages, messages
    assert by_status(run_dir, "toy_square")["v2-0"]["square"] == 8
    assert len(calls(run_dir, "toy_source")) == 3, "upstream of the change is kept"
    assert calls(run_dir, "toy_sum") == ["all", "all"]
    run(write_pipeline(tmp_path, source={"count": 3}, square={"multiplier": 2}), run_dir, force=["toy_square"])
    assert len(calls(run_dir, "toy_square")) == 9


def test_overrides_and_bad_config_errors(tmp_path):
    path = write_pipeline(tmp_path)
    config, stages = load_pipeline(path, ["toy_source.count=7"])
    assert stages[0].config.count == 7
    with pytest.raises(ConfigError, match="toy_square"):
        load_pipeline(path, ["toy_square.no_such_field=1"])
    with pytest.raises(ConfigError, match="no stage"):
        load_pipeline(path, ["nope.count=1"])


DEMO = Path(__file__).resolve().parent.parent / "pipelines" / "demo.yaml"


def test_a_value_the_run_would_not_read_is_an_error_naming_the_stage_and_what_to_run(tmp_path):
    """demo.yaml starts at keywords: its ingest works on what download fetched and never reads `ingest.source`.
    Before, `--set ingest.source=DIR` was accepted and written to ingest/_stage.json while DIR was never looked at."""
    with pytest.raises(ConfigError) as caught:
        load_pipeline(DEMO, ["ingest.source=/data/videos"])
    assert str(caught.value) == (
        "--set ingest.source=/data/videos: pipeline 'demo' starts at 'keywords', so 'ingest' works on the records "
        "of 'download' and never reads source — to start at ingest, add `--from ingest` (leaves out keywords, "
        "download)")
    with pytest.raises(ConfigError, match=r"--set ingest.extensions=\[.mkv\]: .* never reads extensions"):
        load_pipeline(DEMO, ["ingest.extensions=[.mkv]"])
    overlay = tmp_path / "mine.yaml"  # the same value in a pipeline file: named by the file
    overlay.write_text(yaml.safe_dump({"extends": str(DEMO), "stages": [{"stage": "ingest",
                                                                        "config": {"source": "/data/videos"}}]}))
    with pytest.raises(ConfigError, match=rf"^{overlay}: stage 'ingest' sets source: .* add `--from ingest`"):
        load_pipeline(overlay)
    # What the message says to run works: the pipeline starts at ingest, on the user's folder.
    config, stages = load_pipeline(DEMO, ["ingest.source=/data/videos"], start="ingest")
    assert [s.name for s in stages][:2] == ["ingest", "shots"] and stages[0].config.source == "/data/videos"
    assert load_pipeline(overlay, start="ingest")[1][0].config.source == "/data/videos"
    # --from names a stage that lists its own inputs, and overrides of the stages it leaves out are errors.
    with pytest.raises(ConfigError, match="^--from shots: .* start at a stage that lists its own inputs: keywords, "
                                          "download, ingest$"):
        load_pipeline(DEMO, start="shots")
    with pytest.raises(ConfigError, match="--from nope: no stage 'nope'"):
        load_pipeline(DEMO, start="nope")
    with pytest.raises(ConfigError, match="'download.proxy=x': stage 'download' does not run: --from leaves out "
                                          "keywords, download"):
        load_pipeline(DEMO, ["download.proxy=x"], start="ingest")
    # A source's own listing fields are read.
    assert load_pipeline(DEMO, ["keywords.categories=[Sports]"])[1][0].config.categories == ["Sports"]
    # An aggregate stage (shards) runs in the driver: resources given to it would be ignored.
    with pytest.raises(ConfigError, match=r"^--set shards.resources.num_cpus=8: 'shards' runs in the driver, on all "
                                          "its inputs at once, so no resources apply to it — remove them$"):
        load_pipeline(DEMO, ["shards.resources.num_cpus=8"])


def test_a_pipeline_must_start_at_a_stage_that_lists_its_inputs(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "stages": [{"stage": "toy_stages:ToySquare"}]}))
    with pytest.raises(ConfigError, match="stage 'toy_square' cannot start a pipeline"):
        load_pipeline(path)


def test_concurrent_run_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with RunLock(str(run_dir)):
        with pytest.raises(RunLockedError, match="in use"):
            run(write_pipeline(tmp_path), run_dir)
    run(write_pipeline(tmp_path, source={"count": 1}), run_dir)  # free again afterwards


def test_duplicate_content_is_rejected_once(tmp_path):
    from toy_stages import ToySource

    class TwinSource(ToySource):  # two inputs that produce the same id
        def process(self, item):
            return self.ok("same", number=1)

    from humove.ledger import Ledger as L
    from humove.stage import StageContext
    from humove.worker import finalize, records_to_table

    stage = TwinSource(TwinSource.Config(), StageContext(str(tmp_path), "toy_source"))
    ledger = L(str(tmp_path))
    for input_id in ("b", "a"):
        records = finalize(stage, {"input_id": input_id}, stage.process({}), attempt=1)
        ledger.append("toy_source", records_to_table(stage, records))
    records = ledger.records("toy_source", schema=stage.schema).to_pylist()
    assert [(r["input_id"], r["status"], r["reason"]) for r in records] == [
        ("a", "ok", None), ("b", "rejected", "duplicate")]


def test_object_store_run_dir(tmp_path, monkeypatch):
    """The same code path on an fsspec object store (memory://), as for s3:// and gs://."""
    monkeypatch.setenv("TOY_CALLS_DIR", str(tmp_path))
    run_dir = "memory://humove-test/run"
    run(write_pipeline(tmp_path, source={"count": 3}), run_dir)
    ledger = Ledger(run_dir)
    assert {s.stage: s.ok for s in ledger.summary()} == {"toy_source": 3, "toy_square": 6, "toy_sum": 6}
    assert ledger.storage.exists(ledger.storage.join("toy_sum.json"))


def test_ray_executor_runs_the_same_pipeline(tmp_path):
    run_dir = tmp_path / "run"
    pipeline = write_pipeline(tmp_path, source={"count": 6}, square={"fail_numbers": [4], "fail_attempts": 5})
    run(pipeline, run_dir, executor="ray")
    records = by_status(run_dir, "toy_square")
    assert records["v4"]["status"] == "error" and records["v5-1"]["square"] == 25
    assert sum(r["status"] == "ok" for r in records.values()) == 10


def test_a_worker_process_that_dies_fails_only_its_item(tmp_path, monkeypatch):
    """A segfault or OOM kill in one item must not hang the run or fail its batch-mates. The work goes the way of
    a large run (every other Ray test hands its small work over from the driver): Ray tasks read it from the run
    dir's work files, several batches a task, and the re-run of the dead batch's items one batch a task."""
    from humove import executors

    monkeypatch.setattr(executors, "DIRECT_ROWS", 0)
    run_dir = tmp_path / "run"
    pipeline = write_pipeline(tmp_path, source={"count": 6}, square={"crash_numbers": [3]}, with_sum=False)
    run(pipeline, run_dir, executor="ray")
    records = by_status(run_dir, "toy_square")
    assert records["v3"]["status"] == "error" and records["v3"]["error_type"] == "WorkerDied"
    assert records["v2-0"]["status"] == "ok", "the crashing item's batch-mate is processed"
    assert sum(r["status"] == "ok" for r in records.values()) == 10


def test_inputs_dropped_from_the_listing_leave_the_dataset(tmp_path):
    run_dir = tmp_path / "run"
    run(write_pipeline(tmp_path, source={"count": 5}), run_dir)
    run(write_pipeline(tmp_path, source={"count": 3}), run_dir)
    total = json.loads((run_dir / "toy_sum.json").read_text())
    assert total["n"] == 6, "clips of unlisted inputs must not reach the aggregate"
    summary = {s.stage: s for s in Ledger(str(run_dir)).summary()}
    assert summary["toy_source"].ok == 3 and summary["toy_square"].ok == 6
    assert len(calls(run_dir, "toy_square")) == 5, "nothing was recomputed"


def test_a_resume_with_nothing_to_do_does_not_start_an_executor(tmp_path):
    run_dir = tmp_path / "run"
    pipeline = write_pipeline(tmp_path, source={"count": 2})
    run(pipeline, run_dir)
    config, stages = load_pipeline(pipeline)
    runner = Runner(config, stages, str(run_dir), executor="ray")
    runner.run()
    assert runner._started_executor is None


def test_object_store_lock_refuses_a_second_run_and_releases_only_its_own(tmp_path):
    run_dir = "memory://humove-lock-test/run"
    with RunLock(run_dir):
        with pytest.raises(RunLockedError, match="--break-lock"):
            RunLock(run_dir).__enter__()
    with RunLock(run_dir) as first:
        with RunLock(run_dir, break_lock=True):  # takes over a lock it believes dead
            first.__exit__(None, None, None)      # the old holder's exit must not free the new holder's lock
            with pytest.raises(RunLockedError):
                RunLock(run_dir).__enter__()
    assert not Ledger(run_dir).storage.exists(Ledger(run_dir).storage.join(".lock"))


def test_leftover_temp_files_are_removed_when_a_run_starts(tmp_path):
    """A SIGKILL mid-write leaves `<stage>/part-*.parquet.tmp-*`, a full disk `artifacts/<stage>/*.tmp-*`."""
    run_dir = tmp_path / "run"
    pipeline = write_pipeline(tmp_path, source={"count": 2}, with_sum=False)
    run(pipeline, run_dir)
    parts = sorted(p.name for p in (run_dir / "toy_square").glob("part-*.parquet"))
    leftovers = [run_dir / "toy_square" / "part-00000000000000000001-deadbeef.parquet.tmp-0a1b2c3d",
                 run_dir / "artifacts" / "toy_square" / "sub" / "v0-0.mp4.tmp-12345678",
                 run_dir / "run.json.tmp-ffffffff"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    messages = []

    class Recorder:
        def message(self, text): messages.append(text)
        def start(self, *a): pass
        def advance(self, *a): pass
        def finish(self, *a): pass

    run(pipeline, run_dir, progress=Recorder())
    assert not any(path.exists() for path in leftovers)
    assert sorted(p.name for p in (run_dir / "toy_square").glob("part-*.parquet")) == parts
    assert any("removed 3 temp files" in m for m in messages), messages


def test_current_records_on_disk_agree_with_status_after_a_redecision(tmp_path):
    import pyarrow.parquet as pq

    run_dir = tmp_path / "run"
    run(write_pipeline(tmp_path, source={"count": 5}), run_dir)
    run(write_pipeline(tmp_path, source={"count": 5}, square={"min_square": 5}), run_dir)
    ledger = Ledger(str(run_dir))
    summary = {s.stage: s for s in ledger.summary()}
    for stage in ("toy_source", "toy_square", "toy_sum"):
        on_disk = pq.read_table(run_dir / stage / "current.parquet")
        rows = sorted((r["id"], r["status"], r["reason"]) for r in on_disk.to_pylist())
        assert rows == sorted((r["id"], r["status"], r["reason"]) for r in ledger.current()[stage].to_pylist())
        statuses = [r[1] for r in rows]
        assert statuses.count("ok") == summary[stage].ok
        assert statuses.count("rejected") == sum(summary[stage].rejected.values())
    squares = {r["id"]: r for r in pq.read_table(run_dir / "toy_square" / "current.parquet").to_pylist()}
    assert squares["v1-0"]["status"] == "rejected" and squares["v1-0"]["reason"] == "square_below_min"
    assert len(pq.read_table(run_dir / "toy_sum" / "current.parquet")) == 4


def fail_writes_into(monkeypatch, folder: str, error: OSError, where: str = "fsync") -> None:
    """Fake OS refusals for files under `folder`: at fsync (a full disk reports there, naming no file) or at
    open (a read-only file system, a permission error). Other files are written normally."""
    import os

    import humove.storage

    if where == "fsync":
        real_fsync = os.fsync

        def fake_fsync(fd):
            if folder in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(error.errno, error.strerror)
            return real_fsync(fd)

        monkeypatch.setattr(humove.storage.os, "fsync", fake_fsync)
    else:
        def fake_open(path, *args, **kwargs):
            if folder in str(path):
                raise type(error)(error.errno, error.strerror, str(path))
            return open(path, *args, **kwargs)

        monkeypatch.setattr(humove.storage, "open", fake_open, raising=False)


def test_a_full_disk_names_the_stage_and_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    import errno

    from humove.engine import RunStorageError

    run_dir = tmp_path / "run"
    fail_writes_into(monkeypatch, f"{run_dir}/toy_square/", OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(RunStorageError) as caught:
        run(write_pipeline(tmp_path, source={"count": 2}), run_dir)
    error = caught.value
    assert error.stage == "toy_square" and error.reason == "No space left on device"
    assert error.path == f"{run_dir}/toy_square/_stage.json", "the file being written, not its temp name"
    assert str(error) == f"toy_square: {error.path}: No space left on device"
    assert not [p for p in run_dir.rglob("*") if ".tmp-" in p.name]


def test_a_corrupt_part_file_is_named(tmp_path):
    from humove.ledger import LedgerError

    run_dir = tmp_path / "run"
    run(write_pipeline(tmp_path, source={"count": 2}), run_dir)
    bad = run_dir / "toy_square" / "part-00000000000000000000-corrupt0.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(LedgerError, match=str(bad)):
        Ledger(str(run_dir)).summary()


def test_prepare_runs_in_its_own_cpu_workers_on_ray(tmp_path):
    """A model stage's `prepare` (decode, crop) runs in CPU workers of its own, streaming numpy rows into the
    model's pool; a failing `prepare` is that item's own error record."""
    import os

    run_dir = tmp_path / "run"
    path = tmp_path / "pipeline.yaml"
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": 7}},
              {"stage": "toy_stages:ToyFrames", "config": {"undecodable": [4]}}]
    path.write_text(yaml.safe_dump({"name": "frames", "run": {"executor": "ray"}, "stages": stages}))
    run(path, run_dir)
    records = by_status(run_dir, "toy_frames")
    assert records["v4"]["status"] == "error" and records["v4"]["error_type"] == "ValueError"
    assert "toy undecodable input 4" in records["v4"]["error_message"]
    ok = [r for r in records.values() if r["status"] == "ok"]
    assert sorted(r["id"] for r in ok) == [f"v{n}-f" for n in (0, 1, 2, 3, 5, 6)]
    assert all(r["frames_sum"] == int(r["id"][1]) * 2 * 4 * 4 * 3 for r in ok)
    assert {r["frames_type"] for r in ok} == {"ndarray:uint8"}, "prepared rows must arrive as numpy arrays"
    assert all(r["prepare_pid"] != r["model_pid"] for r in ok), "prepare must run outside the model's actors"
    assert len({r["model_pid"] for r in ok}) == 1, "the model's pool is fixed (concurrency 1)"
    assert max(r["batch_items"] for r in ok) > 1, "the model gets batches of prepared rows"
    assert os.getpid() not in {r["model_pid"] for r in ok}
    # The local executor keeps preparation inline, in the same process as the model.
    local_dir = tmp_path / "local"
    run(path, local_dir, executor="local")
    local = [r for r in by_status(local_dir, "toy_frames").values() if r["status"] == "ok"]
    assert {r["prepare_pid"] for r in local} == {r["model_pid"] for r in local} == {os.getpid()}


def test_a_preparing_worker_that_dies_fails_only_its_item(tmp_path):
    """A decoder crash kills the CPU worker running `prepare`: only that item gets an error (`WorkerDied`)."""
    path = tmp_path / "pipeline.yaml"
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": 6}},
              {"stage": "toy_stages:ToyFrames", "config": {"crash_numbers": [5]}}]
    path.write_text(yaml.safe_dump({"name": "frames", "run": {"executor": "ray"}, "stages": stages}))
    run(path, tmp_path / "run")
    records = by_status(tmp_path / "run", "toy_frames")
    assert records["v5"]["status"] == "error" and records["v5"]["error_type"] == "WorkerDied"
    assert sorted(r["id"] for r in records.values() if r["status"] == "ok") == [f"v{n}-f" for n in range(5)]


def test_prepare_stays_in_the_model_workers_when_the_cluster_cannot_hold_both_pools():
    from types import SimpleNamespace

    from humove.executors import RayExecutor
    from humove.stage import Resources

    executor = RayExecutor.__new__(RayExecutor)  # no Ray started: a fake cluster of 2 CPUs
    executor._ray = SimpleNamespace(cluster_resources=lambda: {"CPU": 2.0})
    prepare = Resources(num_cpus=1)
    assert executor.fits_side_by_side(Resources(num_cpus=1), prepare)
    assert not executor.fits_side_by_side(Resources(num_cpus=1.5), prepare)


def test_ray_lines_about_failures_humove_handles_leave_the_terminal_and_every_other_ray_line_stays(monkeypatch):
    """Ray 2.60's GCS logs `Failed to kill actor … Socket closed` when a finished pool's actor exits before it
    answers the stop (its normal path; a growing pool stops actors still starting too); a raylet says a task is
    retried, a worker died, a node is dead. Those go to the debug log, a dead node as one line of ours (once per
    node), everything else is printed as before: the log monitor's lines (the dispatcher) and the cluster's error
    messages (`print_to_stdstream`) alike."""
    import logging

    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    from humove import executors

    printed, said = [], []
    benign = ("[2026-12-01 22:51:33,262 E 13421 13421] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill actor "
              "cdc6e2, return status: Invalid: KillActor RPC failed for actor cdc6e2: RpcError: Socket closed")
    reset = ("[2026-12-06 19:47:47,483 E 5131 5131] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill actor "
             "aceae9, return status: Invalid: KillActor RPC failed for actor aceae9: RpcError: RPC error: "
             "recvmsg:Connection reset by peer rpc_code: 14")  # the same race, seen as a reset
    cancelled = ("[2026-12-06 20:10:26,552 E 8818 8818] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill actor "
                 "5e1a46, return status: Invalid: KillActor RPC failed for actor 5e1a46: RpcError: RPC error: "
                 "Cancelling all calls rpc_code: 14")  # and as the channel closes (a growing pool's last actors)
    deadline = ("[2026-12-06 20:10:26,552 E 8818 8818] (gcs_server) gcs_actor_scheduler.cc:538: Failed to kill actor "
                "5e1a46, return status: Invalid: KillActor RPC failed for actor 5e1a46: RpcError: RPC error: "
                "Deadline Exceeded rpc_code: 4")  # not that race: printed
    real = "[2026-12-01 22:51:34,000 E 13421 13421] (gcs_server) gcs_server.cc:1: node died"
    retried = ("Task MapWorker(MapBatches(StageWorker)).submit failed. There are 2 retries remaining, so the task "
               "will be retried. Error: The actor is temporarily unavailable: RpcError: RPC error: Socket closed")
    worker_died = "A worker died or was killed while executing a task by an unexpected system error. Lease ID: 0e"
    dead = ("The node with node id: f0a2a083c9b0a74c and address: 10.0.0.7 and node name: 10.0.0.7 has been marked "
            "dead because the detector has missed too many heartbeats from it. This can happen when a \t(1) raylet "
            "crashes unexpectedly (OOM, etc.) \n\t(2) raylet has lagging heartbeats due to slow network.")
    monkeypatch.setattr(executors, "_lost_nodes", set())
    monkeypatch.setattr(ray_worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(data))
    saved = list(dispatcher.handlers)
    try:
        dispatcher.handlers = [("ray_print_logs", printed.append)]
        executors._divert_handled_ray_lines(said.append)
        executors._divert_handled_ray_lines(said.append)  # idempotent: one wrapper, not two
        dispatcher.emit({"pid": "gcs_server", "is_err": True, "lines": [benign, real]})
        dispatcher.emit({"pid": "gcs_server", "is_err": True, "lines": [benign, reset]})
        dispatcher.emit({"pid": "gcs_server", "is_err": True, "lines": [cancelled, deadline]})
        dispatcher.emit({"pid": 4242, "is_err": True, "lines": [benign, retried]})  # a worker's own lines stay
        for line in (retried, worker_died, dead, dead):  # the error messages' path, with Ray's own arguments
            ray_worker.print_to_stdstream({"lines": [line], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    finally:
        dispatcher.handlers = saved
    assert [batch["lines"] for batch in printed] == [[real], [deadline], [benign, retried]]
    assert printed[2]["pid"] == 4242
    assert said == ["lost Ray node f0a2a083 (10.0.0.7): the items it was running run again on the others"]
    # Ray Data's record of each batch it skipped because its worker died: map() runs those items again.
    shown = []
    handler = logging.Handler()
    handler.emit = shown.append
    ray_data = logging.getLogger("ray.data._internal.execution.streaming_executor_state")
    ray_data.addHandler(handler)
    try:
        ray_data.error('An exception was raised from a task of operator "MapBatches(StageWorker)". Ignoring this '
                       'exception with remaining max_errored_blocks=unlimited.')
        ray_data.error('An exception was raised from a task of operator "X". Dataset execution will now abort.')
    finally:
        ray_data.removeHandler(handler)
    assert [record.getMessage() for record in shown] == [
        'An exception was raised from a task of operator "X". Dataset execution will now abort.']


def test_a_source_may_list_its_inputs_as_a_generator_and_items_round_trip(tmp_path):
    """A long listing streams into Arrow chunk by chunk; each item comes back to the worker as it was listed."""
    from humove import items as items_module
    from humove.items import ATTEMPT, LISTING_SCHEMA, WorkFile, listing_chunks
    from humove.storage import Storage

    listed = ({"input_id": f"n{n:03d}", "number": n, "tags": ["a", str(n)], "meta": {"k": n}} for n in range(7))
    saved, items_module.LISTING_CHUNK = items_module.LISTING_CHUNK, 3  # several chunks
    try:
        table = pa.concat_tables([LISTING_SCHEMA.empty_table(), *listing_chunks(listed)])
    finally:
        items_module.LISTING_CHUNK = saved
    assert table.num_rows == 7 and table["input_id"].to_pylist() == [f"n{n:03d}" for n in range(7)]
    work = table.append_column(ATTEMPT, pa.array([1, 2, 1, 1, 3, 1, 1], pa.int32()))
    batches = list(WorkFile.write(Storage(str(tmp_path)), str(tmp_path / "work"), work.schema, [work], 4).envelopes(4))
    assert [len(batch) for batch in batches] == [4, 3]
    assert batches[1][1] == {"item": {"input_id": "n005", "number": 5, "tags": ["a", "5"], "meta": {"k": 5}},
                             "attempt": 1}
    assert [env["attempt"] for batch in batches for env in batch] == [1, 2, 1, 1, 3, 1, 1]


def test_records_can_be_read_with_a_few_columns_and_agree_with_the_full_read(tmp_path):
    path = write_pipeline(tmp_path, source={"count": 6}, square={"fail_numbers": [2], "fail_attempts": 5},
                          with_sum=False)
    run(path, tmp_path / "run")
    run(path, tmp_path / "run")  # a second attempt of the failing item: two attempts stored
    ledger = Ledger(str(tmp_path / "run"))
    full = ledger.records("toy_square")
    few = ledger.records("toy_square", columns=["square"])
    assert set(few.column_names) == {"input_id", "id", "status", "attempt", "square"}
    assert few.to_pylist() == full.select(few.column_names).to_pylist()
    assert {r["input_id"]: r["attempt"] for r in few.to_pylist() if r["status"] == "error"} == {"v2": 2}
    with pytest.raises(ValueError, match="no columns"):
        ledger.records("toy_square", columns=["nope"])
    unordered = ledger.records("toy_square", ordered=False)  # for counting: write order, no sorted copy
    assert sorted(unordered.to_pylist(), key=lambda r: (r["input_id"], r["id"])) == full.to_pylist()


def test_a_record_that_does_not_fit_the_schema_fails_only_its_item_in_a_batch_check():
    """Records are checked against the schema a batch at a time; a batch with one bad record falls back to
    item by item, and only that item becomes an `error` record."""
    from toy_stages import SquareConfig, ToySquare

    from humove.stage import StageContext
    from humove.worker import check_batch, finalize

    stage = ToySquare(SquareConfig(), StageContext(run_dir="unused", stage="toy_square"))
    good = finalize(stage, {"input_id": "v1"}, stage.ok("v1-0", video_id="v1", square=1), 1, check=False)
    bad = finalize(stage, {"input_id": "v2"}, stage.ok("v2-0", video_id="v2", square=4, extra=1), 2,
                   check=False)
    assert check_batch(stage, [good]) == [good]
    checked = check_batch(stage, [good, bad])
    assert checked[0] == good
    assert [(r["input_id"], r["status"], r["error_type"], r["attempt"]) for r in checked[1]] == [
        ("v2", "error", "RecordSchemaError", 2)]


def test_compaction_writes_full_row_groups_and_reads_back_as_the_parts_did(tmp_path, monkeypatch):
    """Many one-batch parts, a retried item and a repeated id: the compacted part is cut into full row groups,
    and reading it (the shortcut for a compacted part) gives what the full selection over the parts gave, with
    and without an input filter."""
    import pyarrow.parquet as pq
    from toy_stages import SquareConfig, ToySquare

    import humove.ledger as ledger_module
    from humove.stage import StageContext
    from humove.worker import finalize, records_to_table

    monkeypatch.setattr(ledger_module, "ROW_GROUP", 4)
    stage = ToySquare(SquareConfig(), StageContext(str(tmp_path), "toy_square"))
    ledger = Ledger(str(tmp_path), stage_classes={"toy_square": ToySquare})
    ledger.write_run_info({"name": "toy", "stages": [{"name": "toy_square", "class": "toy_stages:ToySquare"}]})
    batches = [[(f"v{n}", 1, [stage.ok(f"v{n}-{k}", video_id=f"v{n}", square=n * n) for k in range(2)])]
               for n in range(7)]
    batches.append([("v3", 2, [stage.ok("v3-0", video_id="v3", square=99)])])  # a later attempt wins
    batches.append([("v8", 1, [stage.ok("v1-0", video_id="v8", square=1)])])  # repeats v1's id
    for batch in batches:
        records = [r for input_id, attempt, made in batch
                   for r in finalize(stage, {"input_id": input_id}, made, attempt=attempt)]
        ledger.append("toy_square", records_to_table(stage, records))
    subset = pa.array(["v1", "v3", "v8"])
    before = (ledger.records("toy_square"), ledger.records("toy_square", inputs=subset))
    summary_before = ledger.summary()

    ledger.compact("toy_square")
    [part] = ledger.parts("toy_square")
    metadata = pq.ParquetFile(part).metadata
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4, 4, 4, 2]
    after = (ledger.records("toy_square"), ledger.records("toy_square", inputs=subset))
    for old, new in zip(before, after, strict=True):
        assert new.to_pylist() == old.to_pylist()
    assert {(r["input_id"], r["id"], r["status"], r["square"]) for r in after[1].to_pylist()} == {
        ("v1", "v1-0", "ok", 1), ("v1", "v1-1", "ok", 1), ("v3", "v3-0", "ok", 99),
        ("v8", "v1-0", "rejected", 1)}
    assert ledger.summary() == summary_before

    # The same part without its compaction mark goes through the full selection: the same records.
    table = pq.read_table(part)
    pq.write_table(table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items()
                                                  if k != b"humove.current_rows"}), part)
    for old, new in zip(before, (ledger.records("toy_square"), ledger.records("toy_square", inputs=subset)),
                        strict=True):
        assert new.to_pylist() == old.to_pylist()


def test_the_package_chooses_the_system_allocator_for_arrow_unless_the_user_chose(tmp_path):
    import subprocess
    import sys

    code = "import humove, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    env = {k: v for k, v in __import__("os").environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "system"
    kept = subprocess.run([sys.executable, "-c", code], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "mimalloc"},
                          capture_output=True, text=True, check=True)
    assert kept.stdout.strip() == "mimalloc"


def test_passes_over_records_set_the_allocator_once_however_nested(monkeypatch):
    """The low mmap threshold holds from the outermost pass to its end, also when a pass fails; afterwards large
    blocks come from the heap again (glibc only)."""
    import humove.ledger as ledger_module

    calls = []
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(ledger_module, "_MALLOPT", lambda option, value: calls.append((option, value)))
    with ledger_module._memory_returned(), ledger_module._memory_returned():
        assert calls == [(-3, 128 * 1024)]
    with pytest.raises(RuntimeError), ledger_module._memory_returned():
        raise RuntimeError("a failed pass")
    assert calls == [(-3, 128 * 1024), (-3, 32 << 20), (-3, 128 * 1024), (-3, 32 << 20)]
    assert ledger_module._passes_open == 0
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's choice is left alone
    with ledger_module._memory_returned():
        assert ledger_module._passes_open == 0  # not counted either
    assert len(calls) == 4


def echo_pipeline(tmp_path: Path, count: int, square: dict | None = None, name="echo.yaml") -> Path:
    """Source → square (fan-out: two clips per number) → echo (records the item it was handed)."""
    path = tmp_path / name
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": count, "unreadable": [1]}},
              {"stage": "toy_stages:ToySquare", "config": {"min_square": 2, **(square or {})}},
              {"stage": "toy_stages:ToyEcho"}]
    path.write_text(yaml.safe_dump({"name": "echo", "run": {"executor": "ray"}, "stages": stages}))
    return path


def _records(run_dir, stage) -> dict:
    """A stage's records as stored, without the time they were made."""
    return {key: {k: v for k, v in record.items() if k != "created_at"} for key, record in
            by_status(run_dir, stage).items()}


def test_streamed_stages_run_at_once_and_hand_on_what_the_ledger_would(tmp_path):
    """On Ray, consecutive map stages stream: an item reaches the next stage while the stage before still works
    (the square of 5 waits until echo has run an item: one stage after another, it would wait in vain), and each
    stage gets, and records, exactly what the stage-by-stage engine gives it from the ledger."""
    streamed = tmp_path / "streamed"
    run(echo_pipeline(tmp_path, 6, {"wait_numbers": [5]}), streamed)
    assert calls(streamed, "toy_square_waited") == [True], "the next stage must get items while this one runs"
    one_by_one = tmp_path / "one_by_one"
    run(echo_pipeline(tmp_path, 6, name="local.yaml"), one_by_one, executor="local")
    for stage in ("toy_source", "toy_square", "toy_echo"):
        assert _records(streamed, stage) == _records(one_by_one, stage), stage
    seen = json.loads(by_status(streamed, "toy_echo")["v3-1"]["seen"])
    assert seen == {"clip_id": "v3-1", "input_id": "v3-1", "number": 3, "square": 9, "video_id": "v3"}
    assert sorted(calls(streamed, "toy_echo")) == sorted(_records(one_by_one, "toy_echo")), "each item once"


def test_a_stream_takes_up_the_work_each_stage_has_left(tmp_path):
    """A run stopped after `toy_square` (or killed mid-stream) left work at several stages: the stream starts each
    stage's own work at that stage, alongside what flows from upstream, and recomputes nothing."""
    run_dir = tmp_path / "run"
    run(echo_pipeline(tmp_path, 4), run_dir, until="toy_square", executor="local")
    run(echo_pipeline(tmp_path, 6), run_dir)
    assert sorted(calls(run_dir, "toy_square")) == [f"v{n}" for n in (0, 2, 3, 4, 5)], "no item twice"
    reference = tmp_path / "reference"
    run(echo_pipeline(tmp_path, 6, name="local.yaml"), reference, executor="local")
    assert _records(run_dir, "toy_echo") == _records(reference, "toy_echo")
    assert sorted(calls(run_dir, "toy_echo")) == sorted(_records(reference, "toy_echo"))


def test_stream_pools_fit_the_cluster_with_every_stage_alive():
    from humove.executors import _packs, stream_pools, streamable

    def shapes(pools):
        return [{"CPU": p.resources.num_cpus} for p in pools for _ in range(p.size)] + [
            {"CPU": p.prepare_resources.num_cpus} for p in pools for _ in range(p.prepare)]

    # Ten CPU stages on 2 CPUs: one worker each, all asking for the same share; preparation inline.
    small = stream_pools([(Resources(num_cpus=1), Resources(num_cpus=1) if i % 2 else None) for i in range(10)],
                         [{"CPU": 2.0}])
    assert [p.size for p in small] == [1] * 10 and all(p.prepare == 0 for p in small)
    assert {p.resources.num_cpus for p in small} == {0.2}
    # Two nodes of 1 CPU: three workers cannot ask for 2/3 CPU each (no node holds two): 1/2 each.
    odd = stream_pools([(Resources(num_cpus=1, concurrency=2), None), (Resources(num_cpus=1), None)],
                       [{"CPU": 1.0}, {"CPU": 1.0}])
    assert [p.size for p in odd] == [2, 1] and {p.resources.num_cpus for p in odd} == {0.5}
    # A large node: full requests, prepare pools beside the models, CPU pools grown in turn within the CPUs.
    node = [{"CPU": 32.0}]
    big = stream_pools([(Resources(num_cpus=1), None), (Resources(num_cpus=2), Resources(num_cpus=1)),
                        (Resources(num_cpus=1, concurrency=3), None)], node)
    assert big[2].size == 3 and big[1].prepare >= 1 and big[0].resources.num_cpus == 1
    assert _packs(shapes(big), node) and sum(s["CPU"] for s in shapes(big)) >= 30
    # GPU stages: a fixed pool keeps its size, the others share the GPUs left.
    gpu = stream_pools([(Resources(num_gpus=1), None), (Resources(num_gpus=1, concurrency=2), None)],
                       [{"CPU": 64.0, "GPU": 8.0}])
    assert [p.size for p in gpu] == [6, 2]
    # Two GPU models on a single GPU do not stream together: the first goes alone, the second after it.
    node = [{"CPU": 16.0, "GPU": 1.0, "memory": 64e9}]
    stages = [SimpleNamespace(resources=Resources(num_gpus=n), prepare_resources=None) for n in (0, 1, 1, 0)]
    assert streamable(stages, node) == 2 and streamable(stages[2:], node) == 2



def test_pools_grow_with_the_cluster_where_their_stage_allows():
    """A pool starts where the planner puts it and may grow as nodes join: a CPU pool without `concurrency` to what
    the cluster holds, any pool to `max_concurrency`; a GPU pool or a `concurrency` pool without it stays fixed."""
    import ray.data

    from humove.executors import RayExecutor, chain_pool, pool_limit, stream_pools

    assert pool_limit(Resources(), 2) is None
    assert pool_limit(Resources(concurrency=2), 2) == 2 and pool_limit(Resources(num_gpus=1), 4) == 4
    assert pool_limit(Resources(num_gpus=1, concurrency=2, max_concurrency=8), 2) == 8
    assert pool_limit(Resources(max_concurrency=3), 1) == 3
    # No pool starts above its max_concurrency: a GPU share, a CPU pool grown in turn.
    gpu = stream_pools([(Resources(num_gpus=1, max_concurrency=2), None), (Resources(num_cpus=1, max_concurrency=3),
                                                                          None)], [{"CPU": 64.0, "GPU": 8.0}])
    assert [p.size for p in gpu] == [2, 3]
    chain = chain_pool([Resources(num_cpus=1, concurrency=1, max_concurrency=1), Resources()], [{"CPU": 1.0}])
    assert pool_limit(chain.resources, chain.size) is None, "chain workers grow with the cluster"

    class Dataset:  # a fake: keeps the compute strategy each pool is given
        def map_batches(self, worker, compute, **kwargs):
            return compute

    executor = RayExecutor.__new__(RayExecutor)  # no Ray started
    executor._ray, executor.worker_env = SimpleNamespace(data=ray.data), {}

    def strategy(resources, pool, one_at_a_time=False):
        compute = executor._map_pool(Dataset(), object, {}, resources, pool, one_at_a_time)
        return compute.min_size, compute.max_size, compute.initial_size

    assert strategy(Resources(num_gpus=1), 4) == (4, 4, 4)
    assert strategy(Resources(num_gpus=1, concurrency=2, max_concurrency=6), 2) == (2, 6, 2)
    assert strategy(Resources(), 2) == (2, float("inf"), 2)
    assert strategy(Resources(), 2, one_at_a_time=True) == (2, 2, 2), "a re-run of a few items: fixed"


# Invalidation by what a stage reads ------------------------------------------------------------------------------
class Recorder(Progress):
    """The engine's notices; every other callback is `Progress`'s own no-op."""

    def __init__(self):
        self.messages = []

    def message(self, text):
        self.messages.append(text)


def reader_pipeline(tmp_path: Path, reads: list[str] | None, source=None, square=None, with_sum=False,
                    executor="local") -> Path:
    """toy_source (makes `number`) → toy_square (makes `square`, reads everything) → toy_reader (reads `reads`)."""
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": 3, **(source or {})}},
              {"stage": "toy_stages:ToySquare", "config": square or {}},
              {"stage": "toy_stages:ToyReader", "config": {"reads": reads}}]
    if with_sum:
        stages.append({"stage": "toy_stages:ToySum"})
    path = tmp_path / "reader.yaml"
    path.write_text(yaml.safe_dump({"name": "reader", "run": {"executor": executor}, "stages": stages}))
    return path


def test_a_change_invalidates_only_the_stages_that_read_what_changed(tmp_path):
    run_dir = tmp_path / "run"
    run(reader_pipeline(tmp_path, ["number"]), run_dir)
    assert len(calls(run_dir, "toy_reader")) == 6
    # toy_square makes `square` only: its change re-runs it, not the reader of `number`.
    shown = Recorder()
    run(reader_pipeline(tmp_path, ["number"], square={"multiplier": 2}), run_dir, progress=shown)
    assert len(calls(run_dir, "toy_square")) == 6 and by_status(run_dir, "toy_square")["v2-0"]["square"] == 8
    assert len(calls(run_dir, "toy_reader")) == 6, "the reader of `number` must not run again"
    assert shown.messages[:2] == ["stage 'toy_square' config changed (multiplier): invalidating toy_square",
                                  "kept toy_reader: it reads nothing that changed"], shown.messages
    summary = {s.stage: s for s in Ledger(str(run_dir)).summary()}
    assert summary["toy_reader"].ok == 6 and summary["toy_reader"].pending == 0
    # Its inputs still follow toy_square's `ok` records: a new input runs, one rejected upstream leaves.
    run(reader_pipeline(tmp_path, ["number"], source={"count": 4}, square={"multiplier": 2, "min_square": 5}),
        run_dir)
    assert sorted(calls(run_dir, "toy_reader"))[-2:] == ["v3-0", "v3-1"] and len(calls(run_dir, "toy_reader")) == 8
    summary = {s.stage: s for s in Ledger(str(run_dir)).summary()}
    assert summary["toy_reader"].ok == 4, "v0 and v1 are rejected by toy_square now"
    # toy_source makes `number`: its change re-runs the reader.
    shown = Recorder()
    run(reader_pipeline(tmp_path, ["number"], source={"count": 4, "unreadable": [3]},
                        square={"multiplier": 2, "min_square": 5}), run_dir, progress=shown)
    assert "stage 'toy_reader' reads toy_source (number): invalidating toy_reader" in shown.messages, shown.messages
    assert len(calls(run_dir, "toy_reader")) == 10 and sorted(by_status(run_dir, "toy_reader")) == ["v2-0", "v2-1"]


def test_a_stage_that_declares_nothing_reads_everything_upstream(tmp_path):
    run_dir = tmp_path / "run"
    run(reader_pipeline(tmp_path, None), run_dir)
    shown = Recorder()
    run(reader_pipeline(tmp_path, None, square={"multiplier": 2}), run_dir, progress=shown)
    assert len(calls(run_dir, "toy_reader")) == 12
    assert "stage 'toy_reader' reads toy_square (all of it): invalidating toy_reader" in shown.messages


def test_force_invalidates_the_stages_that_read_the_forced_one(tmp_path):
    run_dir = tmp_path / "run"
    run(reader_pipeline(tmp_path, ["number"]), run_dir)
    run(reader_pipeline(tmp_path, ["number"]), run_dir, force=["toy_square"])
    assert len(calls(run_dir, "toy_square")) == 6 and len(calls(run_dir, "toy_reader")) == 6
    shown = Recorder()
    run(reader_pipeline(tmp_path, ["square"]), run_dir, force=["toy_square"], progress=shown)
    assert len(calls(run_dir, "toy_reader")) == 12
    assert "stage 'toy_reader' config changed (reads): invalidating toy_reader" in shown.messages


def test_reading_a_column_no_earlier_stage_makes_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_pipeline(reader_pipeline(tmp_path, ["number", "cube"]))
    message = str(error.value)
    assert "stage 'toy_reader' reads 'cube', which no stage before it makes (toy_source, toy_square)" in message
    assert "\n" not in message and "built-in stage" not in message  # no built-in stage makes `cube`


def test_a_pipeline_without_the_stage_that_makes_a_read_column_names_the_built_in_one(tmp_path):
    """shards without pack before it (a pipeline written before pack existed): the error says what to add."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "old", "stages": [
        {"stage": "ingest", "config": {"source": str(tmp_path)}}, {"stage": "shots"}, {"stage": "shards"}]}))
    with pytest.raises(ConfigError) as error:
        load_pipeline(path)
    assert str(error.value).endswith("which no stage before it makes (ingest, shots): the built-in stage 'pack' "
                                     "makes it, add it before 'shards'")


def _write_as_before(run_dir: Path, stages) -> None:
    """Rewrite each `_stage.json` as humove wrote it before stages declared what they read: each fingerprint
    chained to the one before it, and the aggregate's input signature over that fingerprint."""
    ledger, upstream = Ledger(str(run_dir)), ""
    for index, stage in enumerate(stages):
        upstream = fingerprint({"class": stage.ref, "version": str(stage.cls.version),
                                "schema": stage.cls.schema.version, "config": stage.config.fingerprint_dict(),
                                "upstream": upstream})
        state = {k: v for k, v in ledger.stage_state(stage.name).items() if k != "reads"}
        state["fingerprint"] = upstream
        if "input_signature" in state:
            inputs = all_items(joined_inputs(ledger, stages[:index]))
            state["input_signature"] = fingerprint({"fingerprint": upstream, "inputs": sorted(
                fingerprint(ledger.relative_refs(item)) for item in inputs)})
        ledger.write_stage_state(stage.name, state)


def test_a_run_dir_from_before_reads_were_declared_is_not_invalidated(tmp_path):
    run_dir = tmp_path / "run"
    path = reader_pipeline(tmp_path, ["number"], with_sum=True)
    run(path, run_dir)
    _, stages = load_pipeline(path)
    _write_as_before(run_dir, stages)
    shown = Recorder()
    run(path, run_dir, progress=shown)
    assert not [m for m in shown.messages if "invalidating" in m], shown.messages
    assert [len(calls(run_dir, s)) for s in ("toy_source", "toy_square", "toy_reader", "toy_sum")] == [3, 3, 6, 1]
    prints = stage_fingerprints(stages)
    for stage in stages:
        assert Ledger(str(run_dir)).stage_state(stage.name)["fingerprint"] == prints[stage.name]["fingerprint"]
    run(path, run_dir)
    assert calls(run_dir, "toy_sum") == ["all"], "the state is the new one now"
    # A change from there invalidates conservatively: the chained fingerprints cannot say what was read.
    _write_as_before(run_dir, stages)
    run(reader_pipeline(tmp_path, ["number"], square={"multiplier": 2}, with_sum=True), run_dir)
    assert len(calls(run_dir, "toy_reader")) == 12 and calls(run_dir, "toy_sum") == ["all", "all"]


def test_a_stream_ends_before_a_stage_kept_while_the_one_before_it_runs_again(tmp_path):
    """Streamed, every record toy_square makes again would reach the kept reader and run there again."""
    run_dir = tmp_path / "run"
    run(reader_pipeline(tmp_path, ["number"]), run_dir)
    config, stages = load_pipeline(reader_pipeline(tmp_path, ["number"], square={"multiplier": 2}, executor="ray"))
    runner = Runner(config, stages, str(run_dir), progress=Recorder())
    assert [s.name for s in runner._segment(1, 2)] == ["toy_square", "toy_reader"], "one stream when nothing is kept"
    runner._invalidate_changed(stage_fingerprints(stages))
    assert [s.name for s in runner._segment(1, 2)] == ["toy_square"]
    assert [s.name for s in runner._segment(2, 2)] == ["toy_reader"]


PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@pytest.mark.parametrize("name", ["demo.yaml", "humove.yaml", "motion-only.yaml", "urls.yaml"])
def test_the_built_in_stages_read_columns_that_earlier_stages_make(name):
    """Every built-in stage declares what it reads; what it needs is made before it, and what it reads where made
    is a column of some built-in stage (no typo)."""
    _, stages = load_pipeline(PIPELINES / name)
    known = {c for ref in BUILTIN_STAGES for c in load_stage_class(ref).schema.own_names}
    for index, stage in enumerate(stages):
        reads = stage.cls.reads(stage.config)
        assert reads is not None, f"{stage.name} declares nothing"
        made = {"input_id"} | {c for s in stages[:index] for c in (s.cls.schema.key, *s.cls.schema.own_names)}
        assert index == 0 or reads.fields <= made, (stage.name, sorted(reads.fields - made))
        assert reads.if_present <= known, (stage.name, sorted(reads.if_present - known))
    sources = {stage.name: stage_sources(stages, index) for index, stage in enumerate(stages)}
    if name == "urls.yaml":
        assert set(sources["pack"]) == {"ingest", "shots"}, "the source columns come from ingest"
        return
    assert set(sources["person"]) == {"shots"}, "person reads the shots clip, not the aesthetic scores"
    assert set(sources["smooth"]) == {"ingest", "shots", "person", "pose", "smpl"}
    if name == "demo.yaml":  # the template caption says how fast the person moves; the offline fitter fits keypoints
        assert sources["caption"]["smooth"] == ["motion_path"] and "pose" in sources["smpl"]
    else:  # CameraHMR sees the pixels, not the keypoints; a VLM the clip, not the motion
        assert "pose" not in sources["smpl"]
        assert "caption" not in sources or set(sources["caption"]) == {"ingest", "shots", "person"}


def test_changing_the_smoothing_leaves_the_captions_of_the_production_pipeline_alone():
    _, stages = load_pipeline(PIPELINES / "humove.yaml")
    _, smoothed = load_pipeline(PIPELINES / "humove.yaml", ["smooth.sigma=2"])
    before, after = stage_fingerprints(stages), stage_fingerprints(smoothed)
    changed = [s.name for s in stages if before[s.name]["fingerprint"] != after[s.name]["fingerprint"]]
    assert changed == ["smooth", "pack", "shards"]
    # A machine too small for a worker of each CPU stage: workers that each run every stage, one per CPU.
    from humove.executors import chain_pool

    chain = chain_pool([Resources(num_cpus=1, batch_size=b) for b in (1, 4, 2)], [{"CPU": 2.0}])
    assert chain.size == 2 and chain.resources.num_cpus == 1 and chain.resources.batch_size == 1
    assert chain_pool([Resources(num_cpus=1)] * 3, [{"CPU": 4.0}]) is None, "each stage gets its own pool"
    assert chain_pool([Resources(num_gpus=1), Resources()], [{"CPU": 1.0, "GPU": 1.0}]) is None, "GPUs: never"
