"""`aesthetic`: score a few frames of each clip (default at 10 %, 50 % and 90 % of it) and keep clips whose mean
score reaches `min_score`.

Backends:
- `laion-v2` (real, default): LAION improved aesthetic predictor, CLIP ViT-L/14 + MLP, ≈ 1–10.
- `aesthetic-v2.5` (real): aesthetic-predictor v2.5, SigLIP so400m + MLP, ≈ 1–10.
- `technical-quality` (offline, no weights): sharpness, exposure, contrast and noise combined on its own 0–10
  scale (`humove.quality.technical`). It is a technical image-quality score, not an aesthetic model; its records
  say so (`aesthetic_scale`, `aesthetic_model`) and its rejections are `low_image_quality`, not `low_aesthetic`.

`prepare` (CPU) decodes the scored frames and turns them into the model's input; `process_batch` scores all
frames of a batch of clips in one pass (GPU for the model backends). Per-frame and mean raw scores are stored;
the threshold is a `decision()`, so changing it re-decides stored scores without recomputing them.

Content type (model backends, beyond the paper): the embeddings the aesthetic head scored also give zero-shot
probabilities of `content_prompts`' labels (photo, animation, cartoon, CGI, video game, screen recording, text
slide; `humove.quality.content_type`), the text tower encoding the prompts once per actor. Each clip records
`synthetic_score` (the most probable non-photo label's probability), `content_type` and the per-label scores;
`max_synthetic_score` (off by default) refuses clips above it as `synthetic_content`. `technical-quality` has no
such signal (its columns stay null).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from humove.clips import SHOTS_CLIP_FIELDS, TRIMMED_CLIP_FIELDS, current_clip
from humove.devices import resolve_torch_device
from humove.quality import technical
from humove.quality.content_type import DEFAULT_CONTENT_PROMPTS, check_prompts, load_content_scorer
from humove.quality.frames import frame_indices, read_frames
from humove.schemas import aesthetic as aesthetic_schema
from humove.stage import MapStage, Reads, Rejection, Resources, StageConfig, decision

TECHNICAL = "technical-quality"
_FRAMES_KEY = "aesthetic_frame_indices"  # added by prepare, read by process_batch
_INPUTS_KEY = "aesthetic_inputs"


class AestheticConfig(StageConfig):
    backend: Literal["laion-v2", "aesthetic-v2.5", "technical-quality"] = "laion-v2"
    frame_positions: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9])  # of the clip, 0–1
    encoder: str | None = None          # local folder or hub id; None = the backend's (openai/clip-vit-large-patch14…)
    head: str | None = None             # the MLP head file: local path or hf://owner/repo/file (model backends)
    image_size: int | None = None       # encoder input side; None = the backend's (224 CLIP, 384 SigLIP)
    device: str = "auto"                # auto = cuda when available
    precision: Literal["float32", "float16", "bfloat16"] = "float16"  # encoder on CUDA; the CPU uses float32
    frames_per_forward: int = 64        # frames per encoder forward pass
    analysis_side_px: int = 384         # technical-quality: longer side the measures are taken at
    content_prompts: dict[str, list[str]] = Field(
        default_factory=lambda: {label: list(texts) for label, texts in DEFAULT_CONTENT_PROMPTS.items()},
        description="content label → prompts for the zero-shot content type (model backends); must name 'photo'; "
                    "{} = none")
    min_score: float = decision(5.0, "clips whose mean score is below this are rejected", measure="aesthetic_mean")
    max_synthetic_score: float | None = decision(
        None, "clips whose synthetic_score (probability of the most likely non-photo content type) is above "
        "this are rejected as synthetic_content; None = off", measure="synthetic_score", ge=0.0, le=1.0)

    @field_validator("frame_positions")
    @classmethod
    def _positions_in_clip(cls, positions: list[float]) -> list[float]:
        if not positions or any(not 0.0 <= p <= 1.0 for p in positions):
            raise ValueError(f"frame_positions must be a non-empty list of fractions in [0, 1], got {positions}")
        return positions

    @field_validator("content_prompts")
    @classmethod
    def _photo_and_others(cls, prompts: dict[str, list[str]]) -> dict[str, list[str]]:
        check_prompts(prompts)
        return prompts

    def fingerprint_dict(self) -> dict:
        fingerprint = super().fingerprint_dict()
        if self.backend == TECHNICAL:  # no content type: its prompts change nothing it computes
            fingerprint.pop("content_prompts", None)
        return fingerprint

    @model_validator(mode="after")
    def _threshold_has_a_signal(self):
        if self.max_synthetic_score is not None and (self.backend == TECHNICAL or not self.content_prompts):
            raise ValueError("max_synthetic_score needs content-type scores: a model backend (laion-v2, "
                             "aesthetic-v2.5) with content_prompts; technical-quality has no such signal")
        return self


class AestheticStage(MapStage):
    name = "aesthetic"
    version = "2"  # 2: content-type scores from the same embeddings
    schema = aesthetic_schema.SCHEMA
    Config = AestheticConfig
    resources = Resources(num_cpus=1, batch_size=16)  # pipelines give the model backends num_gpus
    prepare_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=4)
    description = "score frames with the LAION aesthetic predictor (or offline technical quality); threshold"

    predictor = None
    content = None  # ContentTypeScorer: the prompts' text embeddings (model backends with content_prompts)
    model_name: str | None = None
    model_sha256: str | None = None

    @classmethod
    def reads(cls, config: AestheticConfig) -> Reads:
        return Reads(SHOTS_CLIP_FIELDS, if_present=TRIMMED_CLIP_FIELDS)  # the clip (`current_clip`)

    def setup(self) -> None:
        c = self.config
        if c.backend == TECHNICAL:
            self.model_name, self.model_sha256 = technical.MODEL_NAME, technical.formula_sha256()
            return
        # The model backends' torch and transformers load here, on their workers: not where configs are read.
        import torch

        from humove.quality.aesthetic import BACKENDS, load_predictor, resolve_encoder

        device = resolve_torch_device(c.device, "aesthetic")  # never a silent CPU run on a GPU worker
        dtype = getattr(torch, c.precision) if device.startswith("cuda") else torch.float32
        self.predictor, self.model_name, self.model_sha256 = load_predictor(
            c.backend, c.encoder, c.head, device=device, dtype=dtype, image_size=c.image_size)
        if c.content_prompts:
            self.content = load_content_scorer(c.backend, resolve_encoder(BACKENDS[c.backend], c.encoder),
                                               c.content_prompts, device=device, dtype=dtype)

    # CPU ----------------------------------------------------------------------------------------------------------
    def prepare(self, item: dict) -> dict:
        """Decode the scored frames of the clip; add their numbers and the model input: `(N, h, w)` float32 luma
        (technical-quality) or `(N, S, S, 3)` uint8 encoder-sized frames (model backends; normalised on the
        model's device)."""
        clip = current_clip(item)
        indices = frame_indices(clip.num_frames, self.config.frame_positions)
        if self.config.backend == TECHNICAL:
            frames = read_frames(clip.path, indices, max_side=self.config.analysis_side_px)
            inputs = np.stack([technical.luma(f, self.config.analysis_side_px) for f in frames])
        else:
            from humove.quality.aesthetic import BACKENDS, resize_for_encoder  # the predictors' module (torch)

            frames = read_frames(clip.path, indices)
            inputs = resize_for_encoder(frames, BACKENDS[self.config.backend], self.config.image_size)
        return {**item, _FRAMES_KEY: indices, _INPUTS_KEY: inputs}

    # Model --------------------------------------------------------------------------------------------------------
    def process_batch(self, items: list[dict]) -> list[dict | BaseException]:
        if self.model_sha256 is None:
            self.setup()
        if self.config.backend == TECHNICAL:
            return [self._technical_record(item) for item in items]
        counts = [len(item[_INPUTS_KEY]) for item in items]
        scores, embeddings = self.predictor.score_and_embed(np.concatenate([item[_INPUTS_KEY] for item in items]),
                                                            chunk=self.config.frames_per_forward)
        ends = np.cumsum(counts)
        return [self._record(item, scores[end - count:end].tolist(), self._content_terms(embeddings[end - count:end]))
                for item, count, end in zip(items, counts, ends, strict=True)]

    def _content_terms(self, embeddings: np.ndarray) -> dict:
        """The content-type columns of one clip from the embeddings `(N, D)` of its scored frames."""
        if self.content is None:
            return {}
        found = self.content.score_clip(embeddings)
        return {"synthetic_score": found.synthetic_score, "content_type": found.content_type,
                "content_type_labels": list(found.labels), "content_type_scores": list(found.scores)}

    def process(self, item: dict) -> dict:
        """One clip (prepared or not): the engine's one-at-a-time fallback and direct callers."""
        prepared = item if _INPUTS_KEY in item else self.prepare(item)
        result = self.process_batch([prepared])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _technical_record(self, item: dict) -> dict | BaseException:
        try:
            measures = [technical.technical_quality(y) for y in item[_INPUTS_KEY]]
        except Exception as exc:  # noqa: BLE001 - one bad clip must not fail the batch
            return exc
        terms = {f"aesthetic_{name}": float(np.mean([getattr(m, name) for m in measures]))
                 for name in ("sharpness", "exposure", "contrast", "noise")}
        return self._record(item, [m.score for m in measures], terms)

    def _record(self, item: dict, scores: list[float], terms: dict) -> dict:
        scale = technical.SCALE if self.config.backend == TECHNICAL else self.predictor.backend.scale
        return self.ok(
            item["clip_id"], backend=self.config.backend, aesthetic_scores=[float(s) for s in scores],
            aesthetic_frames=[int(i) for i in item[_FRAMES_KEY]], aesthetic_mean=float(np.mean(scores)),
            aesthetic_scale=scale, aesthetic_model=self.model_name, aesthetic_model_sha256=self.model_sha256,
            **terms,
        )

    def decide(self, record: dict) -> Rejection | None:
        synthetic, limit = record.get("synthetic_score"), self.config.max_synthetic_score
        if limit is not None and synthetic is not None and synthetic > limit:
            return Rejection("synthetic_content", float(synthetic), f"{record.get('content_type') or 'non-photo'} "
                             f"with probability {synthetic:.2f}", f"≤ {limit:g}")
        mean = record.get("aesthetic_mean")
        if mean is None or mean >= self.config.min_score:
            return None
        reason = "low_image_quality" if record.get("backend") == TECHNICAL else "low_aesthetic"
        return Rejection(reason, float(mean), f"mean score {mean:.2f}", f"≥ {self.config.min_score:g}")
