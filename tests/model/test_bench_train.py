"""bench_train's measurement as `make gpu-check` calls it, in its dry mode on CPU (no GPU here): it runs the
trainer's FSDP2 + bf16 + checkpointing step and reports model-FLOP and hardware-FLOP use from the analytic count."""

import math
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root holds `bench/`

from bench.bench_train import measure_echomotion  # noqa: E402
from humove.model.config import DiTConfig  # noqa: E402
from humove.model.flops import forward_flops  # noqa: E402


def test_measure_echomotion_dry_run_on_cpu():
    result = measure_echomotion("cpu", steps=1, warmup=0, peak=0.001)
    assert "no GPU" in result["note"] and result["config"] == "tiny"
    assert (result["parallel"], result["precision"], result["gradient_checkpointing"]) == ("fsdp", "bf16", True)
    assert math.isfinite(result["loss"]) and result["step_s"] > 0
    assert not dist.is_initialized()  # the one-rank group it started is gone

    flops = forward_flops(DiTConfig.preset("tiny", text_len=16), video_tokens=3 * 4 * 4, motion_tokens=9 * 51)
    assert (result["video_tokens"], result["motion_tokens"]) == (48, 459)
    assert result["model_pflop_per_step"] == flops.training_step() / 1e15
    assert result["hardware_pflop_per_step"] == flops.hardware_step(gradient_checkpointing=True) / 1e15
    assert result["mfu"] == pytest.approx(flops.training_step() / result["step_s"] / 1e9)
    assert result["hfu"] / result["mfu"] == pytest.approx(flops.hardware_step(True) / flops.training_step())
