"""Chat backends for text generation, one interface: `generate(conversations) -> list[ChatResult]`.

- `OpenAIChatBackend`: any OpenAI-compatible `/chat/completions` endpoint (`vllm serve`, a hosted API). The base
  URL and key are read from environment variables named in the config; their values are never stored (a base URL
  with credentials in it is refused: the key goes in its own variable).
- `VLLMChatBackend`: vLLM offline batch inference (`LLM.chat`), GPU; vllm is imported only when used.
- `TransformersChatBackend`: transformers `generate` for small local models (CPU or GPU).

All are deterministic by default: temperature 0 and a fixed seed.
"""

from __future__ import annotations

import os
import urllib.parse
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
    """`{base_url}/chat/completions` through the OpenAI SDK, several requests in flight. The SDK retries 408, 409,
    429, 5xx, timeouts and connection failures `max_retries` times with exponential backoff, honouring a
    Retry-After of up to two minutes (seconds or an HTTP date; a longer one is not waited for). Only the two
    variables named here configure it: the SDK's own `OPENAI_*` key, base URL, organisation, project and custom
    headers are not used, and without a key no Authorization header is sent (`vllm serve` needs none)."""

    def __init__(self, model: str, settings: GenerationSettings, base_url_env: str = DEFAULT_BASE_URL_ENV,
                 api_key_env: str = DEFAULT_API_KEY_ENV, timeout_s: float = 120.0, max_retries: int = 4,
                 concurrency: int = 4):
        base_url = os.environ.get(base_url_env)
        if not base_url:
            raise ChatBackendError(f"openai backend: set {base_url_env} to the endpoint's base URL "
                                   "(e.g. http://host:8000/v1)")
        if "@" in urllib.parse.urlsplit(base_url).netloc:  # an HTTP client may quote the password in its errors
            raise ChatBackendError(f"openai backend: {base_url_env} holds credentials ({redact_text(base_url)}): "
                                   f"give the endpoint's key in {api_key_env} instead")
        try:
            import openai
        except ImportError as exc:
            raise ChatBackendError("openai backend: the openai package is not installed here; install the `llm` "
                                   "extra (pip install -e '.[llm]')") from exc
        self.url = base_url.rstrip("/") + "/chat/completions"
        self._api_key = os.environ.get(api_key_env)  # kept in memory only
        # The SDK's OPENAI_* variables are meant for OpenAI, not this endpoint: the key and base URL are passed,
        # and the headers they would add (organisation, project, OPENAI_CUSTOM_HEADERS, whose Authorization would
        # replace ours) are dropped by name. Without a key the SDK still wants one: every request drops the header.
        ambient = [line.partition(":")[0].strip()
                   for line in os.environ.get("OPENAI_CUSTOM_HEADERS", "").splitlines() if ":" in line]
        headers = {name: openai.omit for name in ("OpenAI-Organization", "OpenAI-Project", *ambient)}
        headers["Authorization"] = f"Bearer {self._api_key}" if self._api_key else openai.omit
        self._client = openai.OpenAI(base_url=base_url, api_key=self._api_key or "unused", timeout=timeout_s,
                                     max_retries=max_retries, default_headers=headers)
        self._request_headers = {} if self._api_key else {"Authorization": openai.omit}
        self.model, self.settings = model, settings
        self.max_retries, self.concurrency = max_retries, concurrency

    def generate(self, conversations: list[list[dict]]) -> list[ChatResult]:
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(conversations)))) as pool:
            return list(pool.map(self._complete, conversations))

    def _complete(self, messages: list[dict]) -> ChatResult:
        import openai

        try:
            completion = self._client.chat.completions.create(
                model=self.model, messages=messages, temperature=self.settings.temperature,
                seed=self.settings.seed, max_tokens=self.settings.max_tokens, extra_headers=self._request_headers)
        # `from None`: the SDK's exception quotes the error page, which may echo the key; ours masks it.
        except openai.APIStatusError as exc:
            retried = f" (retried up to {self.max_retries} times)" if exc.status_code in _RETRIED_STATUSES else ""
            raise ChatBackendError(f"openai backend: {self.url} answered HTTP {exc.status_code}{retried}: "
                                   f"{self._masked(exc.response.text[:200])!r}") from None
        except openai.APIConnectionError as exc:  # timeouts included
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            raise ChatBackendError(f"openai backend: {self.url} failed {self.max_retries + 1} times, last: "
                                   f"{self._masked(exc.message + cause)}") from None
        return _parse_completion(completion, self.url)

    def _masked(self, text: str) -> str:
        """A server or proxy may echo the request's headers in its error page."""
        return text.replace(self._api_key, MASK) if self._api_key else text


_RETRIED_STATUSES = {408, 409, 429} | set(range(500, 600))  # what the SDK retries


def _parse_completion(completion, url: str) -> ChatResult:
    """A `ChatCompletion` as a `ChatResult`. The SDK does not validate answers: a 200 that is not JSON comes back
    as its text, and a JSON object without `choices` as a model missing that field."""
    try:
        text = completion.choices[0].message.content or ""
    except (AttributeError, IndexError, KeyError, TypeError):
        raise ChatBackendError(f"openai backend: {url} did not answer a chat completion: "
                               f"{str(completion)[:200]!r}") from None
    usage = getattr(completion, "usage", None)
    return ChatResult(text=text, prompt_tokens=getattr(usage, "prompt_tokens", None),
                      output_tokens=getattr(usage, "completion_tokens", None))


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
