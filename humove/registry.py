"""Stage names → classes. Pipelines name built-in stages by name, or any stage class by `module:Class`."""

from __future__ import annotations

import importlib

from humove.stage import Stage

BUILTIN_STAGES = {
    "ingest": "humove.stages.ingest:IngestStage",
    "shots": "humove.stages.shots:ShotsStage",
    "shards": "humove.stages.shards:ShardsStage",
}


class UnknownStageError(ValueError):
    pass


def stage_ref(name_or_ref: str) -> str:
    return BUILTIN_STAGES.get(name_or_ref, name_or_ref)


def load_stage_class(name_or_ref: str) -> type[Stage]:
    ref = stage_ref(name_or_ref)
    if ":" not in ref:
        raise UnknownStageError(
            f"unknown stage {name_or_ref!r}: use one of {sorted(BUILTIN_STAGES)} or 'package.module:Class'"
        )
    module_name, class_name = ref.split(":", 1)
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise UnknownStageError(f"cannot load stage {name_or_ref!r} ({ref}): {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, Stage)):
        raise UnknownStageError(f"{ref} is not a humove Stage")
    return cls
