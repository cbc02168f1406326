"""Transformer blocks: Wan's video block and EchoMotion's dual-modality block (paper §3.1, Fig. 2a).

`ModalityStream` holds one modality's weights with Wan's names (`norm1`, `self_attn`, `norm3`, `cross_attn`,
`norm2`, `ffn`, `modulation`) and does everything except the attention itself:

    x += o(attention(q, k, v)) · gate1          q, k, v from norm1(x)·(1 + scale1) + shift1, RoPE on q, k
    x += cross_attn(norm3(x), text)             no modulation (Wan)
    x += ffn(norm2(x)·(1 + scale2) + shift2) · gate2

with (shift1, scale1, gate1, shift2, scale2, gate2) = modulation + e0 of that modality's timestep.

- `VideoBlock` is a stream whose attention sees only its own tokens: Wan's `WanAttentionBlock`, key for key.
- `EchoMotionBlock` is a `VideoBlock` (video weights keep Wan's keys: `blocks.{i}.self_attn.q.weight`, …) plus a
  second stream under `motion.` (`blocks.{i}.motion.self_attn.q.weight`, …). Both project their own q/k/v,
  one attention runs over [video; motion] (paper eq. 1), the result is split back and each modality continues
  with its own o-projection, cross-attention, FFN and modulation.

FSDP: wrap `VideoBlock` and `EchoMotionBlock` (see `EchoMotionDiT.no_split_modules`); residual streams and the
modulation are float32, as in Wan, and RoPE arrives as complex64: a block must not have its inputs cast to bf16
(train.fsdp_mixed_precision sets `cast_forward_inputs=False`); it casts to its weights' dtype before each matmul.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from humove.model.config import DiTConfig
from humove.model.layers import Attention, FP32LayerNorm, feed_forward
from humove.model.rope import apply_rope

Rope = torch.Tensor  # (L, head_dim/2) complex64 unit rotations (rope.rope_rotations)
Modulation = tuple[torch.Tensor, ...]  # six (B, 1, D) float32 tensors


class ModalityStream(nn.Module):
    """One modality's weights of a block. Inputs x (B, L, D); e0 (B, 6, D) float32; text (B, L_text, D)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        dim = config.dim
        self.norm1 = FP32LayerNorm(dim, config.eps)
        self.self_attn = Attention(dim, config.num_heads, config.qk_norm, config.eps)
        # Wan's cross-attention norm is the affine one (and is called norm3).
        self.norm3 = (
            FP32LayerNorm(dim, config.eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        )
        self.cross_attn = Attention(dim, config.num_heads, config.qk_norm, config.eps)
        self.norm2 = FP32LayerNorm(dim, config.eps)
        self.ffn = feed_forward(dim, config.ffn_dim)
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))

    def modulation_terms(self, e0: torch.Tensor) -> Modulation:
        return (self.modulation.float() + e0.float()).chunk(6, dim=1)

    def attention_inputs(
        self, x: torch.Tensor, mod: Modulation, rope: Rope
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v (B, heads, L, head_dim) of the modulated tokens, RoPE applied to q and k."""
        hidden = self.norm1(x).float() * (1 + mod[1]) + mod[0]
        q, k, v = self.self_attn.project(hidden)
        return apply_rope(q, rope).to(v.dtype), apply_rope(k, rope).to(v.dtype), v

    def finish(self, x: torch.Tensor, attended: torch.Tensor, mod: Modulation, text: torch.Tensor) -> torch.Tensor:
        """Residual updates after self-attention: gated o-projection, cross-attention, gated FFN."""
        x = x.float() + self.self_attn.output(attended).float() * mod[2]
        x = x + self.cross_attn(self.norm3(x), text).float()
        y = self.ffn((self.norm2(x).float() * (1 + mod[4]) + mod[3]).to(self.ffn[0].weight.dtype))
        return x + y.float() * mod[5]


class VideoBlock(ModalityStream):
    """Wan2.1's block: self-attention over video tokens only. x (B, L, D) → (B, L, D) float32."""

    def forward(self, x: torch.Tensor, e0: torch.Tensor, rope: Rope, text: torch.Tensor) -> torch.Tensor:
        mod = self.modulation_terms(e0)
        q, k, v = self.attention_inputs(x, mod, rope)
        return self.finish(x, F.scaled_dot_product_attention(q, k, v), mod, text)


class EchoMotionBlock(VideoBlock):
    """Dual-modality block: video stream (Wan keys) + `motion` stream, one joint self-attention.

    Either modality may be absent (None): the block then is that modality's stream alone (phase 1: motion only).
    """

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        self.motion = ModalityStream(config)

    def forward(  # type: ignore[override]
        self,
        video: torch.Tensor | None,
        motion: torch.Tensor | None,
        e0_video: torch.Tensor | None,
        e0_motion: torch.Tensor | None,
        rope_video: Rope | None,
        rope_motion: Rope | None,
        text: torch.Tensor,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """video (B, Lv, D) | None, motion (B, Lm, D) | None → the updated pair (float32)."""
        streams = []  # (stream, tokens, modulation, rope) of the modalities present, video first
        if video is not None:
            streams.append((self, video, self.modulation_terms(e0_video), rope_video))
        if motion is not None:
            streams.append((self.motion, motion, self.motion.modulation_terms(e0_motion), rope_motion))
        if not streams:
            raise ValueError("EchoMotionBlock: both modalities are absent")
        projected = [stream.attention_inputs(x, mod, rope) for stream, x, mod, rope in streams]
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(*projected, strict=True))
        attended = F.scaled_dot_product_attention(q, k, v)
        lengths = [x.shape[1] for _, x, _, _ in streams]
        outputs = [
            stream.finish(x, part, mod, text)
            for (stream, x, mod, _), part in zip(streams, attended.split(lengths, dim=2), strict=True)
        ]
        if video is None:
            return None, outputs[0]
        return outputs[0], outputs[1] if motion is not None else None
