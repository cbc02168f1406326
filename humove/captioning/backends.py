"""Caption backends: `generate(requests) -> list[Generated]`, one request per clip (frames + chat messages).

- `TransformersCaptioner`: Qwen2.5-VL / Qwen2-VL (any `AutoModelForImageTextToText` with a video processor),
  batched `generate`, greedy at temperature 0.
- `VLLMCaptioner`: the same model through vLLM offline inference; all requests of a call go to the engine at
  once, which schedules them with continuous batching. vllm is imported only when this backend is built.
Both build the prompt text with the model's own processor and chat template (`prompt_text`), so what vLLM
receives is what the transformers backend (tested here with a tiny random-weight model) tokenises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from humove.language.clients import GenerationSettings


class CaptionBackendError(RuntimeError):
    """A caption backend cannot be built; the message says why and what to install or configure."""


@dataclass
class VideoRequest:
    frames: np.ndarray        # (T, H, W, 3) uint8 RGB, T even, H and W multiples of 28
    fps: float                # the rate the frames represent
    messages: list[dict]      # chat messages with one {"type": "video"} entry


@dataclass(frozen=True)
class Generated:
    text: str
    prompt_tokens: int
    output_tokens: int


def prompt_text(processor, messages: list[dict]) -> str:
    """The model's chat template applied to the messages, ending with the assistant turn's start."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def vllm_inputs(processor, requests: list[VideoRequest]) -> list[dict]:
    """vLLM prompts: the chat-template text plus the frames as the video input."""
    return [{"prompt": prompt_text(processor, r.messages), "multi_modal_data": {"video": r.frames},
             "mm_processor_kwargs": {"fps": r.fps}} for r in requests]


class TransformersCaptioner:
    """`model` is a local folder or hub id; `processor` and `loaded_model` may be given directly (tests)."""

    def __init__(self, model: str, settings: GenerationSettings, device: str | None = None,
                 processor=None, loaded_model=None):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.settings = settings
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = processor or AutoProcessor.from_pretrained(model)
        self.processor.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = loaded_model or AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
        self.model.to(self.device).eval()

    def model_inputs(self, requests: list[VideoRequest]):
        texts = [prompt_text(self.processor, r.messages) for r in requests]
        return self.processor(text=texts, videos=[r.frames for r in requests], padding=True, return_tensors="pt",
                              videos_kwargs={"do_sample_frames": False}).to(self.device)

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


def make_captioner(backend: str, model: str, settings: GenerationSettings, engine_args: dict | None = None):
    if backend == "transformers":
        return TransformersCaptioner(model, settings)
    if backend == "vllm":
        return VLLMCaptioner(model, settings, engine_args)
    raise CaptionBackendError(f"unknown caption backend {backend!r}: use vllm, transformers or template")
