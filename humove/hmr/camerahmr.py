"""CameraHMR's HMR network, written for humove: ViT backbone + transformer-decoder SMPL head.

Module names and parameter shapes follow the official checkpoint (pixelite1201/CameraHMR at commit 65d11a0:
`core/backbones/vit.py`, `core/heads/smpl_head_cliff.py`, `core/components/pose_transformer.py`,
`core/constants.py`), so `backbone.*` and `smpl_head.*` of its Lightning checkpoint load with strict=True.
The key list we match is pinned in `tests/motion/test_motion_hmr.py::_expected_hmr_keys` (meta device).
Cross-checked once against the upstream modules with shared random weights: identical key sets (505) and
outputs equal to float precision (ViT ≤ 6e-7, full-size head ≤ 3e-6).

Full size (`HMRConfig()`): ViT-H style backbone — 256×192 input, patch 16 (padding 2 → 16×12 tokens),
width 1280, 32 blocks of 16 heads, MLP ×4, no class token (its position slot is added to every token) —
giving features (B, 1280, 16, 12). Head: one query token [bbox_info(3), pose 6D(144), betas(10), cam(3)] →
Linear → 6 decoder layers (dim 1024, 8×64 heads, self-attention, cross-attention to the 192 image tokens,
MLP 1024), read out as residuals added to the mean parameters (buffers `init_body_pose/init_betas/init_cam`,
stored in the checkpoint). 6D → rotation uses `rot6d_to_matrix` (columns [a1, a2] — CameraHMR's convention,
identical to humove's, so no conversion is needed). The head runs in float32 even when the backbone is bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from humove.hmr.sizes import HMRConfig
from humove.motion.rotations import rot6d_to_matrix

NUM_SMPL_ROTATIONS = 24  # global orient + 23 body joints
POSE_6D_DIM = 6 * NUM_SMPL_ROTATIONS


def tiny_hmr_config() -> HMRConfig:
    """A few-KB model with the same structure, for tests."""
    return HMRConfig(
        image_height=64,
        image_width=48,
        embed_dim=32,
        depth=2,
        num_heads=4,
        head_dim=24,
        head_depth=2,
        head_heads=2,
        head_dim_per_head=8,
        head_mlp_dim=16,
    )


# Backbone ---------------------------------------------------------------------------------------------------
class PatchEmbed(nn.Module):
    def __init__(self, config: HMRConfig):
        super().__init__()
        self.proj = nn.Conv2d(
            3, config.embed_dim, config.patch_size, stride=config.patch_size, padding=config.patch_padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # (B, C, h, w)


class ViTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTBackbone(nn.Module):
    """(B, 3, H, W) normalised crop (H×W = 256×192 at full size) → (B, C, h, w) features."""

    def __init__(self, config: HMRConfig):
        super().__init__()
        grid_h, grid_w = config.token_grid
        self.patch_embed = PatchEmbed(config)
        # One extra slot (index 0) where ViTPose had a class token; its embedding is added to every token.
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_h * grid_w + 1, config.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(config.embed_dim, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.last_norm = nn.LayerNorm(config.embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.patch_embed(x)
        b, c, h, w = feats.shape
        tokens = feats.flatten(2).transpose(1, 2) + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.last_norm(tokens)
        return tokens.transpose(1, 2).reshape(b, c, h, w)


# SMPL head --------------------------------------------------------------------------------------------------
class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


def _attend(q, k, v, heads: int) -> torch.Tensor:
    b = q.shape[0]
    q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, out.shape[2], -1)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x):
        return self.to_out(_attend(*self.to_qkv(x).chunk(3, dim=-1), self.heads))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.to_kv = nn.Linear(context_dim, 2 * heads * dim_head, bias=False)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))

    def forward(self, x, context):
        k, v = self.to_kv(context).chunk(2, dim=-1)
        return self.to_out(_attend(self.to_q(x), k, v, self.heads))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0), nn.Linear(hidden, dim), nn.Dropout(0.0)
        )

    def forward(self, x):
        return self.net(x)


class DecoderLayers(nn.Module):
    def __init__(self, config: HMRConfig):
        super().__init__()
        d, h, dh = config.head_dim, config.head_heads, config.head_dim_per_head
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    PreNorm(d, SelfAttention(d, h, dh)),
                    PreNorm(d, CrossAttention(d, config.embed_dim, h, dh)),
                    PreNorm(d, FeedForward(d, config.head_mlp_dim)),
                ]
            )
            for _ in range(config.head_depth)
        )

    def forward(self, x, context):
        for self_attn, cross_attn, ff in self.layers:
            x = self_attn(x) + x
            x = cross_attn(x, context=context) + x
            x = ff(x) + x
        return x


class TokenDecoder(nn.Module):
    def __init__(self, config: HMRConfig, token_dim: int):
        super().__init__()
        self.to_token_embedding = nn.Linear(token_dim, config.head_dim)
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1, config.head_dim))
        self.transformer = DecoderLayers(config)

    def forward(self, token, context):
        return self.transformer(self.to_token_embedding(token) + self.pos_embedding, context)


class SMPLHead(nn.Module):
    """features (B, C, h, w) + bbox_info (B, 3) → rotmats (B, 24, 3, 3), betas (B, 10), weak cam (B, 3)."""

    def __init__(self, config: HMRConfig):
        super().__init__()
        self.transformer = TokenDecoder(config, token_dim=3 + POSE_6D_DIM + config.num_betas + 3)
        self.decpose = nn.Linear(config.head_dim, POSE_6D_DIM)
        self.decshape = nn.Linear(config.head_dim, config.num_betas)
        self.deccam = nn.Linear(config.head_dim, 3)
        self.deckp = nn.Linear(config.head_dim, config.num_keypoint_outputs)
        # Mean parameters (smpl_mean_params.npz); the checkpoint stores them, so loading overwrites these.
        self.register_buffer("init_body_pose", torch.zeros(1, POSE_6D_DIM))
        self.register_buffer("init_betas", torch.zeros(1, config.num_betas))
        self.register_buffer("init_cam", torch.zeros(1, 3))

    def forward(self, features: torch.Tensor, bbox_info: torch.Tensor) -> dict[str, torch.Tensor]:
        # Always float32, autocast or not: the readout is a residual on the mean parameters and 6D → rotation is a
        # Gram–Schmidt step; in bf16 (8-bit mantissa) the rotation matrices are orthonormal only to about 1e-2.
        with torch.autocast(features.device.type, enabled=False):
            return self._readout(features.float(), bbox_info.float())

    def _readout(self, features: torch.Tensor, bbox_info: torch.Tensor) -> dict[str, torch.Tensor]:
        b = features.shape[0]
        context = features.flatten(2).transpose(1, 2)  # (B, h·w, C)
        pose0, betas0, cam0 = (t.expand(b, -1) for t in (self.init_body_pose, self.init_betas, self.init_cam))
        token = torch.cat([bbox_info, pose0, betas0, cam0], dim=1)[:, None]
        out = self.transformer(token, context)[:, 0]
        pose6d = self.decpose(out) + pose0
        return {
            "rotmat": rot6d_to_matrix(pose6d.reshape(b, NUM_SMPL_ROTATIONS, 6)),
            "betas": self.decshape(out) + betas0,
            "cam": self.deccam(out) + cam0,
        }


class CameraHMR(nn.Module):
    """images (B, 3, 256, 256) or (B, 3, 256, 192) normalised crops, bbox_info (B, 3) → SMPL outputs.

    A 256×256 crop is narrowed to its centre 256×192 columns first (as in CameraHMR). The backbone may run in
    bf16 (`half_backbone`); the SMPL head always runs in float32 and returns float32.
    """

    def __init__(self, config: HMRConfig | None = None):
        super().__init__()
        self.config = config or HMRConfig()
        self.backbone = ViTBackbone(self.config)
        self.smpl_head = SMPLHead(self.config)

    def half_backbone(self, dtype: torch.dtype) -> CameraHMR:
        """Backbone parameters in `dtype` (bf16 / fp16 on GPUs), the head kept in float32."""
        self.backbone.to(dtype)
        self.smpl_head.float()
        return self

    def forward(self, images: torch.Tensor, bbox_info: torch.Tensor) -> dict[str, torch.Tensor]:
        margin = (images.shape[-1] - self.config.image_width) // 2
        if margin > 0:
            images = images[..., margin : margin + self.config.image_width]
        features = self.backbone(images.to(self.backbone.pos_embed.dtype))
        return self.smpl_head(features, bbox_info)
