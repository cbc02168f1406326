"""The motion taxonomy (paper Table 2) as an editable YAML: major categories, their fine categories, aliases
that identify a fine category inside a keyword, and the template backend's modifiers."""

from __future__ import annotations

import hashlib
import json
import re
from importlib import resources

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from humove.storage import open_url

BUILTIN_TAXONOMY = "builtin:taxonomy"


class TaxonomyError(ValueError):
    """The taxonomy file is missing or malformed; the message names the file and the problem."""


class Category(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    fine: list[str] = Field(min_length=1)
    aliases: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _aliases_name_fine_categories(self):
        unknown = sorted(set(self.aliases) - set(self.fine))
        if unknown:
            raise ValueError(f"category {self.name!r}: aliases for unknown fine categories {unknown}")
        return self

    def fingerprint(self) -> str:
        """Changes when the category's definition changes (its keywords must then be made again)."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def find_fine(self, name: str | None) -> str | None:
        """The fine category called `name` (case- and space-insensitive), else None."""
        if not name:
            return None
        key = _key(name)
        return next((fine for fine in self.fine if _key(fine) == key), None)

    def match_fine(self, keyword: str) -> str | None:
        """The fine category named in `keyword` (whole words): a fine category's own name before an alias, then
        the earliest in the text, then the longest."""
        text = f" {_key(keyword)} "
        best, best_rank = None, None
        for fine in self.fine:
            for is_alias, term in [(False, fine), *((True, a) for a in self.aliases.get(fine, []))]:
                term_key = _key(term)
                position = text.find(f" {term_key} ") if term_key else -1
                if position < 0:
                    continue
                rank = (is_alias, position, -len(term_key))
                if best_rank is None or rank < best_rank:
                    best, best_rank = fine, rank
        return best


class Taxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    modifiers: list[str] = Field(default_factory=list)
    categories: list[Category] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [c.name for c in self.categories]
        if len(set(names)) != len(names):
            raise ValueError(f"category names repeat: {names}")
        return self

    def category(self, name: str) -> Category:
        for category in self.categories:
            if category.name == name:
                return category
        raise KeyError(f"no category {name!r} in the taxonomy; categories: {[c.name for c in self.categories]}")


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z&+]+", " ", text.lower()).split())


def load_taxonomy(source: str = BUILTIN_TAXONOMY) -> Taxonomy:
    """Read a taxonomy YAML (a path or URL, or `builtin:taxonomy` = `humove/pipelines/taxonomy.yaml`)."""
    try:
        if source == BUILTIN_TAXONOMY:
            text = resources.files("humove.pipelines").joinpath("taxonomy.yaml").read_text()
        else:
            with open_url(source, "rt") as handle:
                text = handle.read()
    except FileNotFoundError as exc:
        raise TaxonomyError(f"taxonomy {source} does not exist") from exc
    try:
        return Taxonomy(**(yaml.safe_load(text) or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(document)"
        raise TaxonomyError(f"taxonomy {source} is malformed: {where}: {first['msg']}") from exc
    except (yaml.YAMLError, TypeError) as exc:
        raise TaxonomyError(f"taxonomy {source} is malformed: {exc}") from exc
