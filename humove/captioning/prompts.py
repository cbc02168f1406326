"""The caption prompt and its answer: the paper's three parts (the subject's appearance and attire, the
background, the action) plus the full caption, as JSON validated with pydantic."""

from __future__ import annotations

import hashlib
import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

CAPTION_INSTRUCTION = (
    "Describe this video of a person for a text-to-video dataset. Write in English, in the present tense, only "
    "what is visible. Give three parts: (1) appearance: the main person's appearance and attire; "
    "(2) background: the scene and its context; (3) action: a precise description of the movement being "
    "performed, in order, including body parts and direction. Then write caption: one fluent paragraph that "
    "combines the three parts.\n"
    'Answer with JSON only: {"appearance": "...", "background": "...", "action": "...", "caption": "..."}'
)
MAX_PART_CHARS = 2000
MAX_CAPTION_CHARS = 4000


class CaptionOutputError(ValueError):
    """A model answer is not the JSON object asked for; the message says what is wrong."""


class CaptionParts(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    appearance: str = Field(min_length=3, max_length=MAX_PART_CHARS)
    background: str = Field(min_length=3, max_length=MAX_PART_CHARS)
    action: str = Field(min_length=3, max_length=MAX_PART_CHARS)
    caption: str = Field(min_length=10, max_length=MAX_CAPTION_CHARS)

    @field_validator("appearance", "background", "action", "caption")
    @classmethod
    def _one_paragraph(cls, value: str) -> str:
        return " ".join(value.split())


def caption_messages(hint: str | None = None) -> list[dict]:
    """The chat messages for one clip: the video, then the instruction (and an optional hint, e.g. the keyword
    that found the video, which a captioner may use but must not contradict what it sees)."""
    text = CAPTION_INSTRUCTION if not hint else f"{CAPTION_INSTRUCTION}\nContext (may help): {hint}"
    return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]


def repair_messages(messages: list[dict], answer: str, problem: str) -> list[dict]:
    """The conversation with the malformed answer and a request to fix it: the one retry."""
    return [*messages, {"role": "assistant", "content": [{"type": "text", "text": answer}]},
            {"role": "user", "content": [{"type": "text", "text": f"That answer was not usable ({problem}). Answer "
                                                               "again with the JSON object only."}]}]


def prompt_hash(messages: list[dict], settings: dict) -> str:
    text = json.dumps({"messages": messages, **settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_caption(answer: str) -> CaptionParts:
    """The validated parts from a model answer: the first JSON object in it (code fences allowed). A missing
    `caption` is composed from the three parts. Raises CaptionOutputError."""
    text = re.sub(r"```(?:json)?", "", answer)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise CaptionOutputError(f"no JSON object in the answer: {answer[:160]!r}")
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError as exc:
        raise CaptionOutputError(f"invalid JSON ({exc.msg} at {exc.pos}): {answer[:160]!r}") from exc
    if not isinstance(data, dict):
        raise CaptionOutputError(f"the JSON is a {type(data).__name__}, not an object")
    if not data.get("caption") and all(isinstance(data.get(k), str) for k in ("appearance", "background", "action")):
        data["caption"] = compose_caption(data["appearance"], data["background"], data["action"])
    try:
        return CaptionParts.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CaptionOutputError(f"field {'.'.join(map(str, first['loc']))}: {first['msg']}") from exc


def compose_caption(appearance: str, background: str, action: str) -> str:
    parts = [p.strip().rstrip(".") for p in (appearance, action, background) if p and p.strip()]
    return ". ".join(p[0].upper() + p[1:] for p in parts) + "."
