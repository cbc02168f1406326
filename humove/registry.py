"""Stage names → classes. Pipelines name built-in stages by name, or any stage class by `module:Class`."""

from __future__ import annotations

import importlib

from humove.stage import Stage

BUILTIN_STAGES = {
    "keywords": "humove.stages.keywords:KeywordsStage",
    "download": "humove.stages.download:DownloadStage",
    "ingest": "humove.stages.ingest:IngestStage",
    "shots": "humove.stages.shots:ShotsStage",
    "aesthetic": "humove.stages.aesthetic:AestheticStage",
    "person": "humove.stages.person:PersonStage",
    "pose": "humove.stages.pose:PoseStage",
    "smpl": "humove.stages.smpl:SmplStage",
    "smooth": "humove.stages.smooth:SmoothStage",
    "caption": "humove.stages.caption:CaptionStage",
    "pack": "humove.stages.pack:PackStage",
    "shards": "humove.stages.shards:ShardsStage",
}


class UnknownStageError(ValueError):
    pass


def builtin_schema(name: str):
    """A built-in stage's record schema, from its schema module (`humove.schemas.<name>`): no stage code, no model
    library imported."""
    return importlib.import_module(f"humove.schemas.{name}").SCHEMA


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
