"""Zero-shot content type of a clip from the aesthetic encoder's image embeddings: is it a real photo, or an
animation, cartoon, CGI render, video game, screen recording or text slide?

The aesthetic predictors already embed each scored frame with a CLIP (`laion-v2`) or SigLIP (`aesthetic-v2.5`)
image tower. The same checkpoints hold the matching text tower: it encodes the prompts of each content label once
per actor (`load_content_scorer`), and every frame's label probabilities are then a softmax over the model's own
logits, `exp(logit_scale) · cos(image, label)` (SigLIP's `logit_bias` is the same for every label and cancels).
No second image forward: `ContentTypeScorer.score_clip` takes the embeddings the aesthetic head scored.

A label with several prompts is their mean normalised text embedding, normalised again (CLIP's prompt ensembling).
Per clip, the probabilities are averaged over its scored frames; `synthetic_score` is the highest mean probability
of a label other than `photo`, `content_type` the most probable label. The offline `technical-quality` backend has
no encoder and so no such signal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

PHOTO = "photo"

# label → prompts; `photo` is the real-footage label the others are scored against.
DEFAULT_CONTENT_PROMPTS: dict[str, list[str]] = {
    PHOTO: ["a photo of a real scene", "a still frame from a video filmed with a camera"],
    "animation": ["a frame from an animated film"],
    "cartoon": ["a cartoon drawing", "a cartoon character"],
    "cgi": ["a 3D computer-generated rendering"],
    "video_game": ["a screenshot of a video game"],
    "screen_recording": ["a screen recording of a computer desktop", "a screenshot of a phone app"],
    "text_slide": ["a presentation slide with text", "a title card with text on a plain background"],
}


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")


class ContentTypeUnavailable(ValueError):
    """The encoder checkpoint cannot give content-type scores (no text tower, tokenizer or logit scale)."""


@dataclass(frozen=True)
class ClipContentType:
    """A clip's content type: per-label probabilities (mean over its scored frames), in `labels` order."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    synthetic_score: float   # the highest probability of a label other than `photo`
    content_type: str        # the most probable label


@dataclass(frozen=True)
class ContentTypeScorer:
    """Label text embeddings `(L, D)` (L2-normalised) and the model's logit scale (`exp(logit_scale)`)."""

    labels: tuple[str, ...]
    text_embeds: np.ndarray
    logit_scale: float

    def probabilities(self, image_embeds: np.ndarray) -> np.ndarray:
        """(N, D) L2-normalised image embeddings → (N, L) label probabilities (softmax over the labels)."""
        logits = self.logit_scale * (np.asarray(image_embeds, np.float64) @ self.text_embeds.T.astype(np.float64))
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def score_clip(self, image_embeds: np.ndarray) -> ClipContentType:
        """The content type of one clip from the embeddings `(N, D)` of its scored frames."""
        mean = self.probabilities(image_embeds).mean(axis=0)
        synthetic = max(float(p) for label, p in zip(self.labels, mean, strict=True) if label != PHOTO)
        return ClipContentType(labels=self.labels, scores=tuple(float(p) for p in mean), synthetic_score=synthetic,
                               content_type=self.labels[int(np.argmax(mean))])


def check_prompts(prompts: Mapping[str, list[str]]) -> None:
    """Raise ValueError unless `prompts` is empty (content type off) or names `photo` and another label, each
    with at least one non-empty prompt."""
    if not prompts:
        return
    if PHOTO not in prompts or len(prompts) < 2:
        raise ValueError(f"content_prompts needs the label {PHOTO!r} and at least one other, got {list(prompts)}")
    for label, texts in prompts.items():
        if not label or not texts or any(not text.strip() for text in texts):
            raise ValueError(f"content_prompts[{label!r}]: give a label name and one or more non-empty prompts")


def load_content_scorer(backend: str, encoder_dir: str, prompts: Mapping[str, list[str]], device: str = "cpu",
                        dtype: torch.dtype | None = None) -> ContentTypeScorer:
    """Encode the prompts with the text tower of the encoder checkpoint in `encoder_dir` (a full CLIP or SigLIP
    folder, e.g. openai/clip-vit-large-patch14, google/siglip-so400m-patch14-384) and read its logit scale. The
    text tower is freed afterwards (`dtype`: None = float32). Raises `ContentTypeUnavailable` naming what the
    folder lacks."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, CLIPTextModelWithProjection, SiglipTextModel
    from transformers.utils import logging as hf_logging

    check_prompts(prompts)
    dtype = torch.float32 if dtype is None else dtype
    config = AutoConfig.from_pretrained(encoder_dir)
    text_config = getattr(config, "text_config", None)
    if text_config is None:
        raise ContentTypeUnavailable(
            f"aesthetic encoder {encoder_dir!r} has no text tower (a vision-only checkpoint), so no content-type "
            "scores: give the full CLIP / SigLIP checkpoint, or set aesthetic.content_prompts to {} to record none")
    # transformers builds an empty tokenizer (special tokens only) from a folder without tokenizer files.
    if not any(os.path.isfile(os.path.join(encoder_dir, name)) for name in TOKENIZER_FILES):
        raise ContentTypeUnavailable(
            f"aesthetic encoder {encoder_dir!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}) for the content-type "
            "prompts: give the full checkpoint folder, or set aesthetic.content_prompts to {} to record none")
    try:
        tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    except (OSError, ValueError, ImportError) as exc:
        raise ContentTypeUnavailable(f"aesthetic encoder {encoder_dir!r}: no usable tokenizer for the content-type "
                                     f"prompts ({exc})") from exc
    if backend == "laion-v2":
        text_config.projection_dim = config.projection_dim  # kept at the top level of a full CLIP config
    model_class = CLIPTextModelWithProjection if backend == "laion-v2" else SiglipTextModel
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the report of the unused vision weights says nothing
    try:
        model, info = model_class.from_pretrained(encoder_dir, config=text_config, dtype=dtype,
                                                  output_loading_info=True)
    except RuntimeError as exc:  # weights of another shape
        raise ContentTypeUnavailable(f"aesthetic encoder {encoder_dir!r}: its text tower does not fit "
                                     f"{model_class.__name__}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise ContentTypeUnavailable(f"aesthetic encoder {encoder_dir!r}: the text tower lacks weights {missing[:5]}")

    labels = tuple(prompts)
    texts = [text for label in labels for text in prompts[label]]
    # SigLIP was trained on prompts padded to its full length; CLIP pools at the end token, so padding is harmless.
    tokens = tokenizer(texts, padding="max_length", max_length=text_config.max_position_embeddings,
                       truncation=True, return_tensors="pt")
    model = model.to(device).eval()
    with torch.inference_mode():
        output = model(**{name: value.to(device) for name, value in tokens.items()})
    embeds = (output.text_embeds if backend == "laion-v2" else output.pooler_output).float().cpu().numpy()
    del model
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True).clip(1e-12)
    per_label, start = [], 0
    for label in labels:
        mean = embeds[start:start + len(prompts[label])].mean(axis=0)
        per_label.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        start += len(prompts[label])
    return ContentTypeScorer(labels=labels, text_embeds=np.stack(per_label).astype(np.float32),
                             logit_scale=float(np.exp(read_logit_scale(encoder_dir))))


def read_logit_scale(encoder_dir: str) -> float:
    """The checkpoint's learned `logit_scale` (a log; CLIP's trained value is log 100), read from its safetensors
    files without loading the model."""
    from safetensors import safe_open

    for name in sorted(os.listdir(encoder_dir)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(encoder_dir, name), framework="pt") as weights:
                if "logit_scale" in weights.keys():
                    return float(weights.get_tensor("logit_scale").float().reshape(-1)[0])
    raise ContentTypeUnavailable(f"aesthetic encoder {encoder_dir!r} holds no logit_scale (not a full CLIP / "
                                 "SigLIP checkpoint), so no content-type scores")
