"""Video VAE and text encoder behind two small interfaces, with real loaders and in-code stand-ins.

Real (GPU machines, weights from local paths; nothing is downloaded):
- `WanVideoVAE`: the Wan2.1 VAE through diffusers' `AutoencoderKLWan` (a diffusers-format folder: the root of
  `Wan2.1-T2V-1.3B-Diffusers` or its `vae/` folder); latents are normalised per channel with the VAE's `latents_mean` /
  `latents_std`, as Wan trains on them.
- `UMT5TextEncoder`: umT5-XXL through transformers (`UMT5EncoderModel` + its tokenizer: one folder holding both,
  or the root of a diffusers pipeline folder with `text_encoder/` and `tokenizer/`); the
  output is zeroed after each prompt's last token and padded to `text_len` (Wan's layout).
Both need `pip install diffusers transformers` (not in the base install; see the README).

Stand-ins (CPU tests, the offline demo): deterministic, parameter-free modules built in code with the same
interfaces and compression factors. They say so: `backend` is "standin-vae" / "standin-text" and the trainer and
sampler write that into logs and outputs. They are not learned models: a stand-in video is a blurred reconstruction.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

LATENT_CHANNELS = 16
TEMPORAL_STRIDE = 4
SPATIAL_STRIDE = 8


@runtime_checkable
class VideoVAE(Protocol):
    backend: str

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1], T = 1 + 4k → (B, 16, 1 + (T − 1) // 4, H / 8, W / 8)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 16, T_lat, H_lat, W_lat) → (B, 3, 1 + 4·(T_lat − 1), 8·H_lat, 8·W_lat) in [-1, 1]."""
        ...


@runtime_checkable
class TextEncoder(Protocol):
    backend: str
    text_dim: int
    text_len: int

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """N prompts → (N, text_len, text_dim) embeddings, zero after each prompt's tokens."""
        ...


def check_video_shape(video: torch.Tensor) -> None:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    frames, height, width = video.shape[2:]
    if (frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"video has {frames} frames; the VAE needs 1 + 4k frames")
    if height % SPATIAL_STRIDE or width % SPATIAL_STRIDE:
        raise ValueError(f"video size {height}×{width} is not a multiple of {SPATIAL_STRIDE}")


class StandInVideoVAE:
    """A fixed linear "VAE" with Wan's layout: first frame alone, then groups of 4 frames; 8×8 patches → 16 channels.

    Encode: average each temporal group, cut 8×8 patches (3·64 values), project onto 16 orthonormal directions.
    The first 12 directions are the per-colour 2×2 block means of the patch, so decoding (the transpose) gives a
    blurred but recognisable video; the last 4 are fixed random directions orthogonal to them.
    """

    backend = "standin-vae"

    def __init__(self, seed: int = 0):
        patch = 3 * SPATIAL_STRIDE * SPATIAL_STRIDE
        block_means = torch.zeros(12, 3, SPATIAL_STRIDE, SPATIAL_STRIDE, dtype=torch.float64)
        half = SPATIAL_STRIDE // 2
        for colour in range(3):
            for by in range(2):
                for bx in range(2):
                    block_means[colour * 4 + by * 2 + bx, colour, by * half:(by + 1) * half,
                                bx * half:(bx + 1) * half] = 1.0
        extra = torch.randn(LATENT_CHANNELS - 12, patch, generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)
        basis, _ = torch.linalg.qr(torch.cat([block_means.reshape(12, patch), extra]).T)  # (192, 16)
        self.basis = basis.T.float().contiguous()  # (16, 192) orthonormal rows
        self.scale = 0.25  # block means of [-1, 1] pixels span [-4, 4]: bring latents near unit scale

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_video_shape(video)
        b, c, t, h, w = video.shape
        first, rest = video[:, :, :1], video[:, :, 1:]
        rest = rest.reshape(b, c, (t - 1) // TEMPORAL_STRIDE, TEMPORAL_STRIDE, h, w).mean(3)
        grouped = torch.cat([first, rest], dim=2)  # (B, 3, T_lat, H, W)
        t_lat = grouped.shape[2]
        frames = grouped.permute(0, 2, 1, 3, 4).reshape(b * t_lat, c, h, w)
        patches = F.pixel_unshuffle(frames.float(), SPATIAL_STRIDE)  # (B·T_lat, 192, H/8, W/8)
        latents = torch.einsum("kc,nchw->nkhw", self.basis.to(patches.device), patches) * self.scale
        return latents.reshape(b, t_lat, LATENT_CHANNELS, h // 8, w // 8).permute(0, 2, 1, 3, 4).to(video.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, k, t_lat, hl, wl = latents.shape
        if k != LATENT_CHANNELS:
            raise ValueError(f"latents must have {LATENT_CHANNELS} channels, got {k}")
        flat = latents.permute(0, 2, 1, 3, 4).reshape(b * t_lat, k, hl, wl).float() / self.scale
        patches = torch.einsum("kc,nkhw->nchw", self.basis.to(flat.device), flat)
        frames = F.pixel_shuffle(patches, SPATIAL_STRIDE).reshape(b, t_lat, 3, hl * 8, wl * 8)
        repeats = torch.tensor([1] + [TEMPORAL_STRIDE] * (t_lat - 1), device=frames.device)
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
    """The Wan2.1 VAE from a local diffusers-format folder, latents normalised per channel."""

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
        config = self.model.config
        shape = (1, LATENT_CHANNELS, 1, 1, 1)
        self.mean = torch.tensor(config.latents_mean, device=device, dtype=torch.float32).view(shape)
        self.std = torch.tensor(config.latents_std, device=device, dtype=torch.float32).view(shape)
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        check_video_shape(video)
        posterior = self.model.encode(video.to(self.device, self.dtype)).latent_dist
        return (posterior.mean.float() - self.mean) / self.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raw = latents.to(self.device).float() * self.std + self.mean
        return self.model.decode(raw.to(self.dtype)).sample.float().clamp(-1, 1)


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


def load_video_vae(spec: str, device: str | torch.device = "cpu") -> VideoVAE:
    """`spec` is "standin" or a local diffusers folder of the Wan VAE."""
    if spec == "standin":
        return StandInVideoVAE()
    return WanVideoVAE(spec, device=device)


def load_text_encoder(spec: str, text_dim: int, text_len: int, device: str | torch.device = "cpu") -> TextEncoder:
    """`spec` is "standin" or a local folder with umT5 weights and tokenizer; checks the width against the model."""
    encoder: TextEncoder = StandInTextEncoder(text_dim, text_len) if spec == "standin" \
        else UMT5TextEncoder(spec, text_len=text_len, device=device)
    if encoder.text_dim != text_dim:
        raise ValueError(f"text encoder {spec!r} gives width {encoder.text_dim}, the model expects {text_dim}")
    return encoder
