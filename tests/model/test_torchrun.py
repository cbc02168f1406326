"""Two-process `torchrun` smoke runs on CPU (gloo): DDP and FSDP2 train identically; FSDP2 resumes; FSDP2 under the
GPU's bf16 policy trains phase 2 with fp32 RoPE, timesteps and residual streams."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_fixtures import write_paired_shards

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "model" / "configs" / "tiny.yaml"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_paired_shards(folder, num_samples=8, per_shard=2, stats=True)
    return folder


def torchrun(run_dir, shards, *overrides, script=("-m", "humove.model.train")):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *script, str(TINY_YAML), "--set", f"run_dir={run_dir}", f"data.shards=[{shards}]", "log_every=1",
               *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


@pytest.mark.timeout(600)
def test_torchrun_ddp_and_fsdp_agree_and_fsdp_resumes(tmp_path, shards):
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


@pytest.mark.timeout(600)
def test_fsdp2_under_the_gpu_bf16_policy_keeps_rope_timesteps_and_residuals_fp32(tmp_path, shards):
    """The phase-2 loop on 2 gloo ranks with the precision policy `fsdp_mixed_precision` builds for a GPU, bf16
    autocast and gradient checkpointing (forward, recompute and backward), instrumented by fsdp_precision_probe.py.
    """
    from humove.model.train import build_model, load_train_config

    overrides = ["steps=2", "parallel=fsdp", "precision=bf16", "gradient_checkpointing=true", "checkpoint_every=2"]
    run_dir = tmp_path / "bf16"
    log = torchrun(run_dir, shards, *overrides, script=[str(REPO / "tests" / "model" / "fsdp_precision_probe.py")])
    assert [m["step"] for m in log] == [1, 2]
    assert all(math.isfinite(m["last_loss"]) and math.isfinite(m["grad_norm"]) and m["skipped"] == 0 for m in log)

    config = load_train_config(TINY_YAML, **{"run_dir": str(run_dir), "data.shards": [str(shards)]})
    torch.manual_seed(config.seed)
    reference = build_model(config, torch.device("cpu"))  # the step-1 weights, unwrapped and fp32: the sampler's view
    for rank in (0, 1):
        probe = json.loads((run_dir / f"probe-rank{rank}.json").read_text())
        seen = probe["block_inputs"]
        assert {key.split(".")[0] for key in seen} == {"0", "1", "2", "3"}  # tiny: 2 video-only + 2 dual blocks
        for key, dtypes in seen.items():  # FSDP hands every input on as the model passed it
            assert dtypes["received"] == dtypes["given"], (key, dtypes)
        # RoPE reaches every block as complex64, the modulation in fp32; the residual streams are fp32 from the
        # block after the one they enter (the embeddings' output is bf16 under autocast, as without FSDP). Each
        # block gets both streams (motion waits through the video-only blocks 0 and 1).
        rope = [key for key in seen if key.endswith(".rope")]
        modulation = [key for key in seen if key.endswith(".e0")]
        residual = ["1.x.video.tokens", "3.x.video.tokens", "3.x.motion.tokens"]
        assert len(rope) == 8 and len(modulation) == 8, sorted(seen)
        # FSDP finds every tensor needing gradients inside the bundle, in every call (forward and recompute).
        assert sorted(probe["grad_inputs"]) == ["0", "1", "2", "3"]
        for calls in probe["grad_inputs"].values():
            assert all(needing == found > 0 for needing, found in calls), calls
        for keys, dtype in ((rope, "complex64"), (modulation, "float32"), (residual, "float32")):
            for key in keys:
                assert seen[key]["received"] == [dtype], (key, seen[key])
        # The time embedding receives the fp32 timesteps the task sampler drew (no bf16 rounding: 937.3 stays),
        # and computes exactly what the fp32 model used for sampling computes from them.
        assert len(probe["drawn"]) == 2 and len(probe["embedded"]) == 4  # 2 steps × (t_video, t_motion)
        for step, draws in enumerate(probe["drawn"]):
            assert draws["dtype"] == "torch.float32"
            for call, name in zip(probe["embedded"][2 * step: 2 * step + 2], ("t_video", "t_motion"), strict=True):
                assert call["name"] == name and call["dtype"] == "torch.float32"
                assert call["timesteps"] == draws[name]
        assert any(t % 1 for t in probe["drawn"][0]["t_video"] + probe["drawn"][0]["t_motion"])  # not integers
        for call in probe["embedded"][:2]:
            timesteps = torch.tensor(call["timesteps"])
            with torch.no_grad():
                _, e0 = reference.embed_time(timesteps, len(timesteps), call["name"])
            assert torch.equal(torch.tensor(call["e0"]), e0.flatten()), call["name"]
