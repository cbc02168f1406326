"""The paper's keyword prompt (Listing 1), parsing and validating the answer, normalising and de-duplicating
keywords, and the offline template generator (fine category × modifier).

The prompt keeps Listing 1's wording and example; it asks about one major category per request (so requests
batch and fail independently), names that category's fine categories, and asks for JSON so the answer can be
validated. The paper's plain bullet-list answer is accepted too (the fine category is then read from the
keyword's words via the taxonomy's aliases).
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from humove.language.taxonomy import Category, Taxonomy

SYSTEM_PROMPT = (
    "You are a data sourcing expert for computer vision research. Your task is to expand high-level categories "
    "of human motion into specific, diverse, and fine-grained search keywords suitable for video platforms."
)
_EXAMPLE = (
    "Here is an example of the desired input-output format:\n"
    "**Input:**\n"
    "Major Category: Combat Sports\n"
    "**Desired Output Keywords:**\n"
    "- boxing training drills 4k\n"
    "- MMA sparring session slow motion\n"
    "- cinematic Taekwondo high kick\n"
    "- Judo throw tutorial\n"
    "- female wrestler practice highlights\n"
    "- Wushu performance competition"
)
MAX_KEYWORD_CHARS = 120


class KeywordOutputError(ValueError):
    """The model's answer holds no usable keyword; the message says what was wrong."""


@dataclass(frozen=True)
class Keyword:
    text: str                  # normalised
    fine_category: str | None
    rank: int                  # 0-based position among the kept keywords of the category


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    keyword: str = Field(min_length=1)
    fine_category: str | None = None


def keyword_messages(category: Category, count: int) -> list[dict]:
    """Chat messages asking for `count` keywords of one major category."""
    user = (
        f"For each major category provided, generate a list of {count} search terms.\n"
        f"{_EXAMPLE}\n"
        "Now, please generate keywords for the following list of major categories:\n"
        f"- {category.name}\n\n"
        f"Its fine-grained categories are: {', '.join(category.fine)}. Cover all of them.\n"
        'Answer with JSON only, in this form: {"keywords": [{"keyword": "...", "fine_category": "..."}]}, '
        "where fine_category is one of the fine-grained categories above."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def repair_messages(messages: list[dict], answer: str, problem: str) -> list[dict]:
    """The conversation again, with the malformed answer and a request to fix it (the one retry)."""
    return [*messages, {"role": "assistant", "content": answer},
            {"role": "user", "content": f"That answer could not be used ({problem}). Answer again with the JSON "
                                        "object only, no other text."}]


def prompt_hash(messages: list[dict], extra: dict | None = None) -> str:
    """sha256[:16] of the exact messages (and generation settings in `extra`)."""
    text = json.dumps({"messages": messages, **(extra or {})}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def normalise_keyword(text: str) -> str:
    """NFKC, bullets / numbering / quotes stripped, whitespace collapsed, lower case."""
    text = unicodedata.normalize("NFKC", text).strip()
    text = re.sub(r"^\s*(?:[-*•·]+|\d+[.)]|\(\d+\))\s*", "", text)
    text = text.strip().strip("\"'`“”‘’").strip()
    text = re.sub(r"\*\*|__", "", text)
    return " ".join(text.split()).lower()


def parse_keywords(answer: str, category: Category, count: int) -> list[Keyword]:
    """Validated, normalised, de-duplicated keywords from a model answer (JSON, or the paper's bullet list),
    at most `count`. Raises KeywordOutputError when none is usable."""
    entries = _json_entries(answer)
    if entries is None:
        entries = _bullet_entries(answer)
    if not entries:
        raise KeywordOutputError(f"category {category.name!r}: the answer holds neither the JSON object nor a "
                                 f"bullet list of keywords: {answer[:200]!r}")
    kept: list[Keyword] = []
    seen: set[str] = set()
    for entry in entries:
        text = normalise_keyword(entry.keyword)
        if not text or len(text) > MAX_KEYWORD_CHARS or text in seen:
            continue
        fine = category.find_fine(entry.fine_category) or category.match_fine(text)
        seen.add(text)
        kept.append(Keyword(text=text, fine_category=fine, rank=len(kept)))
        if len(kept) == count:
            break
    if not kept:
        raise KeywordOutputError(f"category {category.name!r}: no usable keyword in the answer: {answer[:200]!r}")
    return kept


def _json_entries(answer: str) -> list[_Entry] | None:
    """The entries of the first JSON object in the answer (code fences allowed), or None if there is none."""
    text = re.sub(r"```(?:json)?", "", answer)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("keywords"), list):
        return None
    entries = []
    for raw in data["keywords"]:  # a bad entry is skipped, not the whole answer
        try:
            entries.append(_Entry.model_validate({"keyword": raw} if isinstance(raw, str) else raw))
        except ValidationError:
            continue
    return entries


def _bullet_entries(answer: str) -> list[_Entry]:
    lines = [line for line in answer.splitlines() if re.match(r"^\s*(?:[-*•]|\d+[.)])\s+\S", line)]
    return [_Entry(keyword=line) for line in lines if normalise_keyword(line)]


def template_keywords(category: Category, taxonomy: Taxonomy, count: int) -> list[Keyword]:
    """Offline keywords: each fine category with each modifier, round-robin over the fine categories (so all are
    covered first), the bare fine category name first. Deterministic."""
    modifiers = ["", *taxonomy.modifiers]
    kept: list[Keyword] = []
    seen: set[str] = set()
    for modifier in modifiers:
        for fine in category.fine:
            text = normalise_keyword(f"{fine} {modifier}")
            if text in seen:
                continue
            seen.add(text)
            kept.append(Keyword(text=text, fine_category=fine, rank=len(kept)))
            if len(kept) == count:
                return kept
    return kept
