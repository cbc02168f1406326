"""Wan's per-axis RoPE and EchoMotion's MVS-RoPE positions."""

import itertools

import pytest
import torch

from humove.model.config import DiTConfig
from humove.model.dit import EchoMotionDiT
from humove.model.rope import (
    apply_rope,
    motion_positions,
    rope_axis_pairs,
    rope_inverse_frequencies,
    rope_rotations,
    video_positions,
)


def reference_wan_grid_rope(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Independent reference for Wan2.1's grid RoPE, written as Wan formulates it: a 1024-row complex table per
    axis (dims d - 4(d//6), 2(d//6), 2(d//6)), indexed by integer (t, h, w) and multiplied onto the head vectors
    read as complex numbers. x: (B, L, heads, d) in Wan's layout."""
    d = x.shape[-1]
    tables = []
    for axis_dim in (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)):
        exponents = torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim
        angles = torch.outer(torch.arange(1024, dtype=torch.float64), 1.0 / 10000.0**exponents)
        tables.append(torch.polar(torch.ones_like(angles), angles))
    frames, height, width = grid
    rows = []
    for t, h, w in itertools.product(range(frames), range(height), range(width)):
        rows.append(torch.cat([tables[0][t], tables[1][h], tables[2][w]]))
    rotation = torch.stack(rows)[None, :, None, :]  # (1, L, 1, d/2)
    as_complex = torch.view_as_complex(x.to(torch.float64).reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(as_complex * rotation).flatten(-2).float()


def test_axis_split_matches_wan_for_head_dim_128():
    assert rope_axis_pairs(128) == (22, 21, 21)
    t_freqs, h_freqs, w_freqs = rope_inverse_frequencies(128)
    assert torch.allclose(t_freqs, 10000.0 ** -(torch.arange(22, dtype=torch.float64) * 2 / 44))
    assert torch.allclose(h_freqs, 10000.0 ** -(torch.arange(21, dtype=torch.float64) * 2 / 42))
    assert torch.equal(h_freqs, w_freqs)


@pytest.mark.parametrize("head_dim", [128, 16])
def test_video_rope_at_scale_one_equals_wan_grid_rope(head_dim):
    torch.manual_seed(0)
    grid = (3, 4, 5)
    x = torch.randn(2, 60, 3, head_dim)  # Wan layout (B, L, heads, d)
    expected = reference_wan_grid_rope(x, grid)
    rotations = rope_rotations(video_positions(grid, time_scale=1.0), head_dim)
    ours = apply_rope(x.transpose(1, 2), rotations).transpose(1, 2)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_video_positions_are_4t_h_w_in_flatten_order():
    positions = video_positions((3, 2, 2), time_scale=4.0)
    expected = [(4 * t, h, w) for t in range(3) for h in range(2) for w in range(2)]
    assert positions.tolist() == [list(map(float, p)) for p in expected]


def test_motion_positions_are_f_H_plus_i_W_plus_i():
    positions = motion_positions(num_frames=9, tokens_per_frame=51, grid_hw=(30, 52), time_scale=4.0)
    assert positions.shape == (9 * 51, 3)
    expected = [(f, 30 + i, 52 + i) for f in range(9) for i in range(51)]
    assert positions.tolist() == [list(map(float, p)) for p in expected]
    # Scale 1: motion frames sit at fractional times f / 4.
    scaled = motion_positions(9, 51, (30, 52), time_scale=1.0)
    assert scaled[51 * 5, 0].item() == pytest.approx(5 / 4)


@pytest.mark.parametrize("scale", [4.0, 1.0])
def test_motion_frames_share_time_with_their_latent_frame_and_never_collide(scale):
    video = video_positions((3, 4, 6), time_scale=scale)
    motion = motion_positions(9, 51, (4, 6), time_scale=scale)
    for t in range(3):  # motion frame 4t is latent frame t
        assert motion[4 * t * 51, 0] == video[t * 24, 0]
    video_set = {tuple(p) for p in video.tolist()}
    assert not video_set & {tuple(p) for p in motion.tolist()}
    # The diagonal offset puts every motion token outside the video's spatial range.
    assert (motion[:, 1] >= 4).all() and (motion[:, 2] >= 6).all()


def test_rope_scores_depend_only_on_position_differences():
    torch.manual_seed(1)
    q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    positions = torch.rand(5, 3, dtype=torch.float64) * 20
    shift = torch.tensor([3.0, 7.0, -2.0], dtype=torch.float64)
    scores = []
    for pos in (positions, positions + shift):
        rotations = rope_rotations(pos, 16)
        scores.append(apply_rope(q, rotations) @ apply_rope(k, rotations).transpose(-1, -2))
    assert torch.allclose(scores[0], scores[1], atol=1e-4)


def test_motion_only_forward_does_not_depend_on_assumed_video_grid():
    """Phase 1 places motion at (f, H+i, W+i) with an assumed grid; RoPE being relative, the output is the same."""
    torch.manual_seed(2)
    outputs = []
    for grid_hw in ((4, 4), (30, 52)):
        torch.manual_seed(2)
        model = EchoMotionDiT(DiTConfig.preset("tiny", video_grid_hw=grid_hw))
        with torch.no_grad():
            for param in model.motion_parameters():
                param.normal_(0, 0.1)
        torch.manual_seed(3)
        motion, context = torch.randn(1, 5, 235), torch.randn(1, 4, 32)
        outputs.append(model(None, motion, None, torch.tensor([300.0]), context, torch.tensor([0]))[1])
    assert outputs[0].abs().max() > 0
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)
