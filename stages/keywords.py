"""`keywords`: expand each major category of the taxonomy into search keywords (a source stage).

One input per major category (`input_id` = name + a hash of its definition, so an edited category is a new
input and the others are kept); one record per keyword, with its category, fine category, backend, model and
prompt hash. Backends: `template` (offline: fine category × modifier), `vllm` (offline batch inference on a
GPU), `openai` (any OpenAI-compatible endpoint; base URL and key from environment variables), `transformers`
(small local models). A malformed answer is sent back once with a request to fix it; if the second answer is
malformed too, that category's input becomes an `error` (retried by the engine).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Literal

from pydantic import Field

from humove.language.clients import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_BASE_URL_ENV,
    GenerationSettings,
    make_chat_backend,
)
from humove.language.keywords import (
    Keyword,
    KeywordOutputError,
    keyword_messages,
    parse_keywords,
    prompt_hash,
    repair_messages,
    template_keywords,
)
from humove.language.taxonomy import BUILTIN_TAXONOMY, Category, load_taxonomy
from humove.schemas import keywords as keywords_schema
from humove.stage import MapStage, Reads, Resources, StageConfig, listing

TEMPLATE = "template"


class KeywordsConfig(StageConfig):
    backend: Literal["template", "vllm", "openai", "transformers"] = "vllm"
    model: str = Field("Qwen/Qwen2.5-7B-Instruct", description="LLM (hub id, local folder or served model name)")
    taxonomy: str = listing(BUILTIN_TAXONOMY, "taxonomy YAML (path/URL) or builtin:taxonomy")
    categories: list[str] | None = listing(None, "major categories to expand; None = all")
    keywords_per_category: int = Field(25, ge=1, le=500, description="the paper asks for 20–30")
    temperature: float = Field(0.0, ge=0.0)
    seed: int = 0
    max_tokens: int = Field(2048, ge=64)
    base_url_env: str = Field(DEFAULT_BASE_URL_ENV, description="openai: env var holding the base URL")
    api_key_env: str = Field(DEFAULT_API_KEY_ENV, description="openai: env var holding the API key")
    request_concurrency: int = Field(4, ge=1, description="openai: requests in flight")
    engine_args: dict[str, Any] = Field(default_factory=dict, description="vllm: LLM(...) arguments")
    device: str = Field("auto", description="transformers: 'auto' (a GPU when this worker can use one), 'cpu', "
                                            "'cuda[:i]'; a GPU it cannot use is an error, never a CPU run")


class KeywordsStage(MapStage):
    name = "keywords"
    version = "1"
    schema = keywords_schema.SCHEMA
    Config = KeywordsConfig
    resources = Resources(num_cpus=1, batch_size=16)
    description = "expand taxonomy categories into search keywords (LLM or template)"
    is_source: ClassVar[bool] = True

    config: KeywordsConfig

    @classmethod
    def reads(cls, config: KeywordsConfig) -> Reads:
        return Reads()  # a source: it lists the taxonomy's categories itself

    def list_inputs(self) -> list[dict]:
        taxonomy = load_taxonomy(self.config.taxonomy)
        names = [c.name for c in taxonomy.categories]
        wanted = self.config.categories or names
        unknown = [name for name in wanted if name not in names]
        if unknown:
            raise ValueError(f"keywords: categories {unknown} are not in taxonomy {self.config.taxonomy}; "
                             f"it has {names}")
        return [{"input_id": f"{c.name}#{c.fingerprint()}", "keyword_category": c.name}
                for c in taxonomy.categories if c.name in wanted]

    def setup(self) -> None:
        self.taxonomy = load_taxonomy(self.config.taxonomy)
        self.settings = GenerationSettings(temperature=self.config.temperature, seed=self.config.seed,
                                           max_tokens=self.config.max_tokens)
        self.chat = None
        if self.config.backend == "openai":
            self.chat = make_chat_backend("openai", self.config.model, self.settings,
                                          base_url_env=self.config.base_url_env, api_key_env=self.config.api_key_env,
                                          concurrency=self.config.request_concurrency)
        elif self.config.backend == "vllm":
            self.chat = make_chat_backend("vllm", self.config.model, self.settings, engine_args=self.config.engine_args)
        elif self.config.backend == "transformers":
            self.chat = make_chat_backend("transformers", self.config.model, self.settings,
                                          device=self.config.device)

    def process(self, item: dict) -> list[dict]:
        return self.process_batch([item])[0]

    def process_batch(self, items: list[dict]) -> list[list[dict] | BaseException]:
        categories = [self.taxonomy.category(item["keyword_category"]) for item in items]
        count = self.config.keywords_per_category
        if self.chat is None:
            return [self._records(c, template_keywords(c, self.taxonomy, count), TEMPLATE, "template", "")
                    for c in categories]
        prompts = [keyword_messages(c, count) for c in categories]
        conversations = list(prompts)
        answers = [r.text for r in self.chat.generate(conversations)]
        results: list[list[dict] | BaseException | None] = [None] * len(items)
        retry: list[int] = []
        for index, (category, answer) in enumerate(zip(categories, answers, strict=True)):
            try:
                results[index] = parse_keywords(answer, category, count)
            except KeywordOutputError as exc:
                results[index], conversations[index] = exc, repair_messages(conversations[index], answer, str(exc))
                retry.append(index)
        if retry:  # the one retry of malformed answers, batched
            for index, again in zip(retry, self.chat.generate([conversations[i] for i in retry]), strict=True):
                try:
                    results[index] = parse_keywords(again.text, categories[index], count)
                except KeywordOutputError as exc:
                    results[index] = KeywordOutputError(f"{exc} (after one retry)")
        out: list[list[dict] | BaseException] = []
        for index, category in enumerate(categories):
            found = results[index]
            if isinstance(found, BaseException):
                out.append(found)
                continue
            digest = prompt_hash(prompts[index], self.settings.model_dump())  # the prompt, not the repair turn
            out.append(self._records(category, found, self.config.backend, self.config.model, digest))
        return out

    def _records(self, category: Category, keywords: list[Keyword], backend: str, model: str,
                 digest: str) -> list[dict]:
        if not digest:  # template: the hash of what made the keywords (category, modifiers, count)
            digest = prompt_hash([], {"category": category.model_dump(), "modifiers": self.taxonomy.modifiers,
                                      "count": self.config.keywords_per_category})
        return [self.ok(keyword_id(category.name, k.text), backend=backend, keyword_text=k.text,
                        keyword_category=category.name, keyword_fine_category=k.fine_category, keyword_rank=k.rank,
                        keyword_model=model, keyword_prompt_hash=digest, keyword_seed=self.config.seed,
                        keyword_temperature=self.config.temperature)
                for k in keywords]


def keyword_id(category: str, text: str) -> str:
    return "k" + hashlib.sha256(f"{category}\n{text}".encode()).hexdigest()[:16]
