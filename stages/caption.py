"""`caption`: describe each clip — the subject's appearance and attire, the background, the action — with a
video-language model, as validated JSON.

Backends: `vllm` (Qwen2.5-VL through vLLM on a GPU; the paper used Qwen2-VL), `transformers` (the same models
through transformers), `template` (offline: composed from keyword, category and person / motion measures, and
saying so in `backend`, `caption_is_template` and every part). `prepare` (CPU workers) samples the clip's frames
at `sample_fps` within a pixel budget; `process_batch` sends a whole batch to the model. An answer that is not
the JSON asked for is sent back once with a request to fix it; a second bad answer is a rejection
`caption_malformed` (the raw answer is kept in `caption_raw`). The clip is read through
`humove.clips.current_clip`, so the caption describes the frames the motion was extracted from. The model gets the
rate the frames were sampled at (`caption_fps`: `sample_fps`, or less where `max_frames` caps a long clip), which
Qwen2.5-VL needs to place the frames in time.
"""

from __future__ import annotations

import shutil
from typing import Any, ClassVar, Literal

from pydantic import Field

from humove.captioning.backends import VideoRequest, make_captioner
from humove.captioning.frames import sample_frames
from humove.captioning.prompts import (
    CaptionOutputError,
    CaptionParts,
    caption_messages,
    parse_caption,
    prompt_hash,
    repair_messages,
)
from humove.captioning.template import TEMPLATE_FIELDS, root_speed, template_caption
from humove.clips import SHOTS_CLIP_FIELDS, TRIMMED_CLIP_FIELDS, current_clip
from humove.language.clients import GenerationSettings
from humove.schemas import caption as caption_schema
from humove.stage import MapStage, Reads, Resources, StageConfig
from humove.storage import Storage, is_local

TEMPLATE = "template"
_FRAMES_KEY = "caption_input_frames"  # added by prepare, read by process_batch
_FPS_KEY = "caption_input_fps"


class CaptionConfig(StageConfig):
    backend: Literal["vllm", "transformers", "template"] = "vllm"
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="local folder or hub id")
    sample_fps: float = Field(2.0, gt=0, description="frames per second of clip shown to the model")
    max_frames: int = Field(32, ge=2)
    max_pixels: int = Field(360 * 640, ge=28 * 28, description="pixel budget per frame (sides rounded to 28)")
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    keyword_hint: bool = Field(False, description="tell the model the search keyword that found the video")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm: LLM(...) arguments")
    device: str = Field("auto", description="transformers: 'auto' (a GPU when this worker can use one), 'cpu', "
                                            "'cuda[:i]'; a GPU it cannot use is an error, never a CPU run")


class CaptionStage(MapStage):
    name = "caption"
    version = "2"  # 2: the model gets the frames' real rate (Qwen2.5-VL's time axis); records caption_fps
    schema = caption_schema.SCHEMA
    Config = CaptionConfig
    resources = Resources(num_cpus=1, batch_size=32)  # pipelines give the model backends num_gpus
    prepare_resources: ClassVar[Resources] = Resources(num_cpus=1, batch_size=4)
    description = "caption clips (appearance, background, action) with Qwen2.5-VL, or a template offline"

    config: CaptionConfig
    captioner = None

    @classmethod
    def reads(cls, config: CaptionConfig) -> Reads:
        """A model sees the clip's frames (and the keyword with `keyword_hint`), never the motion; the template
        composes what the row knows, the root speed from the motion file included."""
        if config.backend == TEMPLATE:
            return Reads(if_present=TEMPLATE_FIELDS | {"motion_path"})
        hint = {"keyword", "keyword_text"} if config.keyword_hint else set()
        return Reads(SHOTS_CLIP_FIELDS, if_present=TRIMMED_CLIP_FIELDS | hint)

    def setup(self) -> None:
        c = self.config
        self.settings = GenerationSettings(temperature=c.temperature, seed=c.seed, max_tokens=c.max_tokens)
        if c.backend != TEMPLATE and self.captioner is None:
            self.captioner = make_captioner(c.backend, c.model, self.settings, c.engine_args, c.device)

    # CPU ----------------------------------------------------------------------------------------------------
    def prepare(self, item: dict) -> dict:
        """Add the sampled frames `(T, H, W, 3)` uint8 and their rate (model backends only)."""
        if self.config.backend == TEMPLATE:
            return item
        clip = current_clip(item)
        scratch = None if is_local(clip.path) else self.context.scratch_dir()
        try:
            path = Storage(clip.path).local_copy(clip.path, scratch) if scratch else clip.path
            frames, fps = sample_frames(path, clip.num_frames, clip.fps, self.config.sample_fps,
                                        self.config.max_frames, self.config.max_pixels)
        finally:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return {**item, _FRAMES_KEY: frames, _FPS_KEY: fps}

    # Model --------------------------------------------------------------------------------------------------
    def process(self, item: dict) -> dict:
        prepared = item if (_FRAMES_KEY in item or self.config.backend == TEMPLATE) else self.prepare(item)
        result = self.process_batch([prepared])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def process_batch(self, items: list[dict]) -> list[dict | BaseException]:
        if not hasattr(self, "settings"):
            self.setup()
        if self.config.backend == TEMPLATE:
            return [self._template_record(item) for item in items]
        requests = [VideoRequest(frames=item[_FRAMES_KEY], fps=float(item[_FPS_KEY]),
                                 messages=caption_messages(self._hint(item))) for item in items]
        first = self.captioner.generate(requests)
        answers: list[Any] = [None] * len(items)
        tokens = [[g.prompt_tokens, g.output_tokens] for g in first]
        tries = [1] * len(items)
        retry = []
        for index, generated in enumerate(first):
            try:
                answers[index] = parse_caption(generated.text)
            except CaptionOutputError as exc:
                answers[index] = exc
                requests[index] = VideoRequest(requests[index].frames, requests[index].fps,
                                               repair_messages(requests[index].messages, generated.text, str(exc)))
                retry.append(index)
        raw = [g.text for g in first]
        if retry:  # the one retry of malformed answers, batched
            for index, generated in zip(retry, self.captioner.generate([requests[i] for i in retry]), strict=True):
                tries[index], raw[index] = 2, generated.text
                tokens[index][0] += generated.prompt_tokens
                tokens[index][1] += generated.output_tokens
                try:
                    answers[index] = parse_caption(generated.text)
                except CaptionOutputError as exc:
                    answers[index] = exc
        records = []
        for index, item in enumerate(items):
            common = {
                "backend": self.config.backend, "caption_is_template": False, "caption_model": self.config.model,
                "caption_prompt_hash": prompt_hash(caption_messages(self._hint(item)), self._hash_settings()),
                "caption_prompt_tokens": tokens[index][0], "caption_output_tokens": tokens[index][1],
                "caption_frames": int(len(item[_FRAMES_KEY])), "caption_fps": float(item[_FPS_KEY]),
                "caption_tries": tries[index],
                "caption_raw": raw[index][:4000],
            }
            answer = answers[index]
            if isinstance(answer, CaptionOutputError):
                records.append(self.reject(item["clip_id"], "caption_malformed", detail=f"{answer} (after one retry)",
                                           **common))
            else:
                records.append(self.ok(item["clip_id"], **_parts(answer), **common))
        return records

    def _template_record(self, item: dict) -> dict | BaseException:
        try:
            parts = template_caption(item, self._root_speed(item))
        except Exception as exc:  # noqa: BLE001 - one bad row must not fail the batch
            return exc
        return self.ok(item["clip_id"], backend=TEMPLATE, caption_is_template=True, caption_model=TEMPLATE,
                       caption_prompt_hash=prompt_hash([], {"template": "1"}), caption_prompt_tokens=0,
                       caption_output_tokens=0, caption_frames=0, caption_tries=1, **_parts(parts))

    def _root_speed(self, item: dict) -> float | None:
        path = item.get("motion_path")
        if not path:
            return None
        from humove.schemas.motion import load_motion
        from humove.storage import open_url

        with open_url(path, "rb") as handle:
            motion = load_motion(handle.read())
        return root_speed(motion.transl, motion.valid, motion.fps)

    def _hint(self, item: dict) -> str | None:
        if not self.config.keyword_hint:
            return None
        keyword = item.get("keyword") or item.get("keyword_text")
        return f"the video was found by searching for '{keyword}'" if keyword else None

    def _hash_settings(self) -> dict:
        c = self.config
        return {**self.settings.model_dump(), "sample_fps": c.sample_fps, "max_frames": c.max_frames,
                "max_pixels": c.max_pixels}


def _parts(parts: CaptionParts) -> dict:
    return {"caption": parts.caption, "caption_appearance": parts.appearance, "caption_background": parts.background,
            "caption_action": parts.action, "caption_words": len(parts.caption.split())}
