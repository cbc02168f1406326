"""Pre-compute VAE latents and text embeddings into shards, so training skips video decoding and both encoders.

For every sample of the input shards this writes the same sample plus
    `{key}.latents.npy`  (C, T_lat, H/s, W/s) float16: VAE latents of the clip's first window (start 0) at the
                         training config's frames / fps / size, with the VAE's channels C and spatial stride s
                         (16 and 8 for the Wan2.1 VAE, 48 and 16 for Wan2.2 TI2V-5B's; build the VAE with
                         `load_video_vae(spec, device, model.in_channels, model.vae_stride)`),
    `{key}.text.npy`     (L, D) float16: the caption's embedding without its zero padding,
into a new dataset folder `out_dir`, published whole like the shards stage's (`humove.dataset.DatasetBuilder`:
staged, `dataset.json` last, the source dataset's statistics kept when there is one source folder).
`humove.model.data` uses them when `use_cached` is on; the motion window then also starts at 0.
Samples the trainer would skip (too short, no motion) are copied unchanged. Input shards are checked against
their dataset.json checksums as they are read, as the trainer checks the cached shards.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from humove.dataset import DatasetBuilder
from humove.model.data import (
    DataConfig,
    decode_sample,
    iterate_shard,
    pixels_to_video,
    read_dataset_info,
    shard_entries,
)
from humove.model.encoders import TextEncoder, VideoVAE
from humove.schemas.shard import parse_metadata

log = logging.getLogger(__name__)


def _npy(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def trim_padding(embedding: torch.Tensor) -> torch.Tensor:
    """(L, D) → (L', D) without the trailing all-zero rows (at least one row kept)."""
    used = torch.nonzero(embedding.abs().sum(-1) > 0)
    length = int(used.max()) + 1 if len(used) else 1
    return embedding[:length]


@torch.no_grad()
def cache_encodings(data: DataConfig, out_dir: str | Path, vae: VideoVAE, text_encoder: TextEncoder,
                    device: str | torch.device = "cpu", latent_shape: tuple[int, ...] | None = None) -> dict:
    """Write cached shards for `data.shards` into `out_dir`; returns counts and the encoders' backends.

    latent_shape: when given (the model's `DiTConfig.latent_shape` of the window), every latent is checked against
    it, so a VAE that does not match the model fails here (on the first sample) rather than in training.
    """
    window = DataConfig(**{**data.__dict__, "random_window": False, "use_cached": False, "motion_only": False})
    cached = copied = 0
    shards = shard_entries(data.shards, data.splits)  # each shard's checksum is checked as it is read
    folders = {url.rsplit("/", 1)[0] for url in shards}
    source_info = read_dataset_info(next(iter(shards))) if len(folders) == 1 else {}
    with DatasetBuilder(str(out_dir)) as builder:
        for url, shard in shards.items():
            for raw in iterate_shard(url, shard):
                sample = {k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"}
                decoded = decode_sample(raw, window, None)
                if decoded is not None and "video" in decoded:
                    video = pixels_to_video(decoded["video"][None]).to(device)
                    latents = vae.encode(video)[0].float().cpu().numpy().astype(np.float16)
                    if latent_shape is not None and latents.shape != tuple(latent_shape):
                        raise ValueError(f"VAE {vae.backend} gives latents of shape {latents.shape} for "
                                         f"{raw['__key__']}, the model needs {tuple(latent_shape)}")
                    text = trim_padding(text_encoder.encode([decoded["caption"]])[0].float().cpu())
                    sample["latents.npy"], sample["text.npy"] = _npy(latents), _npy(text.numpy().astype(np.float16))
                    cached += 1
                else:
                    copied += 1
                builder.add(sample, parse_metadata(raw["json"], f"shard {url}, sample {raw['__key__']!r}"))
        builder.publish(**{name: source_info[name] for name in ("feature_stats", "motion_stats", "producer")
                           if source_info.get(name)})
    log.info("cached %d samples (%d copied unchanged) into %s with %s / %s", cached, copied, out_dir, vae.backend,
             text_encoder.backend)
    return {"cached": cached, "copied": copied, "shards": len(shards), "vae": vae.backend,
            "text_encoder": text_encoder.backend}
