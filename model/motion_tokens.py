"""Motion features ↔ motion tokens: three input MLPs and three output MLPs (paper §3.1).

Per frame the 235 features are read as 51 small vectors (see `humove.motion.representation`):
25 position vectors of 3 ([v, η_0..η_23]), 25 rotation vectors of 6 ([θ_0..θ_23, γ]) and one shape vector of
10 (β). Each group has one MLP shared by its vectors: 3 → D, 6 → D, 10 → D, giving 51 tokens of width D per
frame; time is not downsampled (81 frames → 4,131 tokens). The output side mirrors it: D → 3, D → 6, D → 10.

Choices the paper leaves open: whether one MLP maps a whole group or each element — here each element
(the token count 25 = 1 + 24 matches one token per root/joint); and how tokens of the same group are told apart
outside attention (RoPE only acts inside it) — here a learned per-slot embedding (51, D), zero at start.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from humove.model.layers import FP32LayerNorm, autocast_off
from humove.motion.representation import (
    MOTION_DIM,
    NUM_POSITION_TOKENS,
    NUM_ROTATION_TOKENS,
    SLICE_POSITION,
    SLICE_ROTATION,
    SLICE_SHAPE,
    TOKENS_PER_FRAME,
)

POSITION_WIDTH = 3
ROTATION_WIDTH = 6
SHAPE_WIDTH = 10


def _mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU(), nn.Linear(hidden, out_features))


class MotionEncoder(nn.Module):
    """(B, F, 235) normalised features → (B, F, 51, D) tokens."""

    def __init__(self, dim: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or dim
        self.position = _mlp(POSITION_WIDTH, hidden, dim)
        self.rotation = _mlp(ROTATION_WIDTH, hidden, dim)
        self.shape = _mlp(SHAPE_WIDTH, hidden, dim)
        self.slot = nn.Parameter(torch.zeros(TOKENS_PER_FRAME, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[-1] != MOTION_DIM:
            raise ValueError(f"MotionEncoder: motion shape {tuple(features.shape)}, expected (B, F, {MOTION_DIM})")
        batch, frames = features.shape[:2]
        position = features[..., SLICE_POSITION].reshape(batch, frames, NUM_POSITION_TOKENS, POSITION_WIDTH)
        rotation = features[..., SLICE_ROTATION].reshape(batch, frames, NUM_ROTATION_TOKENS, ROTATION_WIDTH)
        shape = features[..., SLICE_SHAPE].reshape(batch, frames, 1, SHAPE_WIDTH)
        tokens = torch.cat([self.position(position), self.rotation(rotation), self.shape(shape)], dim=2)
        return tokens + self.slot.to(tokens.dtype)


class MotionDecoder(nn.Module):
    """(B, F*51, D) tokens and e (B, D) → (B, F, 235) features.

    Final adaLN like Wan's head (norm without affine, shift/scale from `modulation` + e), then the three output
    MLPs. Their last layers start at zero, as Wan's `head.head` does: the first prediction is 0.
    """

    def __init__(self, dim: int, hidden: int = 0, eps: float = 1e-6):
        super().__init__()
        hidden = hidden or dim
        self.norm = FP32LayerNorm(dim, eps)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / math.sqrt(dim))
        self.position = _mlp(dim, hidden, POSITION_WIDTH)
        self.rotation = _mlp(dim, hidden, ROTATION_WIDTH)
        self.shape = _mlp(dim, hidden, SHAPE_WIDTH)
        for mlp in (self.position, self.rotation, self.shape):
            nn.init.zeros_(mlp[2].weight)
            nn.init.zeros_(mlp[2].bias)

    def forward(self, tokens: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Float32 outside autocast, like Wan's video head."""
        with autocast_off(tokens.device):
            return self._decode(tokens, e)

    def _decode(self, tokens: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        if length % TOKENS_PER_FRAME:
            raise ValueError(f"MotionDecoder: {length} tokens is not a whole number of {TOKENS_PER_FRAME}-token frames")
        shift, scale = (self.modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
        hidden = (self.norm(tokens).float() * (1 + scale) + shift).to(self.position[0].weight.dtype)
        hidden = hidden.reshape(batch, length // TOKENS_PER_FRAME, TOKENS_PER_FRAME, dim)
        position = self.position(hidden[:, :, :NUM_POSITION_TOKENS])  # (B, F, 25, 3)
        rotation = self.rotation(hidden[:, :, NUM_POSITION_TOKENS : NUM_POSITION_TOKENS + NUM_ROTATION_TOKENS])
        shape = self.shape(hidden[:, :, -1])  # (B, F, 10)
        return torch.cat([position.flatten(2), rotation.flatten(2), shape], dim=-1).float()
