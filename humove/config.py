"""Pipeline definitions: YAML → validated pydantic models, with `--set stage.key=value` overrides.

    name: demo
    run: {max_attempts: 3}
    stages:
      - stage: ingest                 # built-in name, or "package.module:Class"
        config: {source: "builtin:demo-videos", min_duration_s: 1.0}
        resources: {batch_size: 2}
      - stage: shots
      - stage: shards
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from humove.registry import load_stage_class
from humove.stage import Resources, Stage, StageConfig


class ConfigError(ValueError):
    """A pipeline file or override is invalid; the message names the stage and field."""


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1, description="tries per item before it is quarantined")
    executor: Literal["ray", "local"] = "ray"
    ray_address: str | None = None


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str
    config: dict[str, Any] = Field(default_factory=dict)
    resources: dict[str, Any] = Field(default_factory=dict)


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    run: RunOptions = Field(default_factory=RunOptions)
    stages: list[StageSpec]


class ResolvedStage:
    """A pipeline stage with its class, validated config and effective resources."""

    def __init__(self, spec: StageSpec):
        self.cls: type[Stage] = load_stage_class(spec.stage)
        self.ref = f"{self.cls.__module__}:{self.cls.__qualname__}"
        self.name = self.cls.name
        try:
            self.config: StageConfig = self.cls.Config(**spec.config)
            self.resources = Resources(**{**self.cls.resources.model_dump(), **spec.resources})
        except ValidationError as exc:
            raise ConfigError(f"stage {self.name!r}: invalid config:\n{exc}") from exc


def _apply_override(raw: dict, override: str) -> None:
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise ConfigError(f"override {override!r}: expected STAGE.KEY=VALUE")
    path, value = override.split("=", 1)
    stage_name, key = path.split(".", 1)
    for spec in raw.get("stages", []):
        if spec.get("stage") == stage_name or load_stage_class(str(spec.get("stage"))).name == stage_name:
            section, _, field = key.rpartition(".")
            target = spec.setdefault(section or "config", {})
            target[field] = yaml.safe_load(value)
            return
    raise ConfigError(f"override {override!r}: no stage {stage_name!r} in the pipeline")


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> tuple[PipelineConfig, list[ResolvedStage]]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"pipeline file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    for override in overrides or []:
        _apply_override(raw, override)
    try:
        pipeline = PipelineConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid pipeline:\n{exc}") from exc
    stages = [ResolvedStage(spec) for spec in pipeline.stages]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: a stage appears twice: {names}")
    if not stages:
        raise ConfigError(f"{path}: no stages")
    return pipeline, stages
