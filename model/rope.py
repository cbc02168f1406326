"""Wan's per-axis 3D rotary embedding and the MVS-RoPE positions of EchoMotion (paper §3.1, eqs. 2-3).

Wan's RoPE (`wan/modules/model.py`): a head of dim d is read as d/2 adjacent (real, imag) pairs, split into
three groups for the time, height and width axes: c - 2(c//3), c//3, c//3 pairs with c = d/2 (22/21/21 for
d = 128). The pair k of an axis with n pairs turns by `position * theta^(-2k / (2n))`. Pairs are interleaved
(x[2k], x[2k+1] rotate together), not the "rotate-half" layout.

Positions here are free real numbers (Wan uses an integer table of 1024 rows): the same angles at integer
positions, and fractional motion times when `rope_time_scale` is 1.

MVS-RoPE:
- video token at patch grid (t, h, w): (s*t, h, w), s = `rope_time_scale` (default 1: Wan's own positions, as
  the paper's prose says; its equation (2) prints s = 4, see DiTConfig).
- motion token i (0..50) of motion frame f: (s*f/stride, H+i, W+i), stride = video frames per patch-grid step
  (VAE temporal stride 4 × temporal patch 1), (H, W) = patch grid of the video; the diagonal offset keeps every
  motion position away from every video position.
"""

from __future__ import annotations

import torch


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of rotated pairs for the (time, height, width) axes, as Wan splits them."""
    if head_dim % 2:
        raise ValueError(f"RoPE: head dim {head_dim} must be even")
    pairs = head_dim // 2
    return pairs - 2 * (pairs // 3), pairs // 3, pairs // 3


def rope_inverse_frequencies(head_dim: int, theta: float = 10000.0) -> list[torch.Tensor]:
    """Per-axis angular frequencies, float64: axis with n pairs → theta^(-2k/(2n)), k = 0..n-1."""
    return [
        1.0 / torch.pow(theta, torch.arange(0, 2 * n, 2, dtype=torch.float64) / (2 * n))
        for n in rope_axis_pairs(head_dim)
    ]


def video_positions(grid: tuple[int, int, int], time_scale: float = 1.0) -> torch.Tensor:
    """(T*H*W, 3) float64 positions (time_scale*t, h, w) in the order of `x.flatten(2)` over (T, H, W)."""
    frames, height, width = grid
    t, h, w = torch.meshgrid(
        torch.arange(frames, dtype=torch.float64),
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([t * time_scale, h, w], dim=-1).reshape(-1, 3)


def motion_positions(
    num_frames: int,
    tokens_per_frame: int,
    grid_hw: tuple[int, int],
    time_scale: float = 1.0,
    frames_per_step: int = 4,
) -> torch.Tensor:
    """(F*tokens_per_frame, 3) float64 positions (time_scale*f/frames_per_step, H+i, W+i), frame-major."""
    height, width = grid_hw
    f, i = torch.meshgrid(
        torch.arange(num_frames, dtype=torch.float64),
        torch.arange(tokens_per_frame, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([f * (time_scale / frames_per_step), height + i, width + i], dim=-1).reshape(-1, 3)


def rope_rotations(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0, device: torch.device | None = None
) -> torch.Tensor:
    """Unit rotations e^(i·angle) for (L, 3) positions → (L, head_dim/2) complex64 (angles in float64).

    Complex, not a (cos, sin) pair of real tensors: FSDP2's mixed precision casts the floating-point inputs of a
    wrapped block to bf16 (`cast_forward_inputs`), complex tensors are left as they are, so the angles reach the
    blocks at full precision whatever the policy.
    """
    freqs = rope_inverse_frequencies(head_dim, theta)
    positions = positions.to(torch.float64)
    angles = torch.cat([positions[:, axis, None] * freqs[axis][None, :] for axis in range(3)], dim=-1)
    rotations = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
    return rotations if device is None else rotations.to(device)


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of `x` (B, heads, L, d) by `rotations` (L, d/2) complex64; float32 math, dtype kept.

    The pair (x[2k], x[2k+1]) is read as the complex number x[2k] + i·x[2k+1] and multiplied by its rotation
    (one fused complex multiply: cheaper in the backward pass than slicing real and imaginary parts).
    """
    if rotations.dtype != torch.complex64:
        raise TypeError(f"apply_rope: rotations must be complex64 (see rope_rotations), got {rotations.dtype}")
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, heads, L, d/2)
    return torch.view_as_real(pairs * rotations).flatten(-2).to(x.dtype)
