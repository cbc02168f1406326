"""Chat backends for text generation, one interface: `generate(conversations) -> list[ChatResult]`.

- `OpenAIChatBackend`: any OpenAI-compatible `/chat/completions` endpoint (`vllm serve`, a hosted API). The base
  URL and key are read from environment variables named in the config; their values are never stored (a base URL
  with credentials in it is refused: the key goes in its own variable).
- `VLLMChatBackend`: vLLM offline batch inference (`LLM.chat`), GPU; vllm is imported only when used.
- `TransformersChatBackend`: transformers `generate` for small local models (CPU or GPU).

All are deterministic by default: temperature 0 and a fixed seed.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from humove.devices import resolve_torch_device
from humove.redact import MASK, redact_text

DEFAULT_BASE_URL_ENV = "HUMOVE_LLM_BASE_URL"
DEFAULT_API_KEY_ENV = "HUMOVE_LLM_API_KEY"


class ChatBackendError(RuntimeError):
    """A backend cannot be built or a request failed for good; the message names the backend and why."""


class GenerationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    max_tokens: int = Field(2048, ge=1)


@dataclass(frozen=True)
class ChatResult:
    text: str
    prompt_tokens: int | None = None
    output_tokens: int | None = None


class OpenAIChatBackend:
    """POST `{base_url}/chat/completions`, several requests in flight, retries with backoff on 429 / 5xx /
    connection failures (honouring Retry-After)."""

    def __init__(self, model: str, settings: GenerationSettings, base_url_env: str = DEFAULT_BASE_URL_ENV,
                 api_key_env: str = DEFAULT_API_KEY_ENV, timeout_s: float = 120.0, max_retries: int = 4,
                 concurrency: int = 4, backoff_s: float = 1.0):
        base_url = os.environ.get(base_url_env)
        if not base_url:
            raise ChatBackendError(f"openai backend: set {base_url_env} to the endpoint's base URL "
                                   "(e.g. http://host:8000/v1)")
        if "@" in urllib.parse.urlsplit(base_url).netloc:  # urllib would quote the password in its errors
            raise ChatBackendError(f"openai backend: {base_url_env} holds credentials ({redact_text(base_url)}): "
                                   f"give the endpoint's key in {api_key_env} instead")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = os.environ.get(api_key_env)  # kept in memory only
        self.model, self.settings = model, settings
        self.timeout_s, self.max_retries, self.backoff_s = timeout_s, max_retries, backoff_s
        self.concurrency = concurrency

    def generate(self, conversations: list[list[dict]]) -> list[ChatResult]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(conversations)))) as pool:
            return list(pool.map(self._complete, conversations))

    def request_body(self, messages: list[dict]) -> dict:
        return {"model": self.model, "messages": messages, "temperature": self.settings.temperature,
                "seed": self.settings.seed, "max_tokens": self.settings.max_tokens}

    def _complete(self, messages: list[dict]) -> ChatResult:
        body = json.dumps(self.request_body(messages)).encode()
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return _parse_completion(json.loads(response.read()))
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}: {exc.read()[:200]!r}"
                if self._api_key:  # a server or proxy may echo the request's headers in its error page
                    last = last.replace(self._api_key, MASK)
                if exc.code != 429 and exc.code < 500:
                    raise ChatBackendError(f"openai backend: {self.url} answered {last}") from exc
                wait = _retry_after(exc.headers.get("Retry-After")) or self.backoff_s * 2 ** attempt
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                wait = self.backoff_s * 2 ** attempt
            if attempt < self.max_retries:
                time.sleep(wait)
        raise ChatBackendError(f"openai backend: {self.url} failed {self.max_retries + 1} times, last: {last}")


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to backoff


def _parse_completion(payload: dict) -> ChatResult:
    try:
        text = payload["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as exc:
        raise ChatBackendError(f"openai backend: not a chat completion: {str(payload)[:200]}") from exc
    usage = payload.get("usage") or {}
    return ChatResult(text=text, prompt_tokens=usage.get("prompt_tokens"),
                      output_tokens=usage.get("completion_tokens"))


class VLLMChatBackend:
    """vLLM offline batch inference: all conversations of a batch go to the engine at once."""

    def __init__(self, model: str, settings: GenerationSettings, engine_args: dict | None = None):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise ChatBackendError("vllm backend: vllm is not installed here; install the `gpu` extra in a GPU "
                                   "environment (see README), or use the openai backend against `vllm serve`") from exc
        self.settings = settings
        self.llm = LLM(model=model, seed=settings.seed, **(engine_args or {}))
        self.sampling = SamplingParams(temperature=settings.temperature, seed=settings.seed,
                                       max_tokens=settings.max_tokens)

    def generate(self, conversations: list[list[dict]]) -> list[ChatResult]:
        outputs = self.llm.chat(conversations, self.sampling, use_tqdm=False)
        return [ChatResult(text=out.outputs[0].text, prompt_tokens=len(out.prompt_token_ids or []),
                           output_tokens=len(out.outputs[0].token_ids)) for out in outputs]


class TransformersChatBackend:
    """transformers `generate` (greedy at temperature 0), batched with left padding. `model` is a local folder
    or hub id; `tokenizer` and `loaded_model` may be passed in directly (tests build tiny ones in code).
    `device`: "auto" (a GPU when this process can use one), "cpu" or "cuda[:i]"; a GPU asked for or handed to this
    process that torch cannot use is an error before anything loads (`humove.devices.resolve_torch_device`)."""

    def __init__(self, model: str, settings: GenerationSettings, device: str = "auto",
                 tokenizer=None, loaded_model=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        self.device = resolve_torch_device(device, "transformers chat backend")
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = loaded_model or AutoModelForCausalLM.from_pretrained(
            model, dtype=torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.model.to(self.device).eval()

    def generate(self, conversations: list[list[dict]]) -> list[ChatResult]:
        import torch

        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        sampling = self.settings.temperature > 0
        torch.manual_seed(self.settings.seed)
        kwargs = {"do_sample": sampling, "max_new_tokens": self.settings.max_tokens,
                  "pad_token_id": self.tokenizer.pad_token_id}
        if sampling:
            kwargs["temperature"] = self.settings.temperature
        with torch.no_grad():
            output = self.model.generate(**batch, **kwargs)
        prompt_len = batch["input_ids"].shape[1]
        results = []
        for row, mask in zip(output, batch["attention_mask"], strict=True):
            new = row[prompt_len:]
            if self.tokenizer.eos_token_id is not None:
                ends = (new == self.tokenizer.eos_token_id).nonzero()
                new = new[: int(ends[0]) + 1] if len(ends) else new
            results.append(ChatResult(text=self.tokenizer.decode(new, skip_special_tokens=True),
                                      prompt_tokens=int(mask.sum()), output_tokens=int(new.numel())))
        return results


def make_chat_backend(backend: str, model: str, settings: GenerationSettings, **options):
    if backend == "openai":
        return OpenAIChatBackend(model, settings, **options)
    if backend == "vllm":
        return VLLMChatBackend(model, settings, **options)
    if backend == "transformers":
        return TransformersChatBackend(model, settings, **options)
    raise ChatBackendError(f"unknown chat backend {backend!r}: use openai, vllm or transformers")
