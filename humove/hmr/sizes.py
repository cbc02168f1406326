"""The networks' sizes (`HMRConfig`: CameraHMR, `HRNetConfig`: its FLNet camera model), without torch: the smpl
stage's config names their defaults, and configs are read where no model runs (`humove report`, `humove stages`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HMRConfig:
    """Sizes of the network; the defaults are the official CameraHMR model."""

    image_height: int = 256
    image_width: int = 192
    patch_size: int = 16
    patch_padding: int = 2
    embed_dim: int = 1280
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 4.0
    head_dim: int = 1024
    head_depth: int = 6
    head_heads: int = 8
    head_dim_per_head: int = 64
    head_mlp_dim: int = 1024
    num_betas: int = 10
    num_keypoint_outputs: int = 88  # `deckp`: unused at inference, present in the checkpoint

    @property
    def token_grid(self) -> tuple[int, int]:
        def size(n):
            return (n + 2 * self.patch_padding - self.patch_size) // self.patch_size + 1

        return size(self.image_height), size(self.image_width)


@dataclass(frozen=True)
class HRNetConfig:
    """HRNet sizes; defaults are W48 as in FLNet. Stage s has `modules[s]` modules of `blocks` blocks."""

    width: int = 48
    modules: tuple[int, int, int] = (1, 4, 3)
    blocks: int = 4
    stem_blocks: int = 4

    @property
    def feature_dim(self) -> int:
        return self.width * (1 + 2 + 4 + 8)  # 720 at W48
