"""A run's progress as Prometheus metrics (`--metrics-port`, `run.metrics_port`): per-stage values scraped over
HTTP, a private registry per endpoint, a port in use refused before the run writes anything (toy stages: fast)."""

import socket
import urllib.error
import urllib.request

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from humove.cli import app
from humove.config import load_pipeline
from humove.engine import Runner
from humove.metrics import PrometheusProgress
from humove.progress import Progress


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scrape(url: str) -> dict[tuple, float]:
    """Every sample at `url`, by (name, sorted labels)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple, float], name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def toy_pipeline(tmp_path, run_options=None):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "run": {"executor": "local", **(run_options or {})}, "stages": [
        {"stage": "toy_stages:ToySource", "config": {"count": 5, "unreadable": [2]}},
        {"stage": "toy_stages:ToySquare"},
        {"stage": "toy_stages:ToySum"}]}))
    return path


def test_the_endpoint_serves_each_stages_counts_from_its_own_registry_until_closed():
    metrics = PrometheusProgress(free_port())
    other = PrometheusProgress(free_port())  # a second endpoint in the same process: its own registry
    try:
        assert metrics._server.server_address[0] == "127.0.0.1"
        metrics.start("clip", 4, done=2)
        metrics.start("caption", 0)
        metrics.advance("clip", [{"status": "ok"}, {"status": "ok"}, {"status": "rejected"}], 2)
        metrics.grow("caption", 2)  # clips streamed on from the stage before
        other.start("clip", 9)
        samples = scrape(metrics.url)
        assert value(samples, "humove_stage_items", stage="clip") == 4
        assert value(samples, "humove_stage_items_skipped", stage="clip") == 2
        assert value(samples, "humove_stage_items_done_total", stage="clip") == 2
        assert value(samples, "humove_stage_records_total", stage="clip", status="ok") == 2
        assert value(samples, "humove_stage_records_total", stage="clip", status="rejected") == 1
        assert value(samples, "humove_stage_records_total", stage="clip", status="error") == 0
        assert value(samples, "humove_stage_running", stage="clip") == 1
        assert value(samples, "humove_stage_items", stage="caption") == 2
        assert value(samples, "humove_stage_running", stage="caption") == 1
        assert value(samples, "humove_run_start_time_seconds") > 0
        assert value(scrape(other.url), "humove_stage_items", stage="clip") == 9
        metrics.finish("clip")
        assert value(scrape(metrics.url), "humove_stage_running", stage="clip") == 0
    finally:
        metrics.close()
        other.close()
    with pytest.raises(urllib.error.URLError):
        scrape(metrics.url)


def test_a_run_with_run_metrics_port_serves_each_stages_progress_while_it_runs(tmp_path):
    port = free_port()
    seen = {}

    class ScrapeAtFinish(Progress):  # the caller's display: called before the metrics of the same event
        def finish(self, stage, summary=None):
            seen[stage] = scrape(f"http://127.0.0.1:{port}/metrics")

    run_dir = tmp_path / "run"
    config, stages = load_pipeline(toy_pipeline(tmp_path, {"metrics_port": port}))
    Runner(config, stages, str(run_dir), progress=ScrapeAtFinish()).run()
    # Source: 5 listed, 1 unreadable; square: the 4 ok numbers, two clips each; sum: a record per clip.
    expected = {"toy_source": (5, 5, 4, 1), "toy_square": (4, 4, 8, 0), "toy_sum": (8, 8, 8, 0)}
    for stage, (items, done, ok, rejected) in expected.items():
        samples = seen[stage]
        assert value(samples, "humove_stage_items", stage=stage) == items, stage
        assert value(samples, "humove_stage_items_done_total", stage=stage) == done, stage
        assert value(samples, "humove_stage_records_total", stage=stage, status="ok") == ok, stage
        assert value(samples, "humove_stage_records_total", stage=stage, status="rejected") == rejected, stage
        assert value(samples, "humove_stage_running", stage=stage) == 1, stage
    assert value(seen["toy_sum"], "humove_stage_running", stage="toy_source") == 0
    assert f"Prometheus metrics at http://127.0.0.1:{port}/metrics" in (run_dir / "run.log").read_text()
    with pytest.raises(urllib.error.URLError):  # the endpoint ends with the run
        scrape(f"http://127.0.0.1:{port}/metrics")


def test_a_metrics_port_in_use_is_one_line_before_the_run_writes_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run_dir = tmp_path / "run"
        result = CliRunner().invoke(app, ["run", str(toy_pipeline(tmp_path)), "--run-dir", str(run_dir),
                                          "--metrics-port", str(port)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: cannot serve metrics on 127.0.0.1:{port}: port {port} is in use by another program; "
        "choose another with --metrics-port"]
    assert not run_dir.exists()
    result = CliRunner().invoke(app, ["run", str(toy_pipeline(tmp_path)), "--run-dir", str(run_dir),
                                      "--metrics-host", "10.0.0.5"])
    assert result.exit_code == 2 and "needs a port" in result.output and not run_dir.exists()
