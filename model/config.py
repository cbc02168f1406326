"""Shape of the EchoMotion dual-modality DiT: one dataclass, three named presets.

The video-side fields use Wan's names and defaults (`WanModel.__init__`), so a preset whose video fields match a
Wan checkpoint loads it strictly. The motion-side fields are EchoMotion's (paper §3.1, A.9).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass
class DiTConfig:
    """Hyper-parameters of `EchoMotionDiT`.

    Video branch (Wan2.1/2.2 `WanModel`): `dim`, `ffn_dim`, `num_heads`, `num_layers`, `in_channels`,
    `out_channels`, `text_dim`, `freq_dim`, `patch_size`, `text_len`, `eps`, `qk_norm`, `cross_attn_norm`.

    EchoMotion additions:
    - `num_video_only_layers`: the first K of the `num_layers` blocks are Wan blocks that see only video tokens;
      the remaining blocks are dual-modality blocks (paper A.9: 0 for 1.3B, 15 of 30 for 5B).
    - `motion_dim`: per-frame motion features (235, `humove.motion.representation`).
    - `num_tasks`: task-embedding vocabulary (0 joint, 1 motion→video, 2 video→motion).
    - `temporal_stride`: video frames per latent frame (the Wan VAE's 4); latent frame t covers motion frame 4t.
    - `vae_stride`: the video VAE's compression (frames, height, width) per latent: (4, 8, 8) for the Wan2.1 VAE,
      (4, 16, 16) for the Wan2.2 TI2V-5B VAE; its latents have `in_channels` channels. The first entry must equal
      `temporal_stride`. `latent_shape` gives the latent size of a video.
    - `rope_time_scale`: temporal RoPE position of latent frame t is `rope_time_scale * t`, of motion frame f is
      `rope_time_scale * f / temporal_stride`. 1.0 (default) gives video tokens exactly Wan's pre-training RoPE
      (t, h, w) and motion frames the fractional times f/4: the paper's prose ("video tokens receive the exact
      same 3D RoPE as used during pre-training"; motion times "scaled by a factor of 1/4"). 4.0 gives its
      equations (2)-(3) as printed: video (4t, h, w), motion (f, H+i, W+i), the same alignment (motion frame 4t
      at latent frame t) with every temporal distance 4× what Wan was trained on. README: "Departures".
    - `video_grid_hw`: patched latent grid (H, W) used to place motion tokens at (H+i, W+i) when no video is in
      the sequence (phase 1). RoPE is relative, so motion-only attention does not depend on this value; it keeps
      the positions identical to phase 2 at the training resolution.
    - `motion_mlp_hidden`: hidden width of the six motion token MLPs (0 = `dim`).
    - `rope_theta`: RoPE base (Wan: 10000).
    """

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    num_video_only_layers: int = 0
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_len: int = 512
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    motion_dim: int = 235
    num_tasks: int = 3
    temporal_stride: int = 4
    rope_time_scale: float = 1.0
    video_grid_hw: tuple[int, int] = (30, 52)
    motion_mlp_hidden: int = 0
    rope_theta: float = 10000.0
    vae_stride: tuple[int, int, int] = (4, 8, 8)

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.vae_stride = tuple(int(s) for s in self.vae_stride)
        self.video_grid_hw = tuple(int(p) for p in self.video_grid_hw)
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def num_dual_layers(self) -> int:
        return self.num_layers - self.num_video_only_layers

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, T_lat, H_lat, W_lat) VAE latents of a `num_frames`×`height`×`width` video (T = 1 + stride·k frames,
        H and W multiples of the VAE's spatial stride times the patch size)."""
        st, sh, sw = self.vae_stride
        _, ph, pw = self.patch_size
        if num_frames < 1 or (num_frames - 1) % st:
            raise ValueError(f"{num_frames} frames: the VAE needs 1 + {st}k frames")
        if height % (sh * ph) or width % (sw * pw):
            raise ValueError(f"video size {height}×{width} must be a multiple of {sh * ph}×{sw * pw} "
                             f"(VAE stride {sh}×{sw} times patch {ph}×{pw})")
        return self.in_channels, 1 + (num_frames - 1) // st, height // sh, width // sw

    def validate(self) -> DiTConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"DiTConfig: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"DiTConfig: head dim {self.head_dim} must be even and >= 6 for 3-axis RoPE")
        if not 0 <= self.num_video_only_layers <= self.num_layers:
            raise ValueError(
                f"DiTConfig: num_video_only_layers {self.num_video_only_layers} outside [0, {self.num_layers}]"
            )
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"DiTConfig: patch_size {self.patch_size} must be three positive ints")
        if len(self.video_grid_hw) != 2:
            raise ValueError(f"DiTConfig: video_grid_hw {self.video_grid_hw} must be (H, W)")
        if self.motion_dim != 235:
            raise ValueError(f"DiTConfig: motion_dim {self.motion_dim}; the motion token layout needs 235")
        if self.rope_time_scale <= 0 or self.temporal_stride < 1:
            raise ValueError("DiTConfig: rope_time_scale must be > 0 and temporal_stride >= 1")
        if len(self.vae_stride) != 3 or min(self.vae_stride) < 1:
            raise ValueError(f"DiTConfig: vae_stride {self.vae_stride} must be three positive ints")
        if self.vae_stride[0] != self.temporal_stride:
            raise ValueError(f"DiTConfig: vae_stride {self.vae_stride} starts with {self.vae_stride[0]}, "
                             f"temporal_stride is {self.temporal_stride}; they must agree")
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["patch_size"] = list(self.patch_size)
        data["video_grid_hw"] = list(self.video_grid_hw)
        data["vae_stride"] = list(self.vae_stride)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DiTConfig: unknown fields {unknown}")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DiTConfig:
        """A named configuration, optionally with some fields replaced (e.g. `num_layers=2`)."""
        if name not in PRESETS:
            raise ValueError(f"DiTConfig: unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return replace(PRESETS[name], **overrides)


PRESETS: dict[str, DiTConfig] = {
    # Paper Table 5 on Wan2.1-T2V-1.3B. The table prints 24 heads, but the checkpoint has 12 heads of dim 128
    # (Wan2.1 config); weight compatibility needs 12 (24 would change the RoPE split and qk-norm grouping).
    "wan2.1-1.3b": DiTConfig(
        dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, num_video_only_layers=0, video_grid_hw=(30, 52)
    ),
    # Paper Table 6 on Wan2.2-TI2V-5B: 15 video-only + 15 dual blocks, 48-channel VAE with stride (4, 16, 16).
    # 704x1280 video → 44x80 latents → 22x40 patches.
    "wan2.2-5b": DiTConfig(
        dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, num_video_only_layers=15,
        in_channels=48, out_channels=48, vae_stride=(4, 16, 16), video_grid_hw=(22, 40),
    ),
    # CPU tests and the demo: same structure (hybrid depth included), minutes → milliseconds.
    "tiny": DiTConfig(
        dim=64, ffn_dim=128, num_heads=4, num_layers=4, num_video_only_layers=2, text_dim=32, freq_dim=32,
        video_grid_hw=(4, 4),
    ),
}
