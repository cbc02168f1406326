"""Two-process `torchrun` smoke runs on CPU (gloo): DDP and FSDP2 train identically; FSDP2 resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_fixtures import write_paired_shards

REPO = Path(__file__).resolve().parents[2]


def torchrun(run_dir, shards, *overrides):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "humove.model.train", str(REPO / "model" / "configs" / "tiny.yaml"), "--set",
               f"run_dir={run_dir}", f"data.shards=[{shards}]", "log_every=1", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_torchrun_ddp_and_fsdp_agree_and_fsdp_resumes(tmp_path):
    shards = tmp_path / "shards"
    write_paired_shards(shards, num_samples=8, per_shard=2, stats=True)

    ddp_log = torchrun(tmp_path / "ddp", shards, "steps=3", "parallel=ddp")
    assert [m["step"] for m in ddp_log] == [1, 2, 3]
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["world_size"] == 2 and state["parallel"] == "ddp"
    assert [p["batches"] for p in state["data_positions"]] == [3, 3]  # each rank's own data position

    # FSDP2 on the same data and seed: same losses (same initial weights on both ranks, same averaged
    # gradients); only the reduction order may differ. Stopped after step 2, then resumed for step 3.
    fsdp_log = torchrun(tmp_path / "fsdp", shards, "steps=2", "checkpoint_every=2", "parallel=fsdp")
    fsdp_log += torchrun(tmp_path / "fsdp", shards, "steps=3", "checkpoint_every=2", "parallel=fsdp")[2:]
    assert [m["step"] for m in fsdp_log] == [1, 2, 3]
    for ddp, fsdp in zip(ddp_log, fsdp_log, strict=True):
        assert fsdp["last_loss"] == pytest.approx(ddp["last_loss"], rel=1e-4)
        assert fsdp["grad_norm"] == pytest.approx(ddp["grad_norm"], rel=1e-3)
    final = json.loads((tmp_path / "fsdp" / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert final["parallel"] == "fsdp" and final["step"] == 3
