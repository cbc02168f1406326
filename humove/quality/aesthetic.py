"""Real aesthetic predictors: an image encoder's embedding, L2-normalised, then a small MLP head → a score on the
≈ 1–10 scale of the human ratings it was trained on.

- `laion-v2`: the LAION improved aesthetic predictor (github.com/christophschuhmann/improved-aesthetic-predictor,
  weights `sac+logos+ava1-l14-linearMSE.pth`): CLIP ViT-L/14 projected image embedding (768) → MLP
  768→1024→128→64→16→1 (no activations, dropout only in training). Encoder: `openai/clip-vit-large-patch14`.
- `aesthetic-v2.5`: aesthetic-predictor v2.5 (github.com/discus0434/aesthetic-predictor-v2-5, weights
  `models/aesthetic_predictor_v2_5.pth`): SigLIP so400m-patch14-384 pooled embedding (1152) → MLP
  1152→1024→128→64→16→1. Encoder: `google/siglip-so400m-patch14-384`.

The heads keep the upstream module names (`layers.{0,2,4,6,7}` and `scoring_head.{0,2,4,6,8}`), so the official
files load with `strict=True`. Encoders load through transformers (`CLIPVisionModelWithProjection`,
`SiglipVisionModel`) from a local folder or a hub id. Frames are resized on the CPU (`resize_for_encoder`, kept in
uint8), then normalised and scored in batches on the model's device (`AestheticPredictor.score`;
`score_and_embed` also returns the embeddings, from which `humove.quality.content_type` scores the content type).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image
from torch import nn

from humove.devices import require_torch_device
from humove.schemas.checksums import file_digest


@dataclass(frozen=True)
class AestheticBackend:
    """What one predictor needs: its encoder, head, input size and pixel normalisation."""

    name: str
    scale: str
    default_encoder: str
    head_file: str            # the upstream weight file name
    head_source: str          # where to get it
    image_size: int           # the encoder's input side
    crop: bool                # resize the short side then centre-crop (CLIP), or squash to a square (SigLIP)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


BACKENDS = {
    "laion-v2": AestheticBackend(
        name="laion-v2", scale="laion-aesthetic-v2 (1–10)", default_encoder="openai/clip-vit-large-patch14",
        head_file="sac+logos+ava1-l14-linearMSE.pth",
        head_source="https://github.com/christophschuhmann/improved-aesthetic-predictor",
        image_size=224, crop=True,
        mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711),  # CLIP's
    ),
    "aesthetic-v2.5": AestheticBackend(
        name="aesthetic-v2.5", scale="aesthetic-predictor-v2.5 (1–10)",
        default_encoder="google/siglip-so400m-patch14-384", head_file="aesthetic_predictor_v2_5.pth",
        head_source="https://github.com/discus0434/aesthetic-predictor-v2-5 (models/aesthetic_predictor_v2_5.pth)",
        image_size=384, crop=False, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),  # SigLIP's
    ),
}


class WeightsNotFoundError(FileNotFoundError):
    """A weight file or encoder folder is missing; the message names it and where to get it."""


# Heads -----------------------------------------------------------------------------------------------------------

class LaionAestheticHead(nn.Module):
    """LAION improved predictor MLP: (B, 768) normalised CLIP embeddings → (B, 1) scores."""

    def __init__(self, embed_dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


class AestheticV25Head(nn.Module):
    """aesthetic-predictor v2.5 MLP: (B, 1152) normalised SigLIP pooled embeddings → (B, 1) scores."""

    def __init__(self, embed_dim: int = 1152):
        super().__init__()
        self.scoring_head = nn.Sequential(
            nn.Linear(embed_dim, 1024), nn.Dropout(0.5), nn.Linear(1024, 128), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.Dropout(0.5), nn.Linear(64, 16), nn.Dropout(0.2), nn.Linear(16, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.scoring_head(embeds)


def make_head(backend: str, embed_dim: int) -> nn.Module:
    return LaionAestheticHead(embed_dim) if backend == "laion-v2" else AestheticV25Head(embed_dim)


# Loading ---------------------------------------------------------------------------------------------------------

def resolve_head(backend: AestheticBackend, head: str | None) -> str:
    """A local path for the head weights: `head` itself, or `hf://owner/repo/path/in/repo` from the hub."""
    if not head:
        raise WeightsNotFoundError(
            f"aesthetic backend {backend.name!r} needs its head weights {backend.head_file!r}: download it from "
            f"{backend.head_source} and set aesthetic.head to its path")
    if head.startswith("hf://"):
        from huggingface_hub import hf_hub_download

        parts = head.removeprefix("hf://").split("/")
        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            return hf_hub_download(repo_id, filename)
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, missing file: one clear message
            raise WeightsNotFoundError(f"aesthetic head {head!r} could not be fetched from the hub ({exc}); "
                                       f"{backend.head_file!r} is published at {backend.head_source}") from exc
    if not os.path.isfile(head):
        raise WeightsNotFoundError(f"aesthetic head weights {head!r} do not exist: download "
                                   f"{backend.head_file!r} from {backend.head_source}")
    return head


def resolve_encoder(backend: AestheticBackend, encoder: str | None) -> str:
    """A local folder holding the encoder (config + weights): `encoder` itself, or a hub id downloaded once."""
    encoder = encoder or backend.default_encoder
    if os.path.isdir(encoder):
        return encoder
    if os.path.exists(encoder) or encoder.startswith((".", "/")):
        raise WeightsNotFoundError(f"aesthetic encoder {encoder!r} is not a folder with a transformers model")
    from huggingface_hub import snapshot_download

    try:
        # Configs, weights and tokenizer files (tokenizer.json; SigLIP's spiece.model) for the content-type prompts.
        return snapshot_download(encoder, allow_patterns=["*.json", "*.safetensors", "*.model"])
    except Exception as exc:  # noqa: BLE001 - offline or unknown id: say what was looked for
        raise WeightsNotFoundError(
            f"aesthetic encoder {encoder!r} is neither a local folder nor downloadable from the hub ({exc}); "
            f"download it on a connected machine (`huggingface-cli download {encoder}`) and set "
            "aesthetic.encoder to that folder") from exc


def load_head_state(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


@lru_cache(maxsize=16)
def file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file (cached per path, size and modification time: encoders are gigabytes)."""
    return file_digest(path)


def _sha256(path: str) -> str:
    stat = os.stat(path)
    return file_sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


def weights_sha256(encoder_dir: str, head_path: str) -> str:
    """One hash for the whole predictor: SHA-256 of the lines "<file name> <sha256>" of the encoder's weight
    files (sorted) and then the head file. For the head alone, see `file_sha256`."""
    files = sorted(n for n in os.listdir(encoder_dir) if n.endswith((".safetensors", ".bin")))
    lines = [f"{name} {_sha256(os.path.join(encoder_dir, name))}" for name in files]
    lines.append(f"{os.path.basename(head_path)} {_sha256(head_path)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# Pixels ----------------------------------------------------------------------------------------------------------

def resize_for_encoder(frames: list[np.ndarray], backend: AestheticBackend,
                       image_size: int | None = None) -> np.ndarray:
    """Encoder-sized frames `(N, S, S, 3)` uint8 from RGB uint8 frames `(H, W, 3)`, resized as the encoders'
    processors do: bicubic (PIL), CLIP: short side to S then a centre crop; SigLIP: to S×S. Kept in uint8 (a
    quarter of float32) until the model's device normalises them (`AestheticPredictor.normalize`)."""
    side = image_size or backend.image_size
    out = np.empty((len(frames), side, side, 3), np.uint8)
    for index, frame in enumerate(frames):
        image = Image.fromarray(frame)
        if backend.crop:
            width, height = image.size  # the long side as transformers computes it: truncated
            resized = (side, int(side * height / width)) if width <= height else (int(side * width / height), side)
            image = image.resize(resized, Image.Resampling.BICUBIC)
            left, top = (resized[0] - side) // 2, (resized[1] - side) // 2
            image = image.crop((left, top, left + side, top + side))
        else:
            image = image.resize((side, side), Image.Resampling.BICUBIC)
        out[index] = np.asarray(image.convert("RGB"))
    return out


def preprocess(frames: list[np.ndarray], backend: AestheticBackend, image_size: int | None = None) -> np.ndarray:
    """Encoder input `(N, 3, S, S)` float32, normalised, on the CPU: what `AestheticPredictor.normalize` makes
    of `resize_for_encoder` (the reference for tests and one-off use)."""
    pixels = resize_for_encoder(frames, backend, image_size).transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    mean = np.asarray(backend.mean, np.float32)[None, :, None, None]
    std = np.asarray(backend.std, np.float32)[None, :, None, None]
    return (pixels - mean) / std


# Predictor -------------------------------------------------------------------------------------------------------

class AestheticPredictor(nn.Module):
    """Encoder + head. `forward(pixels (B, 3, S, S) normalised) → (B,)` scores; `score` takes uint8 frames
    `(N, S, S, 3)` from `resize_for_encoder` and runs them in chunks on the model's device."""

    def __init__(self, backend: str, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.backend = BACKENDS[backend]
        self.encoder = encoder
        self.head = head
        self.register_buffer("mean", torch.tensor(self.backend.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backend.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) uint8 → (B, 3, S, S) float32 normalised, on the frames' device."""
        pixels = frames.permute(0, 3, 1, 2).float() / 255.0
        return (pixels - self.mean) / self.std

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised float32 image embeddings of normalised pixels."""
        dtype = next(self.encoder.parameters()).dtype
        output = self.encoder(pixel_values=pixels.to(dtype))
        embeds = output.image_embeds if self.backend.name == "laion-v2" else output.pooler_output
        embeds = embeds.float()
        return embeds / embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(pixels)).squeeze(-1)

    def score(self, frames: np.ndarray, chunk: int = 64) -> np.ndarray:
        """(N,) float64 scores of uint8 frames `(N, S, S, 3)`, `chunk` frames per forward pass."""
        return self.score_and_embed(frames, chunk)[0]

    @torch.inference_mode()
    def score_and_embed(self, frames: np.ndarray, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(N,) float64 scores and the (N, D) float32 L2-normalised embeddings they were scored from (for
        `humove.quality.content_type`), of uint8 frames `(N, S, S, 3)`; `chunk` frames per forward pass."""
        device = self.mean.device
        scores, embeddings = [], []
        for start in range(0, len(frames), chunk):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + chunk])).to(device, non_blocking=True)
            embeds = self.embed(self.normalize(batch))
            scores.append(self.head(embeds).squeeze(-1).double().cpu().numpy())
            embeddings.append(embeds.cpu().numpy())
        if not scores:
            return np.zeros(0), np.zeros((0, 0), np.float32)
        return np.concatenate(scores), np.concatenate(embeddings)


def encoder_class(backend: str):
    from transformers import CLIPVisionModelWithProjection, SiglipVisionModel

    return CLIPVisionModelWithProjection if backend == "laion-v2" else SiglipVisionModel


def embed_dim(backend: str, encoder: nn.Module) -> int:
    config = encoder.config
    return int(config.projection_dim if backend == "laion-v2" else config.hidden_size)


def load_encoder(backend: str, encoder_dir: str, dtype: torch.dtype) -> nn.Module:
    """The vision tower from a vision-only or a full (text + vision) checkpoint, e.g. openai/clip-vit-large-patch14.

    Any encoder weight missing from the checkpoint, or of another shape, fails loudly: transformers would
    initialise it at random and go on. Unused text-tower weights are expected and ignored."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(encoder_dir)
    if getattr(config, "vision_config", None) is not None:  # a full CLIP / SigLIP checkpoint
        vision = config.vision_config
        if backend == "laion-v2":
            vision.projection_dim = config.projection_dim  # kept at the top level of a full CLIP config
        config = vision
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report of the unused text weights, once per actor, says nothing
    name = encoder_class(backend).__name__
    try:
        model, info = encoder_class(backend).from_pretrained(encoder_dir, config=config, dtype=dtype,
                                                             output_loading_info=True)
    except RuntimeError as exc:  # transformers refuses weights of another shape
        raise ValueError(f"aesthetic encoder {encoder_dir!r} does not fit {name}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ValueError(f"aesthetic encoder {encoder_dir!r} does not fit {name}: missing weights {missing[:5]}")
    return model.eval()


def load_predictor(backend: str, encoder: str | None, head: str | None, device: str = "cpu",
                   dtype: torch.dtype = torch.float32,
                   image_size: int | None = None) -> tuple[AestheticPredictor, str, str]:
    """The predictor on `device` (encoder in `dtype`, head in float32), its model name and weights SHA-256.

    Raises `WeightsNotFoundError` naming a missing file and where to get it; a head file whose keys or shapes do
    not match fails loudly (strict loading), and so does an encoder whose input side is not `image_size`
    (default: the backend's) that `preprocess` will produce. A CUDA `device` this node cannot use is an error
    (DeviceUnavailableError), before any file is read."""
    require_torch_device(device, "aesthetic")
    spec = BACKENDS[backend]
    head_path = resolve_head(spec, head)
    encoder_dir = resolve_encoder(spec, encoder)
    encoder_model = load_encoder(backend, encoder_dir, dtype)
    side = image_size or spec.image_size
    if encoder_model.config.image_size != side:
        raise ValueError(f"aesthetic encoder {encoder_dir!r} takes {encoder_model.config.image_size} px images, "
                         f"but frames are prepared at {side} px (aesthetic.image_size)")
    head_model = make_head(backend, embed_dim(backend, encoder_model))
    try:
        head_model.load_state_dict(load_head_state(head_path), strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{head_path} is not a {backend} head ({spec.head_file}): {exc}") from exc
    predictor = AestheticPredictor(backend, encoder_model, head_model.eval()).to(device)
    predictor.head.float()
    name = f"{encoder or spec.default_encoder}+{os.path.basename(head_path)}"
    return predictor, name, weights_sha256(encoder_dir, head_path)
