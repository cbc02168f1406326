"""Analytic FLOP count of EchoMotionDiT, for model-FLOP utilisation (MFU) and hardware FLOP use.

Every matrix product of the forward pass counts 2 FLOPs per multiply-add (the convention of MFU and of torch's
FlopCounterMode); element-wise work (norms, activations, RoPE, softmax) is not counted. Per sample, with D the
width, F the FFN width, L_s the tokens of stream s (video, motion), L = Σ L_s the joint sequence and T = text_len:

    per block    Σ_s [ 8·L_s·D²  (q, k, v, o)  + 4·L_s·D² + 4·T·D²  (cross-attention q, o | k, v of the text)
                       + 4·L_s·D·F  (FFN)  + 4·L_s·T·D  (cross-attention scores and values) ]  + 4·L²·D (self)
    outside      patch embedding, text embedding, time MLPs, task MLP, motion token MLPs, video and motion heads

A training step's model FLOPs are 3× the forward (forward, and a backward of twice its products). What the
hardware runs on top: gradient checkpointing recomputes each block's forward in the backward pass, and a fused
attention backward (flash / memory-efficient / cuDNN) recomputes the attention scores: 5 products where the forward
has 2, i.e. 2.5× instead of 2× (torch's FlopCounterMode counts these kernels the same way).

Wan2.1-1.3B at 81 frames 480×832 (32,760 video + 4,131 motion tokens): 0.347 PFLOP forward, 1.041 PFLOP per
sample per training step; 1.51 PFLOP of hardware work with gradient checkpointing (1.46×).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from humove.model.config import DiTConfig
from humove.motion.representation import NUM_POSITION_TOKENS, NUM_ROTATION_TOKENS, TOKENS_PER_FRAME

# Input widths of the motion token groups (motion_tokens.py): position 3, rotation 6, shape 10 per token.
_MOTION_GROUPS = ((NUM_POSITION_TOKENS, 3), (NUM_ROTATION_TOKENS, 6), (1, 10))


@dataclass(frozen=True)
class ForwardFlops:
    """Matrix-product FLOPs of one forward pass for one sample."""

    total: int  # everything: embeddings, blocks, heads
    blocks: int  # the transformer blocks (what gradient checkpointing recomputes)
    attention: int  # QKᵀ and PV products of self- and cross-attention, inside `blocks`

    def training_step(self) -> int:
        """Model FLOPs of one training step: forward + backward (2× the forward), no recomputation."""
        return 3 * self.total

    def hardware_step(self, gradient_checkpointing: bool, fused_attention: bool = True) -> int:
        """FLOPs the hardware runs for one training step: the model FLOPs plus the blocks' recomputed forward
        (gradient checkpointing) and the fused attention backward's recomputed scores (+0.5× the attention)."""
        return self.training_step() + (self.blocks if gradient_checkpointing else 0) + \
            (self.attention // 2 if fused_attention else 0)


def forward_flops(config: DiTConfig, video_tokens: int, motion_tokens: int) -> ForwardFlops:
    """FLOPs of `EchoMotionDiT.forward` for one sample with `video_tokens` patches (T'·H'·W', 0 = no video) and
    `motion_tokens` (51 per motion frame, 0 = no motion); the text is always padded to `text_len` tokens."""
    if video_tokens < 0 or motion_tokens < 0 or video_tokens + motion_tokens == 0:
        raise ValueError(f"forward_flops: {video_tokens} video and {motion_tokens} motion tokens")
    if motion_tokens % TOKENS_PER_FRAME:
        raise ValueError(f"forward_flops: {motion_tokens} motion tokens is not a multiple of {TOKENS_PER_FRAME}")
    dim, text = config.dim, config.text_len

    def stream(tokens: int) -> tuple[int, int]:
        """(all, attention) FLOPs of one modality's stream in a block, without the joint self-attention."""
        cross_attention = 4 * tokens * text * dim
        projections = 8 * tokens * dim**2 + 4 * tokens * dim**2 + 4 * text * dim**2
        return projections + 4 * tokens * dim * config.ffn_dim + cross_attention, cross_attention

    blocks = attention = 0
    layers = [(config.num_video_only_layers, [video_tokens] if video_tokens else []),
              (config.num_dual_layers, [n for n in (video_tokens, motion_tokens) if n])]
    for count, streams in layers:
        if not streams:
            continue
        joint = sum(streams)
        per_block_attention = 4 * joint**2 * dim + sum(stream(n)[1] for n in streams)
        blocks += count * (4 * joint**2 * dim + sum(stream(n)[0] for n in streams))
        attention += count * per_block_attention

    modalities = (video_tokens > 0) + (motion_tokens > 0)
    outside = 2 * text * (config.text_dim * dim + dim**2)  # text embedding
    outside += modalities * 2 * (config.freq_dim * dim + dim**2 + 6 * dim**2)  # time embedding and projection
    outside += 2 * (config.num_tasks * dim + dim**2)  # task MLP
    patch = math.prod(config.patch_size)
    if video_tokens:
        outside += 2 * video_tokens * dim * (config.in_channels * patch + config.out_channels * patch)  # in, head
    if motion_tokens:
        hidden = config.motion_mlp_hidden or dim
        frames = motion_tokens // TOKENS_PER_FRAME
        per_frame = sum(n * 2 * (2 * width * hidden + 2 * hidden * dim) for n, width in _MOTION_GROUPS)
        outside += frames * per_frame  # encoder (width → hidden → D) and decoder (D → hidden → width) MLPs
    return ForwardFlops(total=blocks + outside, blocks=blocks, attention=attention)
