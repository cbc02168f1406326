"""Video VAE and text encoder behind two small interfaces, with real loaders and in-code stand-ins.

Real (GPU machines, weights from local paths; nothing is downloaded):
- `WanVideoVAE`: the Wan2.1 or Wan2.2 VAE through diffusers' `AutoencoderKLWan` (a diffusers-format folder: the root
  of e.g. `Wan2.1-T2V-1.3B-Diffusers` or its `vae/` folder); latents are normalised per channel with the VAE's
  `latents_mean` / `latents_std`, as Wan trains on them. Channels (`z_dim`: 16 for Wan2.1, 48 for Wan2.2 TI2V-5B)
  and stride ((4, 8, 8) / (4, 16, 16)) come from the VAE's config.
- `UMT5TextEncoder`: umT5-XXL through transformers (`UMT5EncoderModel` + its tokenizer: one folder holding both,
  or the root of a diffusers pipeline folder with `text_encoder/` and `tokenizer/`); the
  output is zeroed after each prompt's last token and padded to `text_len` (Wan's layout).
Both need `pip install diffusers transformers` (not in the base install; see the README).

Stand-ins (CPU tests, the offline demo): deterministic, parameter-free modules built in code with the same
interfaces and compression factors (the VAE's channels and stride are arguments, Wan2.1's by default). They say so:
`backend` is "standin-vae" / "standin-text" and the trainer and sampler write that into logs and outputs. They are
not learned models: a stand-in video is a blurred reconstruction.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

# The Wan2.1 VAE's layout: the defaults of the stand-in (the Wan2.2 TI2V-5B VAE has 48 channels, stride (4, 16, 16)).
LATENT_CHANNELS = 16
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8
VAE_STRIDE = (TEMPORAL_STRIDE, SPATIAL_STRIDE, SPATIAL_STRIDE)


@runtime_checkable
class VideoVAE(Protocol):
    """C = `latent_channels`, (st, sh, sw) = `stride`."""

    backend: str
    latent_channels: int
    stride: tuple[int, int, int]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1], T = 1 + st·k → (B, C, 1 + (T − 1) // st, H / sh, W / sw)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, T_lat, H_lat, W_lat) → (B, 3, 1 + st·(T_lat − 1), sh·H_lat, sw·W_lat) in [-1, 1]."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    backend: str
    text_dim: int
    text_len: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """N prompts → (N, text_len, text_dim) embeddings, zero after each prompt's tokens."""
        ...


def check_video_shape(video: torch.Tensor, stride: tuple[int, int, int] = VAE_STRIDE) -> None:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    frames, height, width = video.shape[2:]
    if (frames - 1) % stride[0]:
        raise ValueError(f"video has {frames} frames; the VAE needs 1 + {stride[0]}k frames")
    if height % stride[1] or width % stride[2]:
        raise ValueError(f"video size {height}×{width} is not a multiple of {stride[1]}×{stride[2]}")


def check_latent_channels(latents: torch.Tensor, channels: int) -> None:
    if latents.dim() != 5 or latents.shape[1] != channels:
        raise ValueError(f"latents must be (B, {channels}, T, H, W), got {tuple(latents.shape)}")


class StandInVideoVAE:
    """A fixed linear "VAE" with Wan's layout: first frame alone, then groups of `st` frames; `s`×`s` patches → C
    channels. Defaults: the Wan2.1 VAE's C = 16, stride (4, 8, 8); (48, (4, 16, 16)) mimics the Wan2.2 TI2V-5B VAE.

    Encode: average each temporal group, cut s×s patches (3·s² values), project onto C orthonormal directions.
    The first 3·g² directions are the per-colour g×g block means of the patch (g the largest power of two dividing
    s with 3·g² ≤ C: 2 for 16 channels, 4 for 48 at stride 16), so decoding (the transpose) gives a blurred but
    recognisable video; the other C − 3·g² are fixed random directions orthogonal to them.
    """

    backend = "standin-vae"

    def __init__(self, seed: int = 0, latent_channels: int = LATENT_CHANNELS,
                 stride: tuple[int, int, int] = VAE_STRIDE):
        stride = tuple(int(s) for s in stride)
        if len(stride) != 3 or min(stride) < 1 or stride[1] != stride[2]:
            raise ValueError(f"stand-in VAE stride {stride}: three positive ints with equal height and width")
        size = stride[1]
        patch = 3 * size * size
        if not 3 <= latent_channels <= patch:
            raise ValueError(f"stand-in VAE: {latent_channels} channels outside [3, {patch}] for stride {size}")
        self.latent_channels, self.stride = int(latent_channels), stride
        grid = 1
        while size % (2 * grid) == 0 and 3 * (2 * grid) ** 2 <= latent_channels:
            grid *= 2
        blocks, cell = 3 * grid * grid, size // grid
        block_means = torch.zeros(blocks, 3, size, size, dtype=torch.float64)
        for colour in range(3):
            for by in range(grid):
                for bx in range(grid):
                    block_means[colour * grid * grid + by * grid + bx, colour, by * cell:(by + 1) * cell,
                                bx * cell:(bx + 1) * cell] = 1.0
        extra = torch.randn(latent_channels - blocks, patch, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)
        basis, _ = torch.linalg.qr(torch.cat([block_means.reshape(blocks, patch), extra]).T)  # (3·s², C)
        self.basis = basis.T.float().contiguous()  # (C, 3·s²) orthonormal rows
        # A unit block direction reads cell · (block mean): block means of [-1, 1] pixels span [-cell, cell]
        # (±4 for Wan2.1's layout); bring latents near unit scale.
        self.scale = 1.0 / cell

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_video_shape(video, self.stride)
        st, sh, sw = self.stride
        b, c, t, h, w = video.shape
        first, rest = video[:, :, :1], video[:, :, 1:]
        rest = rest.reshape(b, c, (t - 1) // st, st, h, w).mean(3)
        grouped = torch.cat([first, rest], dim=2)  # (B, 3, T_lat, H, W)
        t_lat = grouped.shape[2]
        frames = grouped.permute(0, 2, 1, 3, 4).reshape(b * t_lat, c, h, w)
        patches = F.pixel_unshuffle(frames.float(), sh)  # (B·T_lat, 3·s², H/s, W/s)
        latents = torch.einsum("kc,nchw->nkhw", self.basis.to(patches.device), patches) * self.scale
        return latents.reshape(b, t_lat, self.latent_channels, h // sh, w // sw).permute(0, 2, 1, 3, 4) \
            .to(video.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        check_latent_channels(latents, self.latent_channels)
        st, sh, sw = self.stride
        b, k, t_lat, hl, wl = latents.shape
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t_lat, k, hl, wl).float() / self.scale
        patches = torch.einsum("kc,nkhw->nchw", self.basis.to(flat.device), flat)
        frames = F.pixel_shuffle(patches, sh).reshape(b, t_lat, 3, hl * sh, wl * sw)
        repeats = torch.tensor([1] + [st] * (t_lat - 1), device=frames.device)
        video = frames.repeat_interleave(repeats, dim=1).permute(0, 2, 1, 3, 4)
        return video.clamp(-1, 1).to(latents.dtype)


class StandInTextEncoder:
    """Hashes lower-cased words into a fixed random embedding table: same prompt → same embedding, no weights.

    Output (N, text_len, text_dim): one row per word (up to text_len), zeros after, like Wan's padded umT5 output.
    """

    backend = "standin-text"

    def __init__(self, text_dim: int, text_len: int, vocab_size: int = 4096, seed: int = 0):
        self.text_dim, self.text_len, self.vocab_size = text_dim, text_len, vocab_size
        self.table = torch.randn(vocab_size, text_dim, generator=torch.Generator().manual_seed(seed))

    def token_ids(self, prompt: str) -> list[int]:
        return [zlib.crc32(word.encode()) % self.vocab_size for word in prompt.lower().split()][: self.text_len]

    def encode(self, prompts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(prompts), self.text_len, self.text_dim)
        for i, prompt in enumerate(prompts):
            ids = self.token_ids(prompt)
            if ids:
                out[i, : len(ids)] = self.table[ids]
        return out


class WanVideoVAE:
    """The Wan2.1 / Wan2.2 VAE from a local diffusers-format folder, latents normalised per channel.

    `latent_channels` and `stride` are read from the VAE's config (`z_dim`, `scale_factor_temporal`,
    `scale_factor_spatial`; older configs without the scale factors: 2 per down-sampling stage times `patch_size`).
    """

    backend = "wan-vae"

    def __init__(self, path: str, device: str | torch.device = "cuda", dtype: torch.dtype | None = None):
        dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
        try:
            from diffusers import AutoencoderKLWan
        except ImportError as error:
            raise ImportError("the Wan VAE needs `pip install diffusers` (a version with AutoencoderKLWan)") from error
        if (Path(path) / "vae").is_dir():  # the root of a diffusers pipeline folder
            path = str(Path(path) / "vae")
        self.model = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        self.latent_channels, self.stride = vae_layout(self.model.config)
        shape = (1, self.latent_channels, 1, 1, 1)
        for name in ("latents_mean", "latents_std"):
            values = getattr(self.model.config, name, None)
            if values is None or len(values) != self.latent_channels:
                raise ValueError(f"VAE {path}: config {name} has {len(values or [])} values, "
                                 f"z_dim is {self.latent_channels}")
        config = self.model.config
        self.mean = torch.tensor(config.latents_mean, device=device, dtype=torch.float32).view(shape)
        self.std = torch.tensor(config.latents_std, device=device, dtype=torch.float32).view(shape)
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_video_shape(video, self.stride)
        posterior = self.model.encode(video.to(self.device, self.dtype)).latent_dist
        return (posterior.mean.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        check_latent_channels(latents, self.latent_channels)
        raw = latents.to(self.device).float() * self.std + self.mean
        return self.model.decode(raw.to(self.dtype)).sample.float().clamp(-1, 1)


def vae_layout(config) -> tuple[int, tuple[int, int, int]]:
    """(latent channels, (st, sh, sw)) from a diffusers `AutoencoderKLWan` config."""
    channels = int(config.z_dim)
    temporal = getattr(config, "scale_factor_temporal", None)
    spatial = getattr(config, "scale_factor_spatial", None)
    if temporal is None:
        temporal = 2 ** sum(bool(d) for d in config.temperal_downsample)
    if spatial is None:
        spatial = 2 ** len(config.temperal_downsample) * int(getattr(config, "patch_size", None) or 1)
    return channels, (int(temporal), int(spatial), int(spatial))


class UMT5TextEncoder:
    """umT5 encoder from a local transformers folder (tokenizer files + weights)."""

    backend = "umt5"

    def __init__(self, path: str, text_len: int = 512, device: str | torch.device = "cuda",
                 dtype: torch.dtype | None = None):
        dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
        try:
            from transformers import AutoTokenizer, UMT5EncoderModel
        except ImportError as error:
            raise ImportError("the umT5 text encoder needs `pip install transformers sentencepiece`") from error
        tokenizer_path = weights_path = Path(path)
        if (tokenizer_path / "text_encoder").is_dir():  # the root of a diffusers pipeline folder
            tokenizer_path, weights_path = tokenizer_path / "tokenizer", tokenizer_path / "text_encoder"
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(str(weights_path), torch_dtype=dtype, local_files_only=True)
        self.model.to(device).eval().requires_grad_(False)
        self.text_dim, self.text_len, self.device = int(self.model.config.d_model), text_len, torch.device(device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding="max_length", max_length=self.text_len, truncation=True,
                                add_special_tokens=True, return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        return (hidden.float() * tokens.attention_mask[..., None]).cpu()


def load_video_vae(spec: str, device: str | torch.device = "cpu", latent_channels: int | None = None,
                   stride: tuple[int, int, int] | None = None) -> VideoVAE:
    """`spec` is "standin" or a local diffusers folder of a Wan VAE.

    `latent_channels` / `stride`: the layout the model expects (`DiTConfig.in_channels`, `DiTConfig.vae_stride`).
    The stand-in is built with them (Wan2.1's 16, (4, 8, 8) when not given); a real VAE's own layout is checked
    against them.
    """
    if spec == "standin":
        return StandInVideoVAE(latent_channels=latent_channels or LATENT_CHANNELS, stride=stride or VAE_STRIDE)
    vae = WanVideoVAE(spec, device=device)
    if latent_channels is not None and vae.latent_channels != latent_channels:
        raise ValueError(f"VAE {spec!r} has {vae.latent_channels} latent channels, the model expects "
                         f"{latent_channels}")
    if stride is not None and tuple(vae.stride) != tuple(stride):
        raise ValueError(f"VAE {spec!r} has stride {vae.stride}, the model expects {tuple(stride)}")
    return vae


def load_text_encoder(spec: str, text_dim: int, text_len: int, device: str | torch.device = "cpu") -> TextEncoder:
    """`spec` is "standin" or a local folder with umT5 weights and tokenizer; checks the width against the model."""
    encoder: TextEncoder = StandInTextEncoder(text_dim, text_len) if spec == "standin" \
        else UMT5TextEncoder(spec, text_len=text_len, device=device)
    if encoder.text_dim != text_dim:
        raise ValueError(f"text encoder {spec!r} gives width {encoder.text_dim}, the model expects {text_dim}")
    return encoder
