"""Pipeline definitions: YAML → validated pydantic models, with `--set stage.key=value` overrides.

    name: demo
    run: {max_attempts: 3}
    stages:
      - stage: ingest                 # built-in name, or "package.module:Class"
        config: {source: "builtin:demo-videos", min_duration_s: 1.0}
        resources: {batch_size: 2}
      - stage: shots
      - stage: pack                 # each clip's dataset sample, in the workers
      - stage: shards

A pipeline file may extend another one and say only what differs (an overlay):

    extends: humove.yaml              # a path relative to this file, or a built-in pipeline (pipelines/)
    name: humove-small                # optional: the base's name, description and run options stay otherwise
    run: {executor: local, env: {HUMOVE_SMPL_DIR: /models/smpl}}   # merged key by key
    remove: [keywords, download]      # drop stages of the base
    stages:
      - stage: person                 # a stage of the base, by name: config and resources merged into it
        config: {device: cpu}         # (nested dicts such as engine_args key by key; lists and values replaced)
        resources: {num_gpus: 0}
      - stage: my_pkg.filters:Blur    # a new stage says where it goes: `after: STAGE` or `before: STAGE`
        after: shots

A stage named in `stages` that is not in the base is an error, as is a cycle of `extends`. The base may itself
extend another file. `--from STAGE` then leaves out the stages before STAGE, and `--set` overrides apply last.
A value the run would not use is an error, never silently dropped (`_check_every_value_is_used`).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from humove.redact import redact_value
from humove.registry import load_stage_class
from humove.stage import MapStage, Resources, Stage, StageConfig


class ConfigError(ValueError):
    """A pipeline file or override is invalid; the message (one line) names the stage and field."""


class StageConfigError(ConfigError):
    """A stage's `config` or `resources` failed validation; `keys`: the keys it names (`resources.` prefixed for
    resources), so the caller can say whether a `--set` or the file gave them."""

    def __init__(self, stage: str, section: str, exc: ValidationError, model: type[BaseModel]):
        prefix = "" if section == "config" else f"{section}."
        self.stage = stage
        self.keys = [prefix + str(error["loc"][0]) for error in exc.errors() if error["loc"]]
        super().__init__(f"stage {stage!r}: {describe_validation_error(exc, model, prefix=prefix)}")


# The driver's environment variables that every Ray worker gets too (besides `run.env`): Ray starts workers on
# other nodes from their own node's environment, never the driver's. Not forwarded: names that look like
# secrets (Ray writes a job's runtime_env, values included, into its logs on every node), and CUDA_VISIBLE_DEVICES
# (Ray sets it per worker from the GPUs it assigns).
FORWARDED_ENV_PREFIXES = ("HUMOVE_", "HF_", "TRANSFORMERS_", "YOLO_", "AWS_", "GOOGLE_")
_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSW|API_?KEY|ACCESS_KEY|PRIVATE_KEY")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def looks_secret(name: str) -> bool:
    return bool(_SECRET_NAME.search(name.upper()))


def worker_environment(run_env: dict[str, str]) -> dict[str, str]:
    """What the workers get: the driver's variables with a forwarded prefix (secrets left out), and `run.env`."""
    forwarded = {name: value for name, value in os.environ.items()
                 if name.startswith(FORWARDED_ENV_PREFIXES) and not looks_secret(name)}
    return {**forwarded, **run_env}


class RunOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1, description="tries per item before it is quarantined")
    executor: Literal["ray", "local"] = "ray"
    ray_address: str | None = None
    streaming: bool = Field(
        True, description="with the Ray executor, consecutive map stages run at once as one streaming pipeline "
                          "(items move on as they pass); false: each stage runs to its end before the next starts")
    ray_connect_timeout_s: float = Field(
        60, gt=0, description="how long joining a Ray cluster (--ray-address HOST:PORT) waits for its head to answer")
    shared_fs: bool = Field(
        False, description="a local run dir is a folder every Ray node mounts at the same path (NFS, a shared "
                           "volume): allows it on a cluster of several nodes, after checking that each node sees it")
    wait_for_resources_s: float = Field(
        0, ge=0, description="how long a stage's unmet resource request waits for an autoscaling cluster to grow; "
                             "0: the run stops at once with an error")
    env: dict[str, str] = Field(
        default_factory=dict, description="environment variables set on the driver and on every Ray worker")
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve the run's per-stage progress as Prometheus metrics on this port "
                                          "(http://HOST:PORT/metrics) while it runs; none: no endpoint")
    metrics_host: str = Field(
        "127.0.0.1", min_length=1, description="the address the metrics endpoint listens on: this machine only "
                                               "by default; a node's cluster address to let Prometheus scrape it")

    @field_validator("env", mode="before")
    @classmethod
    def _env_values(cls, env: Any) -> Any:
        if not isinstance(env, dict):
            return env
        values = {}
        for name, value in env.items():
            if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an environment variable name")
            if looks_secret(name):
                raise ValueError(f"{name} looks like a secret: export it on every node instead (a pipeline file "
                                 "is shared, and Ray writes the environment it forwards into its logs)")
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise ValueError(f"{name}: give the value as a string (e.g. \"1\"), not {value!r}")
            values[name] = str(value)
        return values


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
        except ValidationError as exc:
            raise StageConfigError(self.name, "config", exc, self.cls.Config) from exc
        try:
            self.resources = Resources(**{**self.cls.resources.model_dump(), **spec.resources})
        except ValidationError as exc:
            raise StageConfigError(self.name, "resources", exc, Resources) from exc

    @property
    def prepare_resources(self) -> Resources | None:
        """The CPU workers of its `prepare`, for stages that run it apart from the model (`MapStage`)."""
        return getattr(self.cls, "prepare_resources", None)


def builtin_pipeline(name: str) -> Path:
    """A pipeline shipped with humove (`pipelines/`, installed as `humove.pipelines`)."""
    from importlib.resources import files

    return Path(str(files("humove.pipelines") / name))


def _stage_name(ref: Any) -> str:
    """The name of the stage a spec's `stage:` names: a stage name as it is (built-in, or a custom stage's name
    in an overlay), else the `name` of the class a `module:Class` reference names."""
    return load_stage_class(ref).name if isinstance(ref, str) and ":" in ref else str(ref)


def _apply_override(raw: dict, override: str, left_out: list[str]) -> tuple[str, str]:
    """Apply `STAGE.KEY=VALUE` (KEY: a config field, or `resources.FIELD`); returns (stage, KEY). `left_out`: the
    stages `--from` dropped, named when an override asks for one of them."""
    if "=" not in override or "." not in override.split("=", 1)[0]:
        raise ConfigError(f"override {override!r}: expected STAGE.KEY=VALUE")
    path, value = override.split("=", 1)
    stage_name, key = path.split(".", 1)
    for spec in raw.get("stages", []):
        name = _stage_name(spec.get("stage"))
        if spec.get("stage") == stage_name or name == stage_name:
            section, _, field = key.rpartition(".")
            target = spec.setdefault(section or "config", {})
            target[field] = yaml.safe_load(value)
            return (name, field) if section in ("", "config") else (name, f"{section}.{field}")
    if stage_name in left_out:
        raise ConfigError(f"override {override!r}: stage {stage_name!r} does not run: --from leaves out "
                          f"{', '.join(left_out)}")
    raise ConfigError(f"override {override!r}: no stage {stage_name!r} in the pipeline")


def _start_at(raw: dict, start: str, path: Path) -> list[str]:
    """`--from START`: drop the stages before START; returns their names."""
    stages = raw.get("stages")
    names = [_spec_name(spec, path) for spec in stages] if isinstance(stages, list) else []
    if start not in names:
        raise ConfigError(f"--from {start}: no stage {start!r} in the pipeline (its stages: {', '.join(names)})")
    index = names.index(start)
    sources = [name for name, spec in zip(names, stages, strict=True) if _is_source(spec["stage"])]
    if start not in sources:
        raise ConfigError(f"--from {start}: stage {start!r} works on the records of the stage before it, so a run "
                          f"cannot start there; start at a stage that lists its own inputs: {', '.join(sources)}")
    raw["stages"] = stages[index:]
    return names[:index]


def _is_source(ref: Any) -> bool:
    return bool(getattr(load_stage_class(ref), "is_source", False))


def _deep_merge(base: Any, override: Any) -> Any:
    """`override` on top of `base`: dicts key by key (recursively), anything else replaced."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _deep_merge(base.get(key), value)
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"pipeline file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(exc)}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a pipeline file is a mapping (name, run, stages), not {type(raw).__name__}")
    return raw


def _base_file(path: Path, extends: Any) -> Path:
    """`extends:` names a file relative to the extending one, else a built-in pipeline (`humove.yaml`, `demo`)."""
    if not isinstance(extends, str) or not extends:
        raise ConfigError(f"{path}: extends: expected a pipeline file name, got {extends!r}")
    relative = path.parent / extends
    if relative.is_file():
        return relative
    builtin = builtin_pipeline(extends if extends.endswith((".yaml", ".yml")) else f"{extends}.yaml")
    if builtin.is_file():
        return builtin
    raise ConfigError(f"{path}: extends {extends!r}: neither {relative} nor a built-in pipeline exists")


def read_pipeline_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A pipeline file as a plain dict, its `extends` chain merged (the module docstring says how)."""
    path = Path(path)
    chain = (*_chain, path.resolve())
    raw = _read_yaml(path)
    extends = raw.pop("extends", None)
    if extends is None:
        if "remove" in raw:
            raise ConfigError(f"{path}: remove: only a pipeline that extends another can remove stages")
        return raw
    base_path = _base_file(path, extends)
    if base_path.resolve() in chain:
        cycle = " → ".join(str(p) for p in (*chain, base_path.resolve()))
        raise ConfigError(f"{path}: extends {extends!r} makes a cycle: {cycle}")
    return _overlay(read_pipeline_file(base_path, chain), raw, path, extends)


def _overlay(base: dict, overlay: dict, path: Path, extends: str) -> dict:
    merged = {key: _deep_merge(base.get(key), value) for key, value in overlay.items()
              if key not in ("stages", "remove")}
    merged = {**copy.deepcopy(base), **merged}
    stages = merged.get("stages")
    if not isinstance(stages, list):
        raise ConfigError(f"{path}: the base pipeline {extends} has no stage list")
    names = [_spec_name(spec, path) for spec in stages]

    def position(name: str, what: str) -> int:
        if name not in names:
            raise ConfigError(f"{path}: {what}: no stage {name!r} in the base pipeline {extends} "
                              f"(its stages: {', '.join(names)})")
        return names.index(name)

    remove = overlay.get("remove") or []
    if not isinstance(remove, list):
        raise ConfigError(f"{path}: remove: expected a list of stage names, got {remove!r}")
    for name in remove:
        index = position(name, "remove")
        del stages[index], names[index]
    for spec in overlay.get("stages") or []:
        name = _spec_name(spec, path)
        spec = dict(spec)
        place = {key: spec.pop(key) for key in ("after", "before") if key in spec}
        if not place:
            index = position(name, f"stage {name!r}")
            if ":" not in str(spec["stage"]):  # named by its name: the base's class stays
                spec["stage"] = stages[index]["stage"]
            stages[index] = _deep_merge(stages[index], spec)
            continue
        if len(place) > 1:
            raise ConfigError(f"{path}: stage {name!r}: give `after` or `before`, not both")
        if name in names:
            raise ConfigError(f"{path}: stage {name!r} is already in the base pipeline {extends}: "
                              f"drop `{next(iter(place))}` to change it there")
        (where, anchor), = place.items()
        index = position(anchor, f"stage {name!r}: {where}") + (where == "after")
        stages.insert(index, spec)
        names.insert(index, name)
    return merged


def _spec_name(spec: Any, path: Path) -> str:
    if not isinstance(spec, dict) or "stage" not in spec:
        raise ConfigError(f"{path}: every entry of `stages` names its stage (`stage: NAME`), got {spec!r}")
    return _stage_name(spec["stage"])


def load_pipeline(path: str | Path, overrides: list[str] | None = None,
                  start: str | None = None) -> tuple[PipelineConfig, list[ResolvedStage]]:
    """The pipeline file (its `extends` chain merged), started at the stage `start` when given (`--from`: the
    stages before it are left out), with the `--set` overrides applied; every value must take effect
    (`_check_every_value_is_used`)."""
    path = Path(path)
    raw = read_pipeline_file(path)
    left_out = _start_at(raw, start, path) if start else []
    overridden = {_apply_override(raw, override, left_out): override for override in overrides or []}
    try:
        pipeline = PipelineConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc, PipelineConfig, raw)}") from exc
    try:
        stages = [ResolvedStage(spec) for spec in pipeline.stages]
    except StageConfigError as exc:  # named by the --set that gave the value, else by the file
        given = [overridden[exc.stage, key] for key in exc.keys if (exc.stage, key) in overridden]
        raise ConfigError(f"--set {given[0]}: {exc}" if given else f"{path}: {exc}") from exc
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: a stage appears twice: {names}")
    if not stages:
        raise ConfigError(f"{path}: no stages")
    _check_every_value_is_used(path, pipeline, stages, overridden)
    try:
        for index in range(1, len(stages)):
            stage_sources(stages, index)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return pipeline, stages


def _check_every_value_is_used(path: Path, pipeline: PipelineConfig, stages: list[ResolvedStage],
                               overridden: dict[tuple[str, str], str]) -> None:
    """A value the run would not use is an error, never silently dropped: the first stage must list inputs of
    its own (a source); the `listing()` fields of any later stage (e.g. `ingest.source` after `download`) are
    never read — that stage works on the records of the one before it; an aggregate stage (shards) runs in the
    driver, where no `resources` apply."""
    for stage, spec in zip(stages, pipeline.stages, strict=True):
        if spec.resources and not issubclass(stage.cls, MapStage):
            field = sorted(spec.resources)[0]
            what = overridden.get((stage.name, f"resources.{field}"))
            what = f"--set {what}" if what else f"{path}: stage {stage.name!r} sets resources.{field}"
            raise ConfigError(f"{what}: {stage.name!r} runs in the driver, on all its inputs at once, so no "
                              "resources apply to it — remove them")
    first = stages[0]
    if not getattr(first.cls, "is_source", False):
        raise ConfigError(f"{path}: stage {first.name!r} cannot start a pipeline: it works on the records of the "
                          f"stage before it (the first stage lists its own inputs, e.g. ingest)")
    for index, stage in enumerate(stages[1:], start=1):
        for field in sorted(stage.config.model_fields_set & stage.config.listing_fields()):
            what = (f"--set {overridden[stage.name, field]}" if (stage.name, field) in overridden
                    else f"{path}: stage {stage.name!r} sets {field}")
            earlier = ", ".join(s.name for s in stages[:index])
            raise ConfigError(
                f"{what}: pipeline {pipeline.name!r} starts at {first.name!r}, so {stage.name!r} works on the records "
                f"of {stages[index - 1].name!r} and never reads {field} — to start at {stage.name}, add "
                f"`--from {stage.name}` (leaves out {earlier})")


def stage_sources(stages: list[ResolvedStage], index: int) -> dict[str, list[str] | None]:
    """The earlier stages that stage `index` reads from: {stage: the columns it reads of it}, None for every
    column of every earlier stage (a stage that declares nothing, `Stage.reads`). A column's maker is the nearest
    earlier stage whose schema has it, as in `joined_inputs`; the engine's own columns (`input_id`, the keys)
    are nobody's. A needed column that no earlier stage makes is a `ConfigError` (`load_pipeline` checks)."""
    stage, earlier = stages[index], stages[:index]
    reads = stage.cls.reads(stage.config)
    if reads is None:
        return {s.name: None for s in earlier}
    keys = {"input_id"} | {s.cls.schema.key for s in earlier}
    sources: dict[str, list[str]] = {}
    for field in sorted((reads.fields | reads.if_present) - keys):
        maker = next((s for s in reversed(earlier) if field in s.cls.schema.own_names), None)
        if maker is not None:
            sources.setdefault(maker.name, []).append(field)
        elif field in reads.fields and earlier:
            makers = [name for name in _builtin_makers(field) if name not in {s.name for s in earlier}]
            hint = f": the built-in stage {makers[0]!r} makes it, add it before {stage.name!r}" if makers else ""
            raise ConfigError(f"stage {stage.name!r} reads {field!r}, which no stage before it makes "
                              f"({', '.join(s.name for s in earlier)}){hint}")
    return sources


def _builtin_makers(field: str) -> list[str]:
    """The built-in stages whose records hold `field` (read from their schema modules: no stage code imported)."""
    from humove.registry import BUILTIN_STAGES, builtin_schema

    return [name for name in BUILTIN_STAGES if field in builtin_schema(name).own_names]


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: what is wrong and where (its own message quotes the file over several lines)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def describe_validation_error(exc: ValidationError, model: type[BaseModel], raw: Any = None, prefix: str = "") -> str:
    """pydantic's errors in one line: each names its key (`run.max_attempts`; an entry of `stages` by its stage,
    when `raw` is the pipeline dict), the value given and what was wrong; an unknown key gets the nearest valid
    key and the list of valid ones."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if error["type"] == "extra_forbidden":
            parent = _where(loc[:-1], raw, prefix)
            problems.append(f"{parent}: " * bool(parent) + _unknown_key(str(loc[-1]), _model_at(model, loc[:-1])))
        elif error["type"] == "missing":
            problems.append(f"missing key {_where(loc, raw, prefix)!r}")
        elif error["type"] == "value_error":  # a validator's own message, which says what it got
            problems.append(f"{_where(loc, raw, prefix)}: {error['msg'].removeprefix('Value error, ')}")
        else:
            problems.append(f"{_where(loc, raw, prefix)}: {error['msg']} ({_given(model, loc, error['input'])})")
    return "; ".join(problems)


def _where(loc: tuple, raw: Any, prefix: str) -> str:
    """A key's path as the user wrote it: `run.max_attempts`; an entry of `stages` by its stage's name."""
    if loc[:1] == ("stages",) and len(loc) > 1 and isinstance(loc[1], int):
        return ": ".join(filter(None, [f"stage {_entry_name(raw, loc[1])}", ".".join(str(p) for p in loc[2:])]))
    return prefix + ".".join(str(part) for part in loc) if loc else prefix.rstrip(".")


def _unknown_key(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return f"unknown key {key!r}"
    valid = list(model.model_fields)
    nearest = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {nearest[0]!r}? " if nearest else ""
    return f"unknown key {key!r} ({hint}valid: {', '.join(valid)})"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that validates the value at `loc` inside `model` (through fields, lists and optionals)."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int):
            annotation = next(iter(typing.get_args(annotation)), None)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel) and part in annotation.model_fields:
            annotation = annotation.model_fields[part].annotation
        else:
            return None
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            annotation = next((arg for arg in typing.get_args(annotation) if arg is not type(None)), None)
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _entry_name(raw: Any, index: int) -> str:
    """An entry of `stages` as the user wrote it: its stage's name, else its position."""
    try:
        return repr(_stage_name(raw["stages"][index]["stage"]))
    except (LookupError, TypeError, ValueError, ImportError):  # not a stage entry: named by its position
        return f"#{index + 1}"


def _given(model: type[BaseModel], loc: tuple, value: Any) -> str:
    """The value a key was given, as an error may show it: never a secret's, a nested value only by its kind."""
    parent = _model_at(model, loc[:-1])
    info = parent.model_fields.get(str(loc[-1])) if parent and loc else None
    extra = info.json_schema_extra if info else None
    if (isinstance(extra, dict) and extra.get("secret")) or (loc and looks_secret(str(loc[-1]))):
        return "value not shown: a secret"
    if isinstance(value, dict | list):
        return f"got a {'mapping' if isinstance(value, dict) else 'list'}"
    text = json.dumps(redact_value(value), default=str)
    return f"got {text if len(text) <= 60 else text[:57] + '...'}"
