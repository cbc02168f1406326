"""A run dir as state: progress lines where output is not a terminal (and in run.log), relocatable records, the
run's stored config (toy stages: fast)."""

import datetime as dt
import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from typer.testing import CliRunner

from humove.cli import app
from humove.ledger import Ledger
from humove.schemas.records import RecordSchema

LINE = re.compile(r"\d\d:\d\d:\d\d (?P<stage>toy_\w+) (?P<done>\d+)/(?P<total>\d+) \(\d+%\) · [\d.]+ items/s · "
                  r"(?P<timing>ETA [^·]+|done in [^·]+) · records: ok (?P<ok>\d+), rejected (?P<rejected>\d+), "
                  r"error (?P<error>\d+)")


def toy_pipeline(tmp_path, count=6, slow_seconds=0.0):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "run": {"executor": "local"}, "stages": [
        {"stage": "toy_stages:ToySource", "config": {"count": count, "unreadable": [1]}},
        {"stage": "toy_stages:ToySquare", "config": {"slow_seconds": slow_seconds}},
        {"stage": "toy_stages:ToySum"}]}))
    return path


def progress_lines(text: str) -> list[dict]:
    return [match.groupdict() for match in LINE.finditer(text)]


def test_without_a_terminal_progress_is_printed_as_timed_lines_that_end_at_the_real_totals(tmp_path):
    run_dir = tmp_path / "run"
    # CliRunner's output is not a terminal, as under nohup, Slurm or Kubernetes.
    result = CliRunner().invoke(app, ["run", str(toy_pipeline(tmp_path, slow_seconds=0.1)), "--run-dir",
                                      str(run_dir), "--progress-every", "0.05"])
    assert result.exit_code == 0, result.output
    printed = progress_lines(result.output)
    square = [line for line in printed if line["stage"] == "toy_square"]
    # Six items of 0.1 s each: the 0.05 s timer prints lines while the stage runs, not only at its end.
    running = [line for line in square if line["timing"].startswith("ETA")]
    assert running, result.output
    assert int(running[0]["done"]) < int(running[0]["total"]) == 5, running[0]
    final = {line["stage"]: line for line in printed if line["timing"].startswith("done")}
    # Source: 6 listed, 1 unreadable; square: the 5 ok numbers, two clips each; sum: those 10 clips.
    assert final["toy_source"] == {**final["toy_source"], "done": "6", "total": "6", "ok": "5", "rejected": "1"}
    assert final["toy_square"] == {**final["toy_square"], "done": "5", "total": "5", "ok": "10", "rejected": "0"}
    assert final["toy_sum"] == {**final["toy_sum"], "done": "10", "total": "10", "ok": "10"}
    counts = [int(line["done"]) for line in square]
    assert counts == sorted(counts), "counts only grow"
    # The run's log holds the same lines, and a second run appends to it.
    log = (run_dir / "run.log").read_text()
    assert [line for line in progress_lines(log) if line["timing"].startswith("done")] == list(final.values())
    assert log.splitlines()[-1].endswith(" run finished")
    CliRunner().invoke(app, ["run", str(toy_pipeline(tmp_path)), "--run-dir", str(run_dir)])
    again = (run_dir / "run.log").read_text()
    assert again.startswith(log) and again.count("run finished") == 2


def test_the_progress_interval_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("HUMOVE_PROGRESS_EVERY_S", "soon")
    result = CliRunner().invoke(app, ["run", str(toy_pipeline(tmp_path)), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "HUMOVE_PROGRESS_EVERY_S='soon'" in result.output
    assert not (tmp_path / "run").exists()


def test_the_run_log_on_an_object_store_is_written_whole_and_masks_secrets():
    from humove.progress import RunLog
    from humove.storage import Storage

    storage = Storage("memory://run-state/log-run")
    log = RunLog(storage, every_s=3600)
    log.write("first")
    log.write("fetching https://user:hunter2@example.com/list.csv")
    assert not storage.exists(log.url), "gathered, not uploaded line by line"
    log.close()
    again = RunLog(storage, every_s=3600)
    again.write("second run")
    again.close()
    assert storage.read_text(log.url).splitlines() == [
        "first", "fetching https://user:***@example.com/list.csv", "second run"]


def small_videos(folder):
    """Two H.264 videos (64×48, 8 fps, 3 s and 4 s) of a moving square."""
    import av
    import numpy as np

    folder.mkdir(parents=True)
    for seconds in (3, 4):
        with av.open(str(folder / f"walk {seconds}.mp4"), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=8, options={"threads": "1"})
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            for index in range(8 * seconds):
                frame = np.full((48, 64, 3), 40 * seconds, np.uint8)
                frame[16:24, 4 * index % 56:4 * index % 56 + 8] = 255
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
    return folder


def clips_pipeline(tmp_path, videos):
    path = tmp_path / "clips.yaml"
    path.write_text(yaml.safe_dump({"name": "clips", "run": {"executor": "local"}, "stages": [
        {"stage": "ingest", "config": {"source": str(videos), "min_duration_s": 1.0, "min_side_px": 32}},
        {"stage": "shots", "config": {"min_clip_s": 1.0, "max_clip_s": 2.0, "fps": 8, "max_side_px": 96}},
        {"stage": "pack", "config": {"val_fraction": 0.5}}, {"stage": "shards"}]}))
    return path


def run_pipeline(path, run_dir, **options):
    from humove.config import load_pipeline
    from humove.engine import Runner

    return Runner(*load_pipeline(path), str(run_dir), **options).run()


def folder_bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_copied_run_dir_reports_resumes_and_publishes_the_same_dataset(tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from humove.ledger import Ledger

    pipeline = clips_pipeline(tmp_path, small_videos(tmp_path / "videos"))
    original, copy = tmp_path / "original", tmp_path / "elsewhere" / "copy"
    run_pipeline(pipeline, original)  # the engine alone: `humove run` would write a report after each run
    # Stored: relative to the run dir (the records, and current.parquet for duckdb); read: under the run dir.
    stored = pq.read_table(original / "shots" / "current.parquet")["clip_path"].to_pylist()
    assert stored and all(path.startswith("artifacts/shots/") for path in stored)
    source = pq.read_table(original / "ingest" / "current.parquet")["source_path"].to_pylist()
    assert all(path.startswith(str(tmp_path / "videos")) for path in source), "paths outside stay as they are"
    clips = Ledger(str(original)).records("shots")["clip_path"].to_pylist()
    assert sorted(clips) == sorted(str(original / path) for path in stored)
    dataset = folder_bytes(original / "dataset")

    shutil.copytree(original, copy)
    shutil.rmtree(original)
    status = CliRunner().invoke(app, ["status", str(copy)])
    assert status.exit_code == 0 and "shots" in status.output, status.output
    assert sorted(Ledger(str(copy)).records("shots")["clip_path"].to_pylist()) == sorted(
        str(copy / path) for path in stored)
    report = CliRunner().invoke(app, ["report", str(copy), "--clips", "2", "--examples", "0"])
    assert report.exit_code == 0, report.output
    html = (copy / "report.html").read_text()
    assert "cannot preview" not in html and "not read" not in html and "<video" in html
    # A resume finds nothing changed (the shards' inputs are the same clips); a forced shards run publishes the
    # same bytes from the copy's samples.
    resumed = run_pipeline(pipeline, copy)
    assert all(result.processed == 0 for result in resumed), resumed
    (copy / "dataset").rename(copy / "published-before")
    forced = run_pipeline(pipeline, copy, force=["shards"])
    assert [result.processed for result in forced] == [0, 0, 0, len(stored)]
    assert folder_bytes(copy / "dataset") == dataset
    assert not original.exists()


FILES_SCHEMA = RecordSchema("toy_files", 1, "clip_id", (pa.field("file_path", pa.string()),))


def files_table(paths: list[str]) -> pa.Table:
    rows = [{"id": f"c{n}", "input_id": f"c{n}", "status": "ok", "attempt": 1, "stage_version": "1",
             "schema_version": 1, "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC), "file_path": path}
            for n, path in enumerate(paths)]
    return pa.Table.from_pylist(rows, schema=FILES_SCHEMA.arrow)


def test_records_of_run_dirs_written_before_hold_absolute_paths_and_are_read_as_they_are(tmp_path):
    run_dir = tmp_path / "old"
    (run_dir / "toy_files").mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"stages": [{"name": "toy_files", "class": "old:Files"}]}))
    absolute = str(run_dir / "artifacts" / "toy_files" / "a.bin")
    pq.write_table(files_table([absolute]), run_dir / "toy_files" / "part-0-old.parquet")
    assert Ledger(str(run_dir)).records("toy_files")["file_path"].to_pylist() == [absolute]


def test_an_object_store_run_dir_stores_references_relative_and_reads_them_where_it_is_now():
    ledger = Ledger("memory://run-state/bucket-a/run")
    ledger.write_run_info({"stages": [{"name": "toy_files", "class": "old:Files"}]})
    inside = ledger.storage.join("artifacts", "toy_files", "c0.bin")
    elsewhere = "s3://other-bucket/videos/artifacts/c1.mp4"  # not this run dir's: kept whole
    part = ledger.append("toy_files", files_table([inside, elsewhere, None]))
    with ledger.storage.open(part) as handle:
        assert pq.read_table(handle)["file_path"].to_pylist() == ["artifacts/toy_files/c0.bin", elsewhere, None]
    moved = Ledger("memory://run-state/bucket-b/moved")
    for name in ("run.json", part.split("/run/", 1)[1]):
        moved.storage.write_bytes(moved.storage.join(name), ledger.storage.read_bytes(ledger.storage.join(name)))
    assert moved.records("toy_files")["file_path"].to_pylist() == [
        "memory://run-state/bucket-b/moved/artifacts/toy_files/c0.bin", elsewhere, None]


def humove(*args):
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    return result


def square_ids(run_dir, status):
    return sorted(r["id"] for r in Ledger(str(run_dir)).records("toy_square").to_pylist() if r["status"] == status)


def test_set_values_are_kept_by_later_runs_until_changed_and_each_change_is_said(tmp_path):
    pipeline, run_dir = toy_pipeline(tmp_path, count=4), tmp_path / "run"
    first = humove("run", pipeline, "--run-dir", run_dir, "--set", "toy_square.min_square=4")
    assert first.exit_code == 0, first.output
    assert "--set toy_square.min_square=4 is kept by later runs" in first.output
    assert square_ids(run_dir, "rejected") == ["v0-0", "v0-1"]  # 1 is unreadable; 0² < 4
    # A run without --set keeps the value (and says so); before, it went back to the file's 0 silently.
    second = humove("run", pipeline, "--run-dir", run_dir)
    assert second.exit_code == 0 and "kept from earlier runs' --set" in second.output, second.output
    assert "toy_square.min_square=4" in second.output
    assert square_ids(run_dir, "rejected") == ["v0-0", "v0-1"]
    third = humove("run", pipeline, "--run-dir", run_dir, "--set", "toy_square.min_square=5")
    assert third.exit_code == 0 and "--set toy_square.min_square: 4 → 5" in third.output, third.output
    assert square_ids(run_dir, "rejected") == ["v0-0", "v0-1", "v2-0", "v2-1"]
    assert "--set toy_square.min_square: 4 → 5" in (run_dir / "run.log").read_text()

    shown = humove("config", run_dir)
    assert shown.exit_code == 0, shown.output
    config = yaml.safe_load(shown.stdout)
    assert config["settings"] == {"toy_square.min_square": "5"}
    assert [stage["stage"] for stage in config["stages"]] == ["toy_source", "toy_square", "toy_sum"]
    assert config["stages"][1]["config"]["min_square"] == 5 and config["stages"][0]["config"]["count"] == 4
    assert config["run"]["executor"] == "local" and "resources" not in config["stages"][2]

    dropped = humove("config", run_dir, "--unset", "toy_square.min_square")
    assert dropped.exit_code == 0 and yaml.safe_load(dropped.stdout)["settings"] == {}
    assert humove("config", run_dir, "--unset", "toy_square.min_square").exit_code == 2
    fourth = humove("run", pipeline, "--run-dir", run_dir)
    assert "kept from earlier runs" not in fourth.output
    assert square_ids(run_dir, "rejected") == []


def test_secrets_given_with_set_are_used_but_never_stored(tmp_path, monkeypatch):
    from humove.config import builtin_pipeline
    from humove.run_config import effective_config, load_run_pipeline

    run_dir = tmp_path / "run"
    (tmp_path / "urls.txt").write_text("https://example.com/a.mp4\n")
    monkeypatch.chdir(tmp_path)
    proxy, listing = "http://me:hunter2@proxy.example:3128", "https://me:token99@lists.example/urls.txt"
    pipeline, stages, settings = load_run_pipeline(
        builtin_pipeline("urls.yaml"), str(run_dir),
        [f"download.proxy={proxy}", f"download.source={listing}", "download.max_height=720"])
    assert stages[0].config.proxy == proxy and stages[0].config.source == listing  # this run uses them
    assert settings.stored == {"download.max_height": "720"}
    assert sum("a secret, used by this run and not stored" in note for note in settings.notes) == 2
    written = json.dumps(effective_config(pipeline, stages))
    assert "hunter2" not in written and "token99" not in written and "720" in written
