"""The cluster recipes (cluster/): the Slurm script and the KubeRay manifests parse, hang together, and the humove
command each runs is one that humove's own CLI accepts, on a pipeline that loads, against a run dir every node
reaches. The Slurm script runs for real against fake `srun`, `scontrol`, `python` and `humove` commands (no
Slurm or Ray here), so what it starts on which node, how it waits, and what it runs are checked, not read."""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import typer
import typer.main
import yaml

from humove.cli import app
from humove.config import load_pipeline

REPO = Path(__file__).resolve().parent.parent
SBATCH = REPO / "cluster" / "slurm" / "humove.sbatch"
KUBERAY = REPO / "cluster" / "kuberay"


def check_humove_run(argv: list[str], root: Path = REPO, image_root: str | None = None) -> dict:
    """What a cluster's `humove run` must be, checked without running it: its options parse with humove's CLI, its
    pipeline loads with its `--set` and `--from` (a path under `image_root`, the checkout inside an image, is read
    from `root`), it joins the cluster (`--ray-address`), its run dir is shared by every node (s3://, or a folder
    with --shared-fs), and the SMPL folder reaches every worker through `run.env`. Returns the parsed options."""
    assert argv[:2] == ["humove", "run"], f"not a `humove run` command: {argv}"
    command = typer.main.get_command(app).get_command(None, "run")
    with command.make_context("humove run", list(argv[2:])) as ctx:  # a bad option raises (typer.TyperException)
        options = dict(ctx.params)
    pipeline = str(options["pipeline"])
    if image_root and pipeline.startswith(image_root.rstrip("/") + "/"):
        pipeline = str(root / pipeline[len(image_root.rstrip("/")) + 1:])
    elif not Path(pipeline).is_absolute():
        pipeline = str(root / pipeline)
    config, _ = load_pipeline(pipeline, list(options["set_"]), start=options["start"])
    assert options["ray_address"], "no --ray-address: humove would start a Ray of its own instead of joining"
    assert options["executor"] in (None, "ray"), f"--executor {options['executor']} runs on one machine only"
    assert options["run_dir"].startswith("s3://") or options["shared_fs"], (
        f"run dir {options['run_dir']} is neither s3:// nor declared shared (--shared-fs)")
    assert config.run.env.get("HUMOVE_SMPL_DIR"), "HUMOVE_SMPL_DIR is not in the pipeline's run.env"
    return {**options, "config": config}


GOOD = ["humove", "run", "cluster/humove-cluster.yaml", "--run-dir", "s3://b/r", "--ray-address", "auto"]


@pytest.mark.parametrize("argv, error", [
    (GOOD[:-2] + ["--ray-adress", "auto"], typer.TyperException),   # a usage error
    (["humove", "run", "pipelines/nope.yaml", *GOOD[3:]], ValueError),
    (GOOD + ["--set", "smooth.sigmaa=2"], ValueError),
    (GOOD[:-2], AssertionError),
    (["humove", "run", "cluster/humove-cluster.yaml", "--run-dir", "/data/r", "--ray-address", "auto"],
     AssertionError),
    (["humove", "run", "pipelines/humove.yaml", *GOOD[3:]], AssertionError),   # no HUMOVE_SMPL_DIR in run.env
])
def test_the_command_check_refuses_what_a_cluster_run_cannot_use(argv, error):
    check_humove_run(GOOD)
    with pytest.raises(error):
        check_humove_run(argv)


# --- Slurm ---------------------------------------------------------------------------------------------------

SBATCH_OPTIONS = {"job-name", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task", "mem", "exclusive",
                  "time", "output", "partition", "account"}


def sbatch_header() -> dict[str, str]:
    """The #SBATCH options, which sbatch reads only up to the first line that is neither a comment nor blank."""
    lines = SBATCH.read_text().splitlines()
    body = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    late = [line for line in lines[body:] if line.startswith("#SBATCH")]
    assert not late, f"#SBATCH lines after the first command are ignored by sbatch: {late}"
    options = {}
    for line in lines[:body]:
        if line.startswith("#SBATCH"):
            match = re.fullmatch(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
            assert match, f"not a `#SBATCH --option[=value]` line: {line!r}"
            options[match[1]] = match[2]
    return options


def test_the_slurm_script_is_valid_bash_with_one_ray_node_per_slurm_node():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    options = sbatch_header()
    assert set(options) <= SBATCH_OPTIONS, f"unexpected sbatch options: {set(options) - SBATCH_OPTIONS}"
    assert int(options["nodes"]) >= 2 and options["ntasks-per-node"] == "1"
    assert int(options["gpus-per-node"]) >= 1 and int(options["cpus-per-task"]) >= 1
    assert "exclusive" in options


FAKES = {
    # srun: logs each step; `hostname` answers an address, a `ray start --block` step stays alive until killed.
    "srun": '#!/bin/bash\necho "$*" >> "$FAKE_DIR/srun.log"\n'
            'for arg in "$@"; do [[ $arg == hostname ]] && { echo "10.0.0.1 fe80::1"; exit 0; }; done\n'
            'echo $$ >> "$FAKE_DIR/steps.pid"\nexec sleep 60\n',
    "scontrol": '#!/bin/bash\n[[ "$*" == "show hostnames gpu[01-03]" ]] && printf "gpu01\\ngpu02\\ngpu03\\n"\n',
    # python: the script's count of joined nodes: the `ray start` steps srun has begun, at most FAKE_JOINED, after
    # up to 2 s for them to begin (as a real count takes a moment). A node cannot join before its step starts:
    # answering FAKE_JOINED at once let humove run, and the script end and kill its steps, before the last began.
    "python": '#!/bin/bash\nfor _ in {1..20}; do started=$(grep -c "ray start" "$FAKE_DIR/srun.log")\n'
              '((started >= FAKE_JOINED)) && break; sleep 0.1; done\n'
              'echo $(( started < FAKE_JOINED ? started : FAKE_JOINED ))\n',
    "humove": '#!/bin/bash\nprintf "%s\\0" humove "$@" > "$FAKE_DIR/humove.argv"\n',
}


def running(pid: int) -> bool:
    """Alive and not a zombie (an ended child that nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run_fake_slurm(tmp_path: Path, run_dir: str, joined: int, *args: str, wait_s: str = "300"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in FAKES.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_DIR": str(tmp_path), "FAKE_JOINED": str(joined),
           "SLURM_JOB_NODELIST": "gpu[01-03]", "SLURM_CPUS_PER_TASK": "64", "SLURM_GPUS_ON_NODE": "8",
           "HUMOVE_RUN_DIR": run_dir, "HUMOVE_VENV": str(tmp_path / "no-venv"), "HUMOVE_RAY_WAIT_S": wait_s}
    result = subprocess.run(["bash", str(SBATCH), *args], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=60)
    steps = (tmp_path / "srun.log").read_text().splitlines()
    # (a script that gives up at once may end its steps before they have started: no pid written)
    started = tmp_path / "steps.pid"
    pids = [int(pid) for pid in started.read_text().split()] if started.exists() else []
    deadline = time.monotonic() + 10
    while any(map(running, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(running, pids)), "the script must end its Ray steps when it ends"
    argv_file = tmp_path / "humove.argv"
    argv = argv_file.read_text().split("\0")[:-1] if argv_file.exists() else None
    return result, steps, argv


def test_the_slurm_script_starts_a_head_then_workers_waits_for_them_and_runs_humove_on_the_cluster(tmp_path):
    result, steps, argv = run_fake_slurm(tmp_path, "s3://bucket/humove/run1", 3, "--until", "keywords")
    assert result.returncode == 0, result.stderr
    assert steps[0] == "--nodes=1 --ntasks=1 -w gpu01 hostname --ip-address"
    assert sorted(steps[1:]) == [
        "--nodes=1 --ntasks=1 -w gpu01 ray start --head --node-ip-address=10.0.0.1 --port=6379 --num-cpus=64 "
        "--num-gpus=8 --block",
        "--nodes=1 --ntasks=1 -w gpu02 ray start --address=10.0.0.1:6379 --num-cpus=64 --num-gpus=8 --block",
        "--nodes=1 --ntasks=1 -w gpu03 ray start --address=10.0.0.1:6379 --num-cpus=64 --num-gpus=8 --block",
    ]
    assert argv == ["humove", "run", "cluster/humove-cluster.yaml", "--run-dir", "s3://bucket/humove/run1",
                    "--ray-address", "10.0.0.1:6379", "--until", "keywords"]
    assert check_humove_run(argv)["config"].run.env == {"HUMOVE_SMPL_DIR": "/models/smpl"}


def test_the_slurm_script_declares_a_local_run_dir_shared_and_stops_when_nodes_do_not_join(tmp_path):
    result, _, argv = run_fake_slurm(tmp_path / "a", "/lustre/humove/run1", 3)
    assert result.returncode == 0, result.stderr
    assert check_humove_run(argv)["shared_fs"] and argv[-1] == "--shared-fs"

    result, _, argv = run_fake_slurm(tmp_path / "b", "s3://bucket/run1", 1, wait_s="0")
    assert result.returncode == 1 and argv is None
    assert "1 of 3 nodes joined Ray at 10.0.0.1:6379 within 0s" in result.stderr


# --- KubeRay -------------------------------------------------------------------------------------------------

def manifest(name: str) -> dict:
    documents = list(yaml.safe_load_all((KUBERAY / name).read_text()))
    assert len(documents) == 1
    return documents[0]


def pinned_ray_version() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.fullmatch(r"ray\[data\]==(\S+)", d)[1] for d in dependencies if d.startswith("ray["))


def dockerfile() -> tuple[str, str]:
    """The image's Ray version (from its base image) and where it holds the checkout (WORKDIR)."""
    text = (KUBERAY / "Dockerfile").read_text()
    version = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu$", text, re.M)[1]
    return version, re.search(r"^WORKDIR (\S+)$", text, re.M)[1]


def test_the_raycluster_has_a_head_and_a_gpu_worker_group_from_one_image_at_humoves_ray_version():
    cluster = manifest("raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    assert spec["rayVersion"] == pinned_ray_version() == dockerfile()[0]
    head = spec["headGroupSpec"]["template"]["spec"]
    groups = [group["template"]["spec"] for group in spec["workerGroupSpecs"]]
    pods = [head, *groups]
    containers = [pod["containers"][0] for pod in pods]
    assert len({c["image"] for c in containers}) == 1, "head and workers must run the same image"
    for container in containers:  # KubeRay's own `ray start` runs in each: no command of ours replaces it
        assert "command" not in container and "args" not in container
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"].get("limits", {})
    for group, pod in zip(spec["workerGroupSpecs"], groups, strict=True):
        resources = pod["containers"][0]["resources"]
        assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    smpl_dir = load_pipeline(REPO / "cluster" / "humove-cluster.yaml")[0].run.env["HUMOVE_SMPL_DIR"]
    for pod in pods:  # the weights and the SMPL folder the pipeline names are mounted in every pod
        mounts = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]]
        assert any(smpl_dir.startswith(path + "/") for path in mounts), (smpl_dir, mounts)
        claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert {m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/models"} <= claims


def test_the_rayjob_runs_a_valid_humove_command_on_that_cluster():
    job, cluster = manifest("rayjob.yaml"), manifest("raycluster.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    options = check_humove_run(shlex.split(job["spec"]["entrypoint"]), image_root=dockerfile()[1])
    assert options["run_dir"].startswith("s3://"), "pods share no folder: the run dir is an object store prefix"
