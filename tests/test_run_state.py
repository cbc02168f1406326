"""A run dir as state: progress lines where output is not a terminal (and in run.log), relocatable records, the
run's stored config (toy stages: fast)."""

import re

import yaml
from typer.testing import CliRunner

from humove.cli import app

LINE = re.compile(r"humove: (?P<stage>toy_\w+) (?P<done>\d+)/(?P<total>\d+) \(\d+%\) · [\d.]+ items/s · "
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
    assert all(int(line["done"]) < 6 for line in running[:1])
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
    assert log.splitlines()[-1].endswith("humove: run finished")
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
