"""The analytic FLOP count behind the trainer benchmark's MFU: the hand count at the 1.3B shapes, and torch's own
count of the same passes (on the meta device, where attention runs as plain batched products)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT
from humove.model.flops import forward_flops


def test_hand_count_at_the_wan_1_3b_shapes():
    flops = forward_flops(DiTConfig.preset("wan2.1-1.3b"), video_tokens=21 * 30 * 52, motion_tokens=81 * 51)
    assert round(flops.total / 1e15, 3) == 0.347
    assert round(flops.training_step() / 1e15, 3) == 1.041
    # What bench_train used to call useful work: recomputed blocks and the fused attention backward's scores.
    assert flops.hardware_step(gradient_checkpointing=True) / flops.training_step() == pytest.approx(1.46, abs=0.01)
    assert flops.hardware_step(gradient_checkpointing=False) / flops.training_step() == pytest.approx(1.12, abs=0.01)


def counted(model, grid, frames, *, video=True, motion=True, train=False):
    """torch's FLOP count of one forward (or forward + backward) pass of `model` on the meta device."""
    cfg = model.config
    inputs = dict(
        video=torch.randn(1, cfg.in_channels, *grid, device="meta") if video else None,
        motion=torch.randn(1, frames, 235, device="meta") if motion else None,
        t_video=torch.tensor([500.0], device="meta") if video else None,
        t_motion=torch.tensor([500.0], device="meta") if motion else None,
        context=torch.randn(1, 5, cfg.text_dim, device="meta"), task=torch.zeros(1, dtype=torch.long, device="meta"))
    with FlopCounterMode(display=False) as counter:
        video_pred, motion_pred = model(**inputs)
        if train:
            sum(p.sum() for p in (video_pred, motion_pred) if p is not None).backward()
    return counter.get_total_flops(), counter.get_flop_counts()["Global"]


@pytest.fixture(scope="module")
def meta_model():
    with torch.device("meta"):
        return EchoMotionDiT(DiTConfig.preset("tiny", text_len=16, motion_mlp_hidden=48))


@pytest.mark.parametrize("video, motion", [(True, True), (False, True), (True, False)])
def test_forward_count_equals_torchs_count(meta_model, video, motion):
    grid, frames = (3, 8, 6), 9  # 3 × 4 × 3 = 36 patches, 9 motion frames
    total, by_op = counted(meta_model, grid, frames, video=video, motion=motion)
    flops = forward_flops(meta_model.config, 36 if video else 0, 9 * 51 if motion else 0)
    assert flops.total == total
    assert flops.attention == by_op[torch.ops.aten.bmm]  # attention is the only batched product here


def test_training_step_with_checkpointing_counts_the_recomputed_blocks(meta_model):
    meta_model.enable_gradient_checkpointing(True)
    try:
        total, _ = counted(meta_model, (3, 8, 6), 9, train=True)
    finally:
        meta_model.enable_gradient_checkpointing(False)
    flops = forward_flops(meta_model.config, 36, 9 * 51)
    # Plain batched products have a 2× backward; a fused attention kernel's 2.5× is the `fused_attention` term.
    # torch runs 0.06% less: the first layers (patch, text, time, task, motion MLPs) need no input gradient.
    assert total == pytest.approx(flops.hardware_step(gradient_checkpointing=True, fused_attention=False), rel=1e-3)
    assert total < flops.hardware_step(gradient_checkpointing=True, fused_attention=False)
    assert flops.hardware_step(True) - flops.hardware_step(True, fused_attention=False) == flops.attention // 2


def test_bad_token_counts_are_refused():
    config = DiTConfig.preset("tiny")
    with pytest.raises(ValueError, match="not a multiple of 51"):
        forward_flops(config, 10, 50)
    with pytest.raises(ValueError, match="0 video and 0 motion"):
        forward_flops(config, 0, 0)
