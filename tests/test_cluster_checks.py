"""What a run checks and carries before and while it uses workers: the resource pre-flight (a request the cluster
cannot hold is one line, not a wait forever), set-up errors in workers (one line under both executors), and the
driver's environment reaching Ray workers. The Ray tests share the session's embedded Ray."""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from humove import executors
from humove.cli import app
from humove.config import load_pipeline
from humove.engine import Progress, Runner
from humove.executors import ClusterResourceError, RayExecutor, resource_problems
from humove.ledger import Ledger
from humove.worker import StageSetupError


def toy_pipeline(tmp_path: Path, executor: str, second: str = "toy_stages:ToySquare", second_config=None,
                 second_resources=None, run: dict | None = None, count: int = 3) -> Path:
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": count}},
              {"stage": second, "config": second_config or {}, "resources": second_resources or {}},
              {"stage": "toy_stages:ToySum", "resources": {"num_gpus": 4}}]  # runs in the driver: never checked
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": "toy", "run": {"executor": executor, **(run or {})}, "stages": stages}))
    return path


def humove(*args) -> CliRunner:
    return CliRunner().invoke(app, [str(a) for a in args])


class Messages(Progress):
    def __init__(self):
        self.lines = []

    def message(self, text: str) -> None:
        self.lines.append(text)


def nothing_written(run_dir: Path) -> bool:
    return not [p for p in run_dir.rglob("part-*.parquet")]


# The pre-flight, on described clusters -------------------------------------------------------------------------

def problems_on(tmp_path, nodes, resources, second="toy_stages:ToySquare"):
    _, stages = load_pipeline(toy_pipeline(tmp_path, "ray", second=second, second_resources=resources))
    return resource_problems(stages, nodes)


def test_the_pre_flight_names_the_stage_the_resource_and_what_to_set(tmp_path):
    laptop = [{"CPU": 2.0, "memory": 8 * 1024**3}]
    assert problems_on(tmp_path, laptop, {}) == []
    assert problems_on(tmp_path, laptop, {"num_gpus": 1}) == [
        "stage 'toy_square' asks for 1 GPU per worker; the cluster has 0 GPUs (2 CPUs, 1 node) — set "
        "resources.num_gpus: 0 and device: cpu, or add GPU nodes"]
    gpu_nodes = [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 32.0}]
    assert problems_on(tmp_path, gpu_nodes, {"num_gpus": 1, "concurrency": 8}) == [
        "stage 'toy_square' asks for a fixed pool of 8 workers with 1 GPU each; the cluster holds 4 of them "
        "(48 CPUs, 4 GPUs, 3 nodes) — set resources.concurrency: 4, or add GPU nodes"]
    assert problems_on(tmp_path, gpu_nodes, {"num_gpus": 0.5, "concurrency": 8}) == [], "fractions of a GPU pack"
    assert problems_on(tmp_path, gpu_nodes, {"num_gpus": 4}) == [
        "stage 'toy_square' asks for 4 GPUs per worker; its largest node has 2 GPUs (48 CPUs, 4 GPUs, 3 nodes) — "
        "set resources.num_gpus: 2 or less, or add larger nodes"]
    assert problems_on(tmp_path, gpu_nodes, {"num_gpus": 1, "num_cpus": 16}) == [
        "stage 'toy_square' asks for 1 GPU and 16 CPUs per worker; no node has all of it at once (48 CPUs, 4 GPUs, "
        "3 nodes) — add such nodes, or ask for less"]
    assert problems_on(tmp_path, laptop, {"memory_gb": 12}) == [
        "stage 'toy_square' asks for 12 GB of memory per worker; its largest node has 8 GB of memory (2 CPUs, "
        "1 node) — set resources.memory_gb: 8 or less, or add larger nodes"]
    # A model stage's prepare workers are checked too (ToyFrames: 0.5 CPU each).
    assert problems_on(tmp_path, [{"CPU": 0.4}], {"num_cpus": 0.25}, second="toy_stages:ToyFrames")[1:] == [
        "stage 'toy_frames' asks for 0.5 CPUs per prepare worker; its largest node has 0.4 CPUs (0.4 CPUs, "
        "1 node) — add larger nodes"]


# The pre-flight on the embedded Ray, and locally ----------------------------------------------------------------

@pytest.mark.timeout(300)  # before the pre-flight, this run waited forever
def test_a_stage_asking_for_a_gpu_the_embedded_ray_lacks_ends_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    result = humove("run", toy_pipeline(tmp_path, "ray"), "--run-dir", run_dir,
                    "--set", "toy_square.resources.num_gpus=1")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert re.fullmatch(r"humove: stage 'toy_square' asks for 1 GPU per worker; the cluster has 0 GPUs \(\d+ CPUs?, "
                        r"1 node\) — set resources.num_gpus: 0 and device: cpu, or add GPU nodes", lines[-1]), lines
    assert [line for line in lines if line.startswith("humove: ")] == [lines[-1]] and "Traceback" not in result.output
    assert nothing_written(run_dir), "the pre-flight runs before any stage"


def test_waiting_for_resources_says_so_and_gives_up_when_the_time_is_up(tmp_path, monkeypatch):
    monkeypatch.setattr(executors, "RECHECK_S", 0.2)
    monkeypatch.setattr(executors, "WAIT_NOTICE_S", 0.0)  # a notice at every look
    pipeline = toy_pipeline(tmp_path, "ray", second_resources={"num_gpus": 1, "concurrency": 2},
                            run={"wait_for_resources_s": 1.5})
    config, stages = load_pipeline(pipeline)
    messages = Messages()
    started = time.monotonic()
    with pytest.raises(ClusterResourceError) as caught:
        Runner(config, stages, str(tmp_path / "run"), progress=messages).run()
    assert 1.5 <= time.monotonic() - started
    assert messages.lines[0].startswith(
        "waiting up to 1.5 s for the cluster to grow (run.wait_for_resources_s): stage 'toy_square' asks for 1 GPU")
    assert len(messages.lines) >= 2 and all(line.startswith("still waiting for the cluster to grow (")
                                            for line in messages.lines[1:]), messages.lines
    assert str(caught.value).endswith("or add GPU nodes (waited 1.5 s)") and "\n" not in str(caught.value)
    assert nothing_written(tmp_path / "run")


def test_the_local_executor_refuses_a_gpu_stage_where_cuda_is_missing(tmp_path):
    if executors._cuda_devices():
        pytest.skip("this machine has a CUDA device")
    run_dir = tmp_path / "run"
    result = humove("run", toy_pipeline(tmp_path, "local", second_resources={"num_gpus": 1}), "--run-dir", run_dir)
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        "humove: stage 'toy_square' asks for 1 GPU per worker; this machine has 0 CUDA devices (local executor) — "
        "set resources.num_gpus: 0 and device: cpu, or run it where 1 GPU can be used")
    assert nothing_written(run_dir)
    # Without GPUs asked for, the same stages run.
    assert humove("run", toy_pipeline(tmp_path, "local"), "--run-dir", run_dir).exit_code == 0


# Set-up errors --------------------------------------------------------------------------------------------------

@pytest.mark.timeout(300)  # a Ray actor that raises in its constructor used to take minutes of restarts and logs
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_stage_that_cannot_set_up_ends_in_the_same_one_line_under_both_executors(tmp_path, executor):
    pipeline = toy_pipeline(tmp_path, executor, second_config={"missing_weights": "/models/none.pt"})
    result = humove("run", pipeline, "--run-dir", tmp_path / "run")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == ("humove: stage 'toy_square' failed to set up: FileNotFoundError: toy_square: weight file "
                         "/models/none.pt does not exist"), result.output
    # Nothing else of it: no traceback, no actor's death (Ray may print unrelated lines of its own meanwhile, e.g.
    # an idle worker's exit, so the whole output is not compared).
    assert result.output.count("FileNotFoundError") == 1 and result.output.count("humove: ") == 1, result.output
    assert not re.search(r"Traceback|ActorDiedError|RayActorError|toy_stages\.py", result.output), result.output
    assert {s.stage: s.ok for s in Ledger(str(tmp_path / "run")).summary()}.get("toy_square", 0) == 0
    debug = humove("run", pipeline, "--run-dir", tmp_path / "run", "--debug")
    assert isinstance(debug.exception, StageSetupError)
    assert "in setup" in debug.output and "raise FileNotFoundError" in debug.output, "--debug shows where it raised"


def test_a_prepare_worker_that_cannot_load_its_stage_passes_the_failure_through_the_model_worker(tmp_path):
    """The two-pool path without Ray: a stage module that does not import where `prepare` runs (a node without
    the package) reaches the driver as the same value, through the model's worker."""
    import json

    import numpy as np

    from humove.worker import PrepareWorker, StageWorker, to_json

    preparing = PrepareWorker("no_such_module_here:Stage", {}, str(tmp_path))
    assert preparing.setup_failed["type"] == "UnknownStageError"
    batch = {"item": np.array([to_json({"item": {"input_id": "v1", "number": 1}, "attempt": 1})], dtype=object)}
    prepared = preparing(batch)
    out = StageWorker("toy_stages:ToyFrames", {}, str(tmp_path))(prepared)
    [answer] = [json.loads(text) for text in out["records"]]
    error = StageSetupError("toy_frames", answer["setup_failed"])
    assert str(error).startswith("stage 'toy_frames' failed to set up: UnknownStageError: cannot load stage "
                                 "'no_such_module_here:Stage'") and "\n" not in str(error)


# The driver's environment in Ray workers ------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_ray_workers_see_the_drivers_environment_and_run_env(tmp_path, monkeypatch):
    """The workers of an already running Ray (as on nodes started with `ray start`) were started without the
    variables the driver sets now: they get them through Ray's runtime_env."""
    RayExecutor()  # Ray is running before the variables exist
    exported = f"exported-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("HUMOVE_TOY_VALUE", exported)
    from_file = f"from-file-{uuid.uuid4().hex[:8]}"
    pipeline = toy_pipeline(tmp_path, "ray", second="toy_stages:ToyEnv", count=2,
                            run={"env": {"HUMOVE_TOY_FILE_VALUE": from_file}})
    monkeypatch.setenv("HUMOVE_TOY_FILE_VALUE", "from-the-shell")  # the pipeline file's value wins, visibly
    seen, messages = {}, Messages()
    for variable in ("HUMOVE_TOY_VALUE", "HUMOVE_TOY_FILE_VALUE"):
        config, stages = load_pipeline(pipeline, [f"toy_env.variable={variable}"])
        run_dir = tmp_path / variable
        Runner(config, stages, str(run_dir), until="toy_env", progress=messages).run()
        records = Ledger(str(run_dir)).records("toy_env").to_pylist()
        assert records and all(r["pid"] != os.getpid() for r in records), "the stage ran in Ray workers"
        seen[variable] = {r["env_value"] for r in records}
    assert seen == {"HUMOVE_TOY_VALUE": {exported}, "HUMOVE_TOY_FILE_VALUE": {from_file}}
    assert messages.lines == ["run.env replaces the value of HUMOVE_TOY_FILE_VALUE from the environment"] * 2
    assert os.environ["HUMOVE_TOY_FILE_VALUE"] == "from-the-shell", "the driver's environment is restored after"


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@pytest.fixture
def started_ray_cluster(tmp_path):
    """A one-node cluster started with `ray start --head`, as on a cluster's node: its processes have their own
    environment (here without HUMOVE_TOY_VALUE), not the driver's. Its own ports and temp dir; stopped by
    killing its process group, which holds all its processes (`ray stop` would stop every Ray on the machine)."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile

    gcs, agent, first_worker = _free_ports(3)
    temp_dir = tempfile.mkdtemp(prefix="hr-", dir="/tmp")  # short: Ray's socket paths live under it
    env = {k: v for k, v in os.environ.items() if k != "HUMOVE_TOY_VALUE"}
    env["RAY_AUTH_MODE"] = "token"
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=2",
         f"--temp-dir={temp_dir}", "--include-dashboard=false", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={agent}",
         f"--min-worker-port={first_worker}", f"--max-worker-port={first_worker + 40}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and head.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", gcs)) == 0:
                    break
            time.sleep(0.5)
        assert head.poll() is None, "ray start --head failed"
        yield f"127.0.0.1:{gcs}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)  # a throwaway cluster: its GCS can take half a minute over SIGTERM
        head.wait()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.timeout(400)
def test_workers_of_a_cluster_started_with_ray_start_see_the_drivers_environment(tmp_path, started_ray_cluster):
    """What the issue saw: `HUMOVE_*` exported where `humove run --ray-address` runs, unknown on the nodes."""
    import subprocess
    import sys

    pipeline = toy_pipeline(tmp_path, "ray", second="toy_stages:ToyEnv", count=2)
    run_dir = tmp_path / "run"
    env = {**os.environ, "HUMOVE_TOY_VALUE": "exported-on-the-driver", "RAY_AUTH_MODE": "token"}
    done = subprocess.run([sys.executable, "-m", "humove.cli", "run", str(pipeline), "--run-dir", str(run_dir),
                           "--ray-address", started_ray_cluster, "--until", "toy_env"],
                          env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    records = Ledger(str(run_dir)).records("toy_env").to_pylist()
    assert len(records) == 2 and {r["env_value"] for r in records} == {"exported-on-the-driver"}

