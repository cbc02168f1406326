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

A block takes the modalities as one `Streams` argument (a `Stream` per modality: tokens, time embeddings, RoPE;
None when absent) and returns `Tokens`, the new tokens of the modalities it updated. FSDP2 finds the tensors inside
dataclasses and named tuples, so its hooks see them as they see plain arguments (tests/model/test_torchrun.py
checks it). A block returns only tensors it computed: an input needing gradients handed back unchanged would be
a view made by FSDP's input hook, which FSDP warns about.

FSDP: wrap `VideoBlock` and `EchoMotionBlock` (see `EchoMotionDiT.no_split_modules`); residual streams and the
modulation are float32, as in Wan, and RoPE arrives as complex64: a block must not have its inputs cast to bf16
(train.fsdp_mixed_precision sets `cast_forward_inputs=False`); it casts to its weights' dtype before each matmul.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from humove.model.config import DiTConfig
from humove.model.layers import Attention, FP32LayerNorm, feed_forward
from humove.model.rope import apply_rope

Rope = torch.Tensor  # (L, head_dim/2) complex64 unit rotations (rope.rope_rotations)
Modulation = tuple[torch.Tensor, ...]  # six (B, 1, D) float32 tensors


@dataclass(frozen=True)
class Stream:
    """One modality in the sequence: its tokens, which each block updates, and what stays the same through all
    blocks: its timestep's embeddings and the RoPE of its positions."""

    tokens: torch.Tensor  # (B, L, D): the embedding's dtype entering the first block, float32 after it
    e: torch.Tensor  # (B, D) float32 time embedding (the output head's modulation)
    e0: torch.Tensor  # (B, 6, D) float32 time projection (the blocks' modulation)
    rope: Rope

    def advanced(self, tokens: torch.Tensor | None) -> Stream:
        """This stream with the tokens a block returned (None: the block left them as they were)."""
        return self if tokens is None else dataclasses.replace(self, tokens=tokens)


class Tokens(NamedTuple):
    """What a block returns: the new tokens (B, L, D) float32 of each modality it updated, None for the others."""

    video: torch.Tensor | None = None
    motion: torch.Tensor | None = None


@dataclass(frozen=True)
class Streams:
    """The modalities in the sequence, in sequence order; an absent one is None (phase 1 has no video)."""

    video: Stream | None = None
    motion: Stream | None = None

    def present(self) -> list[tuple[str, Stream]]:
        """(name, stream) of the modalities present, video first."""
        return [(name, stream) for name, stream in (("video", self.video), ("motion", self.motion))
                if stream is not None]

    def advanced(self, tokens: Tokens) -> Streams:
        """The streams after a block that returned `tokens`."""
        return Streams(*(None if stream is None else stream.advanced(new)
                         for stream, new in ((self.video, tokens.video), (self.motion, tokens.motion))))


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
    """Wan2.1's block: self-attention over video tokens only. Updates `x.video` (B, Lv, D) → (B, Lv, D) float32;
    motion tokens (hybrid depth) wait until the dual blocks."""

    def forward(self, x: Streams, text: torch.Tensor) -> Tokens:
        video = x.video
        mod = self.modulation_terms(video.e0)
        q, k, v = self.attention_inputs(video.tokens, mod, video.rope)
        return Tokens(video=self.finish(video.tokens, F.scaled_dot_product_attention(q, k, v), mod, text))


class EchoMotionBlock(VideoBlock):
    """Dual-modality block: video stream (Wan keys) + `motion` stream, one joint self-attention.

    Either modality may be absent: the block then is the other modality's stream alone (phase 1: motion only).
    """

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        self.motion = ModalityStream(config)

    def forward(self, x: Streams, text: torch.Tensor) -> Tokens:  # type: ignore[override]
        """The modalities present in `x`, in sequence order [video; motion], through one joint self-attention,
        then each through its own o-projection, cross-attention and FFN. Returns their new tokens (float32)."""
        present = [(name, stream, self if name == "video" else self.motion) for name, stream in x.present()]
        mods = [weights.modulation_terms(stream.e0) for _, stream, weights in present]
        projected = [weights.attention_inputs(stream.tokens, mod, stream.rope)
                     for (_, stream, weights), mod in zip(present, mods, strict=True)]
        q, k, v = (torch.cat(parts, dim=2) for parts in zip(*projected, strict=True))
        attended = F.scaled_dot_product_attention(q, k, v).split([s.tokens.shape[1] for _, s, _ in present], dim=2)
        return Tokens(**{name: weights.finish(stream.tokens, part, mod, text)
                         for (name, stream, weights), mod, part in zip(present, mods, attended, strict=True)})
