"""What a run checks and carries before and while it uses workers: the resource pre-flight (a request the cluster
cannot hold is one line, not a wait forever), set-up errors in workers (one line under both executors), and the
driver's environment reaching Ray workers. The Ray tests share the session's embedded Ray."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
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
                 second_resources=None, run: dict | None = None, count: int = 3, echo: bool = False) -> Path:
    """Source → `second` (→ echo: streamed with `second` on Ray) → sum."""
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": count}},
              {"stage": second, "config": second_config or {}, "resources": second_resources or {}},
              *([{"stage": "toy_stages:ToyEcho"}] if echo else []),
              {"stage": "toy_stages:ToySum"}]  # runs in the driver: never checked
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


def test_a_pool_may_grow_only_from_where_it_starts(tmp_path):
    """`max_concurrency` (the most workers a pool grows to as nodes join) below `concurrency` is one config line."""
    from humove.config import ConfigError

    _, stages = load_pipeline(toy_pipeline(tmp_path, "ray", second_resources={"concurrency": 2, "max_concurrency": 8}))
    assert (stages[1].resources.concurrency, stages[1].resources.max_concurrency) == (2, 8)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(toy_pipeline(tmp_path, "ray", second_resources={"concurrency": 4}),
                      ["toy_square.resources.max_concurrency=2"])
    assert str(caught.value) == (
        "--set toy_square.resources.max_concurrency=2: stage 'toy_square': resources.max_concurrency: 2 is below "
        "concurrency (4), where the pool starts: set max_concurrency: 4 or more, or a smaller concurrency")


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
    # On Ray the square streams with echo: its workers pass the failure on through the echo's.
    pipeline = toy_pipeline(tmp_path, executor, second_config={"missing_weights": "/models/none.pt"}, echo=True)
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


# Starting Ray, and a cluster of two nodes --------------------------------------------------------------------------

def humove_process(*args, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """The real CLI in a process of its own (this one already holds the session's embedded Ray)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "COLUMNS": "300", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "humove.cli", *[str(a) for a in args]], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)


def finished(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output


@pytest.mark.timeout(300)
def test_a_ray_that_does_not_start_or_a_cluster_that_does_not_answer_is_one_line(tmp_path):
    """Nothing listens at --ray-address: Ray itself tries 20 times, about 40 s each, printing a warning every few
    seconds (a run was still waiting after 5 minutes); now the head gets run.ray_connect_timeout_s to answer. A
    Ray that cannot start (its temp dir cannot be made) was told as a storage error of the first stage."""
    [port] = _free_ports(1)
    pipeline = toy_pipeline(tmp_path, "ray", run={"ray_connect_timeout_s": 1})
    code, output = finished(humove_process("run", pipeline, "--run-dir", tmp_path / "a", "--ray-address",
                                           f"127.0.0.1:{port}"), timeout=120)
    assert code == 1 and output.strip().splitlines()[-1] == (
        f"humove: cannot reach the Ray cluster at 127.0.0.1:{port}: connection refused for 1 s — check --ray-address "
        "and that its head is running (ray start --head); run.ray_connect_timeout_s waits longer"), output
    assert "Traceback" not in output and "rpc_client" not in output and output.count("humove: ") == 1, output
    code, output = finished(humove_process("run", pipeline, "--run-dir", tmp_path / "b",
                                           env={"RAY_TMPDIR": str(tmp_path / "no" / "such" / "folder")}))
    assert code == 1 and re.fullmatch(r"humove: cannot start Ray: \w+: .*no/such/folder.* \(--debug shows Ray's "
                                      r"report\)", output.strip().splitlines()[-1]), output
    assert "Traceback" not in output and output.count("humove: ") == 1, output


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _ray_start(args: list[str], temp_dir: str, env: dict, cover: Path | None = None) -> subprocess.Popen:
    """`ray start --block` in a session of its own (its process group holds all the node's processes). `cover`:
    the node runs in a mount namespace of its own, with an empty file system over that folder."""
    command = [str(Path(sys.executable).parent / "ray"), "start", "--block", f"--temp-dir={temp_dir}",
               "--disable-usage-stats", *args]
    if cover:
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   'mount -t tmpfs humove-test "$0" && exec "$@"', str(cover), *command]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


# Asked of the cluster's GCS directly, from a process with the cluster's token auth (this one's own Ray is another).
_WAIT_FOR_TWO_NODES = """
import sys, time
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
address, manager_port, deadline = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        nodes = [n for n in GcsClient(address=address).get_all_node_info(timeout=5).values()
                 if n.state == GcsNodeInfo.ALIVE]
    except Exception:  # the GCS may not answer yet
        nodes = []
    if len(nodes) == 2:
        sys.exit(print(next(n.node_id.hex() for n in nodes if n.node_manager_port == manager_port)))
    time.sleep(0.5)
sys.exit("the worker node did not join")
"""


@dataclass
class RayCluster:
    address: str
    env: dict
    temp_dir: str
    worker_ports: list[int]
    hidden: Path | None  # a folder the worker node does not see (None where mount namespaces are unavailable)
    worker: subprocess.Popen | None = None  # the worker node, once it joined
    worker_node_id: str = ""

    def join_worker(self) -> None:
        """Start the worker node (once) and wait until the cluster has two nodes."""
        if self.worker is not None:
            return
        manager, objects, metrics, runtime_env_agent, worker_agent, worker_first = self.worker_ports
        self.worker = _ray_start([f"--address={self.address}", "--num-cpus=1", f"--node-manager-port={manager}",
                                  f"--object-manager-port={objects}", f"--metrics-export-port={metrics}",
                                  f"--runtime-env-agent-port={runtime_env_agent}",
                                  f"--dashboard-agent-listen-port={worker_agent}",
                                  f"--min-worker-port={worker_first}", f"--max-worker-port={worker_first + 30}"],
                                 self.temp_dir, self.env, cover=self.hidden)
        joined = subprocess.run([sys.executable, "-c", _WAIT_FOR_TWO_NODES, self.address, str(manager), "120"],
                                env=self.env, capture_output=True, text=True, timeout=180)
        assert joined.returncode == 0, joined.stderr
        self.worker_node_id = joined.stdout.strip()

    def kill_worker(self) -> None:
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()


@pytest.fixture(scope="module")
def ray_cluster():
    """A cluster started with `ray start`, as on two machines: a head and, once a test calls `join_worker` (or
    uses `two_node_cluster`), a worker node, one CPU each, with their own environment (here without
    HUMOVE_TOY_VALUE), not the driver's. Both see this machine's files, except that the worker node has an empty
    file system over `hidden` (as a node without the NFS mount would). Own ports and temp dirs; stopped by killing
    each node's process group (`ray stop` would stop every Ray on the machine). Starting it costs about 30 s here:
    the tests that need Ray nodes share it, in this order: the one that needs the head alone first, the one that
    kills the worker node last."""
    gcs, agent, first_worker, *worker_ports = _free_ports(9)
    temp_dirs = [tempfile.mkdtemp(prefix="hr-", dir="/tmp") for _ in range(2)]  # short: Ray's socket paths
    hidden = Path(tempfile.mkdtemp(prefix="humove-hidden-"))
    can_hide = os.geteuid() == 0 and shutil.which("unshare") is not None
    env = {k: v for k, v in os.environ.items() if k != "HUMOVE_TOY_VALUE"}
    env["RAY_AUTH_MODE"] = "token"
    # The GCS declares a killed node dead after about 4 s, not 15–30 s (Ray's health checks: 5 misses 3 s apart
    # by default); a loaded node still has a second to answer each check.
    env.update(RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
               RAY_health_check_failure_threshold="4")
    head = _ray_start(["--head", f"--port={gcs}", "--num-cpus=1", "--include-dashboard=false",
                       f"--dashboard-agent-listen-port={agent}", f"--min-worker-port={first_worker}",
                       f"--max-worker-port={first_worker + 30}"], temp_dirs[0], env)
    cluster = RayCluster(f"127.0.0.1:{gcs}", env, temp_dirs[1], worker_ports, hidden if can_hide else None)
    try:
        _wait(lambda: _accepts(gcs), head, "ray start --head")
        yield cluster
    finally:
        for node in (head, cluster.worker):  # a throwaway cluster: its GCS can take half a minute over SIGTERM
            if node is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        for folder in (*temp_dirs, hidden):
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def two_node_cluster(ray_cluster):
    ray_cluster.join_worker()
    return ray_cluster


def _accepts(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if ready():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not come up")


@pytest.mark.timeout(400)
def test_a_stream_started_on_one_node_grows_onto_a_node_that_joins_mid_run(tmp_path, ray_cluster):
    """Pools were fixed when a stream started, so a node that joined later (an autoscaling cluster, a Slurm job
    adding nodes) stood idle. Now a CPU pool grows onto it. Every square item waits while `hold` exists: the head's
    square worker holds its items until the joined node runs one too. What Ray logs when the growing pools' last
    actors are stopped stays off the terminal. (Needs the head alone: the first test on this cluster.)"""
    assert ray_cluster.worker is None, "runs while the cluster has one node"
    hold = tmp_path / "hold"
    hold.touch()
    half = {"num_cpus": 0.5, "batch_size": 1}  # square and echo pools both start on the 1-CPU head
    stages = [{"stage": "toy_stages:ToySource", "config": {"count": 12}},
              {"stage": "toy_stages:ToySquare", "resources": half,
               "config": {"log_nodes": True, "hold_while": str(hold), "wait_seconds": 120}},
              {"stage": "toy_stages:ToyEcho", "resources": half}]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({"name": "toy", "run": {"executor": "ray"}, "stages": stages}))
    run_dir = tmp_path / "run"
    driver = humove_process("run", pipeline, "--run-dir", run_dir, "--ray-address", ray_cluster.address,
                            "--shared-fs")
    on_nodes = run_dir / "calls" / "toy_square.nodes"
    try:
        _wait(on_nodes.exists, driver, "an item on the head", timeout=120)
        ray_cluster.join_worker()
        _wait(lambda: ray_cluster.worker_node_id in on_nodes.read_text(), driver, "an item on the joined node",
              timeout=90)
    except AssertionError as failed:
        driver.kill()
        raise AssertionError(f"{failed}\n{driver.communicate()[0]}") from None
    finally:
        hold.unlink()
    code, output = finished(driver)
    assert code == 0, output
    squares = Ledger(str(run_dir)).records("toy_square").to_pylist()
    assert len(squares) == 24 and {r["status"] for r in squares} == {"ok"}, output
    assert len({line.split()[1] for line in on_nodes.read_text().splitlines()}) == 2
    echoes = Ledger(str(run_dir)).records("toy_echo").to_pylist()
    assert sorted(r["id"] for r in echoes if r["status"] == "ok") == sorted(r["id"] for r in squares), output
    assert not re.search(r"Traceback|\((raylet|gcs_server)|ERROR|Failed to kill actor", output), output


@pytest.mark.timeout(400)
def test_workers_of_a_cluster_started_with_ray_start_see_the_drivers_environment(tmp_path, two_node_cluster):
    """What the issue saw: `HUMOVE_*` exported where `humove run --ray-address` runs, unknown on the nodes."""
    pipeline = toy_pipeline(tmp_path, "ray", second="toy_stages:ToyEnv", count=2)
    code, output = finished(humove_process("run", pipeline, "--run-dir", tmp_path / "run", "--ray-address",
                                           two_node_cluster.address, "--shared-fs", "--until", "toy_env",
                                           env={"HUMOVE_TOY_VALUE": "exported-on-the-driver"}))
    assert code == 0, output
    records = Ledger(str(tmp_path / "run")).records("toy_env").to_pylist()
    assert len(records) == 2 and {r["env_value"] for r in records} == {"exported-on-the-driver"}


@pytest.mark.timeout(400)
def test_a_local_run_dir_on_several_nodes_must_be_shared_and_seen_by_every_node(tmp_path, two_node_cluster):
    """Before, a local run dir on two nodes was taken: download wrote its videos on one node, ingest ran on the
    other and rejected them all as missing, for good. Now it is an error unless the user says the folder is shared
    (`--shared-fs`), and then every node must see a file the driver writes there."""
    pipeline = toy_pipeline(tmp_path, "ray")
    run_dir = tmp_path / "run"
    code, output = finished(humove_process("run", pipeline, "--run-dir", run_dir, "--ray-address",
                                           two_node_cluster.address))
    assert code == 1 and output.strip().splitlines()[-1] == (
        f"humove: run dir {run_dir} is a local path, but the Ray cluster has 2 nodes: each node's workers would "
        "write their files on its own disk, out of reach of the stages after them — use an object store (--run-dir "
        "s3://…), or a folder every node mounts at this path and say so with --shared-fs (run.shared_fs: true)"), output
    assert nothing_written(run_dir) and "Traceback" not in output
    if two_node_cluster.hidden is None:
        pytest.skip("no mount namespace for a node that does not see the run dir (needs root and unshare)")
    unseen = two_node_cluster.hidden / "run"  # the worker node has an empty file system over this folder
    code, output = finished(humove_process("run", toy_pipeline(tmp_path, "ray", run={"shared_fs": True}),
                                           "--run-dir", unseen, "--ray-address", two_node_cluster.address))
    assert code == 1, output
    assert re.fullmatch(rf"humove: --shared-fs: node {two_node_cluster.worker_node_id[:8]} \(\S+\) does not see "
                        rf"{unseen}/\.shared-fs-check-\w+, which this machine wrote into the run dir — mount the run "
                        r"dir at the same path on every node, or use an object store \(--run-dir s3://…\)",
                        output.strip().splitlines()[-1]), output
    assert nothing_written(unseen) and not list(unseen.glob(".shared-fs-check-*")), "the marker is removed"


@pytest.mark.timeout(500)
def test_losing_a_node_mid_run_is_one_line_and_its_items_run_again(tmp_path, two_node_cluster):
    """The worker node dies while it runs an item (all its processes killed): the run finishes with every item
    done, and says so in one line — before, Ray's retries, the node's death and Ray Data's tracebacks of each lost
    batch were 158 lines. Square and echo stream together: what the lost node held of either runs again. (Three
    square workers and an echo worker do not fit two 1-CPU nodes: two workers, one per node, each run both.)
    Every square item waits while `hold` exists, so the node is killed mid-item, after each node took one.
    (Kills the worker node: the last test on this cluster.)"""
    hold = tmp_path / "hold"
    hold.touch()
    pipeline = toy_pipeline(tmp_path, "ray", count=6, second_config={"hold_while": str(hold), "wait_seconds": 120,
                                                                     "log_nodes": True},
                            second_resources={"batch_size": 1, "concurrency": 3}, echo=True)
    run_dir = tmp_path / "run"
    driver = humove_process("run", pipeline, "--run-dir", run_dir, "--ray-address", two_node_cluster.address,
                            "--shared-fs", "--until", "toy_echo")
    on_nodes = run_dir / "calls" / "toy_square.nodes"
    try:
        _wait(lambda: on_nodes.exists() and two_node_cluster.worker_node_id in on_nodes.read_text(), driver,
              "an item on the worker node", timeout=300)
    except AssertionError:
        driver.kill()
        raise AssertionError(driver.communicate()[0]) from None
    finally:
        two_node_cluster.kill_worker()  # mid-item: its item waits for `hold`
        hold.unlink()
    code, output = finished(driver)
    assert code == 0, output
    squares = Ledger(str(run_dir)).records("toy_square").to_pylist()
    assert {r["status"] for r in squares} == {"ok"} and len(squares) == 12, output
    echoes = Ledger(str(run_dir)).records("toy_echo").to_pylist()
    assert sorted(r["id"] for r in echoes if r["status"] == "ok") == sorted(r["id"] for r in squares), output
    lost = [line for line in output.splitlines() if "lost Ray node" in line]
    stamp = r"(?:[\d-]+ [\d:]+ )?"  # without a terminal, notices carry the time
    assert len(lost) == 1 and re.fullmatch(rf"{stamp}lost Ray node {two_node_cluster.worker_node_id[:8]} \(\S+\): the "
                                           "items it was running run again on the others", lost[0]), output
    assert not re.search(r"Traceback|\(raylet\)|ERROR|retries remaining|marked dead", output), output
