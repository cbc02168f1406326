"""Caption backends: `generate(requests) -> list[Generated]`, one request per clip (frames + chat messages).

- `TransformersCaptioner`: Qwen2.5-VL / Qwen2-VL (any `AutoModelForImageTextToText` with a video processor),
  batched `generate`, greedy at temperature 0.
- `VLLMCaptioner`: the same model through vLLM offline inference; all requests of a call go to the engine at
  once, which schedules them with continuous batching. vllm is imported only when this backend is built.
Both build the prompt text with the model's own processor and chat template (`prompt_text`), so what vLLM
receives is what the transformers backend (tested here with a tiny random-weight model) tokenises. Both hand the
frames with their timing (`video_metadata`): the frames were sampled by the stage, and Qwen2.5-VL spaces the video's
temporal position ids by the real rate (`second_per_grid_ts = temporal_patch_size / fps`); without it the processor
assumes 24 fps and the frames of a 2 fps clip collapse onto a few positions, losing the order of the action.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from humove.devices import resolve_torch_device
from humove.language.clients import GenerationSettings


class CaptionBackendError(RuntimeError):
    """A caption backend cannot be built; the message says why and what to install or configure."""


@dataclass
class VideoRequest:
    frames: np.ndarray        # (T, H, W, 3) uint8 RGB, T even, H and W multiples of 28
    fps: float                # the rate the frames were sampled at (frames per second of clip time)
    messages: list[dict]      # chat messages with one {"type": "video"} entry

    def __post_init__(self):
        if not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"a video request needs a positive frame rate, got {self.fps!r}")


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int
    output_tokens: int


def prompt_text(processor, messages: list[dict]) -> str:
    """The model's chat template applied to the messages, ending with the assistant turn's start."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def video_metadata(request: VideoRequest) -> dict:
    """The timing of the request's frames, in the fields of `transformers.video_utils.VideoMetadata`: the frames are
    the whole video, `T` frames at `request.fps`. Qwen2.5-VL's processor reads the rate as
    `len(frames_indices) / total_num_frames * fps` and sets `second_per_grid_ts = temporal_patch_size / fps`."""
    count = len(request.frames)
    return {"total_num_frames": count, "fps": float(request.fps), "duration": count / request.fps,
            "frames_indices": list(range(count))}


def vllm_inputs(processor, requests: list[VideoRequest]) -> list[dict]:
    """vLLM prompts: the chat-template text plus the video as a `(frames, metadata)` pair.

    As vLLM 0.33 reads it (vllm/model_executor/models/qwen2_5_vl.py: `Qwen2_5_VLProcessingInfo.get_data_parser`
    sets `video_needs_metadata=True`, so vllm/multimodal/parse.py `_parse_video_data` refuses a bare frame array;
    `Qwen2_5_VLMultiModalProcessor._get_hf_mm_inputs` passes each metadata dict, less its `do_sample_frames` key, to
    the HF processor as `video_metadata`, which gives `second_per_grid_ts`). `do_sample_frames: False` in the
    metadata is vLLM's per-video flag for frames sampled already (its own loader and Qwen3-VL read it); as a
    processor kwarg it keeps HF from sampling them again, as in the transformers backend."""
    return [{"prompt": prompt_text(processor, r.messages),
             "multi_modal_data": {"video": (r.frames, {**video_metadata(r), "do_sample_frames": False})},
             "mm_processor_kwargs": {"do_sample_frames": False}} for r in requests]


class TransformersCaptioner:
    """`model` is a local folder or hub id; `processor` and `loaded_model` may be given directly (tests).
    `device`: "auto" (a GPU when this process can use one), "cpu" or "cuda[:i]"; a GPU asked for or handed to this
    process that torch cannot use is an error before anything loads (`humove.devices.resolve_torch_device`)."""

    def __init__(self, model: str, settings: GenerationSettings, device: str = "auto",
                 processor=None, loaded_model=None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.settings = settings
        self.device = resolve_torch_device(device, "caption (transformers)")
        self.processor = processor or AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = loaded_model or AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
        self.model.to(self.device).eval()

    def model_inputs(self, requests: list[VideoRequest]):
        from transformers.video_utils import VideoMetadata

        texts = [prompt_text(self.processor, r.messages) for r in requests]
        return self.processor(text=texts, videos=[r.frames for r in requests],
                              video_metadata=[VideoMetadata(**video_metadata(r)) for r in requests],
                              padding=True, return_tensors="pt", videos_kwargs={"do_sample_frames": False}
                              ).to(self.device)

    def generate(self, requests: list[VideoRequest]) -> list[Generated]:
        import torch

        inputs = self.model_inputs(requests)
        sampling = self.settings.temperature > 0
        kwargs = {"do_sample": sampling, "max_new_tokens": self.settings.max_tokens,
                  "pad_token_id": self.processor.tokenizer.pad_token_id}
        if sampling:
            kwargs["temperature"] = self.settings.temperature
        torch.manual_seed(self.settings.seed)
        with torch.no_grad():
            output = self.model.generate(**inputs, **kwargs)
        prompt_len = inputs["input_ids"].shape[1]
        eos = self.processor.tokenizer.eos_token_id
        results = []
        for row, mask in zip(output, inputs["attention_mask"], strict=True):
            new = row[prompt_len:]
            ends = (new == eos).nonzero() if eos is not None else []
            new = new[: int(ends[0]) + 1] if len(ends) else new
            results.append(Generated(text=self.processor.tokenizer.decode(new, skip_special_tokens=True),
                                     prompt_tokens=int(mask.sum()), output_tokens=int(new.numel())))
        return results


class VLLMCaptioner:
    def __init__(self, model: str, settings: GenerationSettings, engine_args: dict | None = None, processor=None):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise CaptionBackendError("vllm caption backend: vllm is not installed here; on a GPU node install the "
                                      "`gpu` extra in its own environment (see README)") from exc
        from transformers import AutoProcessor

        self.processor = processor or AutoProcessor.from_pretrained(model)
        args = {"limit_mm_per_prompt": {"video": 1}, **(engine_args or {})}
        self.llm = LLM(model=model, seed=settings.seed, **args)
        self.sampling = SamplingParams(temperature=settings.temperature, seed=settings.seed,
                                       max_tokens=settings.max_tokens)

    def generate(self, requests: list[VideoRequest]) -> list[Generated]:
        outputs = self.llm.generate(vllm_inputs(self.processor, requests), self.sampling, use_tqdm=False)
        return [Generated(text=out.outputs[0].text, prompt_tokens=len(out.prompt_token_ids or []),
                          output_tokens=len(out.outputs[0].token_ids)) for out in outputs]


def make_captioner(backend: str, model: str, settings: GenerationSettings, engine_args: dict | None = None,
                   device: str = "auto"):
    if backend == "transformers":
        return TransformersCaptioner(model, settings, device)
    if backend == "vllm":
        return VLLMCaptioner(model, settings, engine_args)
    raise CaptionBackendError(f"unknown caption backend {backend!r}: use vllm, transformers or template")
