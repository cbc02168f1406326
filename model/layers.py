"""Building blocks shared by both branches, with Wan2.1's parameter names and numerics.

Parameter names follow `wan/modules/model.py` so state dicts line up key for key: attention `q/k/v/o` (with bias)
and `norm_q/norm_k` (RMSNorm over the full width, before the heads are split); `nn.Sequential` embeddings whose
indices give `text_embedding.{0,2}`, `time_embedding.{0,2}`, `time_projection.1`, `ffn.{0,2}`.

Precision: norms and the time embedding run in float32 (as Wan does) and hand back the input dtype; under bf16
autocast on GPU the linear layers and attention run in bf16. On CPU everything is float32.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Run float32-critical math (time embedding, output head) outside autocast, as Wan does. No-op on devices
    without autocast (the meta device used for shape and FLOP analysis)."""
    if device.type in ("cuda", "cpu", "xpu", "mps"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim with a learned gain (Wan's `WanRMSNorm`). (..., D) → (..., D)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input dtype (Wan's `WanLayerNorm`)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class Attention(nn.Module):
    """q/k/v/o projections with optional qk RMSNorm; used for self- and cross-attention.

    The self-attention of a dual block calls `project` per modality and runs one attention over the
    concatenation; cross-attention calls `forward(x, context)`.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, D) → (B, heads, L, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project(
        self, x: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries from x (B, Lq, D); keys/values from context (B, Lk, D) or x. Each (B, heads, L, head_dim)."""
        dtype = self.q.weight.dtype  # float32 residual inputs meet bf16 weights when the model itself is bf16
        x = x.to(dtype)
        source = x if context is None else context.to(dtype)
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(source))
        v = self.v(source)
        return self.split_heads(q), self.split_heads(k), self.split_heads(v)

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        """(B, heads, L, head_dim) → (B, L, D) through `o`."""
        return self.o(attended.transpose(1, 2).flatten(2))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Cross-attention of x (B, Lq, D) to context (B, Lk, D), no mask (Wan pads text with zeros)."""
        q, k, v = self.project(x, context)
        return self.output(F.scaled_dot_product_attention(q, k, v))


def feed_forward(dim: int, ffn_dim: int) -> nn.Sequential:
    """Wan's FFN: Linear, tanh-GELU, Linear (keys `ffn.0`, `ffn.2`)."""
    return nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))


def sinusoidal_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) timesteps in [0, 1000] → (B, dim) float32 [cos | sin], frequencies 10000^(-k/(dim/2)), float64 math."""
    if dim % 2:
        raise ValueError(f"sinusoidal_embedding: dim {dim} must be even")
    half = dim // 2
    positions = timesteps.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timesteps.device) / half)
    angles = positions[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def text_embedding(text_dim: int, dim: int) -> nn.Sequential:
    """Text projection (keys `text_embedding.{0,2}`): Linear, tanh-GELU, Linear."""
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))


def time_embedding(freq_dim: int, dim: int) -> nn.Sequential:
    """Timestep MLP (keys `time_embedding.{0,2}`): Linear, SiLU, Linear."""
    return nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))


def time_projection(dim: int, chunks: int = 6) -> nn.Sequential:
    """Timestep embedding → the 6 shared modulation vectors (key `time_projection.1`)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * chunks))


class TaskEmbedding(nn.Module):
    """Task id → (B, D) hint added to the tokens (paper §3.2: "a lightweight MLP projects the task embedding").

    The paper leaves the exact form open: here a one-hot of the task goes through Linear, SiLU, Linear. The last
    layer starts at zero so that at initialisation the video path is exactly the pretrained Wan model.
    """

    def __init__(self, num_tasks: int, dim: int):
        super().__init__()
        self.num_tasks = num_tasks
        self.mlp = nn.Sequential(nn.Linear(num_tasks, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, task: torch.Tensor) -> torch.Tensor:
        if task.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"TaskEmbedding: task ids must be integers, got {task.dtype}")
        checkable = task.numel() and not task.is_meta  # meta tensors (shape/FLOP analysis) have no values
        if checkable and (int(task.min()) < 0 or int(task.max()) >= self.num_tasks):
            raise ValueError(f"TaskEmbedding: task ids {task.tolist()} outside [0, {self.num_tasks})")
        one_hot = F.one_hot(task.long(), self.num_tasks).to(self.mlp[0].weight.dtype)
        return self.mlp(one_hot)


class OutputHead(nn.Module):
    """Final adaLN (norm without affine, shift/scale from `modulation` + e) and a projection (Wan's `Head`).

    x (B, L, D), e (B, D) float32 → (B, L, out_features).
    """

    def __init__(self, dim: int, out_features: int, eps: float = 1e-6):
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / math.sqrt(dim))

    def modulated(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e.float().unsqueeze(1)).chunk(2, dim=1)
        return self.norm(x).float() * (1 + scale) + shift

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Wan runs its head in float32, outside autocast."""
        with autocast_off(x.device):
            return self.head(self.modulated(x, e).to(self.head.weight.dtype))
