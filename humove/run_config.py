"""The run's config is state of its run dir: `--set` values are kept, and the config a run used is recorded.

A run stores its `--set` values in `run.json` (`settings`: `STAGE.KEY` → the value as typed) and later runs on the
run dir apply them too, until a `--set` of the same key changes them (one line says `old → new`) or
`humove config DIR --unset STAGE.KEY` drops them. A run that applies stored values says which, so no value
changes silently. Secrets are never stored: a `secret()` field, or a value holding a URL's credentials, applies to
the run that was given it only (one line says so). `run.json` also holds the run's effective config (`config`:
run options and each stage's class, config and resources, secrets masked), which `humove config DIR` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from humove.config import ConfigError, PipelineConfig, ResolvedStage, load_pipeline
from humove.ledger import Ledger, LedgerError
from humove.redact import redact_text, redact_value
from humove.stage import MapStage, _is_secret


@dataclass
class RunSettings:
    """`stored`: the `--set` values the run dir keeps after this run; `notes`: lines for the user."""

    stored: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def stored_settings(ledger: Ledger) -> dict[str, str]:
    """The `--set` values a run dir keeps ({} for a new run dir or one written before they were kept)."""
    try:
        info = ledger.run_info()
    except FileNotFoundError:
        return {}
    settings = info.get("settings", {})
    if not isinstance(settings, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in settings.items()):
        raise LedgerError(f"{ledger.storage.join('run.json')}: 'settings' is not a mapping of STAGE.KEY to a value "
                          "(not a run.json humove wrote)")
    return settings


def _key(override: str, stages: list[ResolvedStage]) -> str:
    """`STAGE.KEY` of an override, its stage by name (an override may name it by its class)."""
    stage, _, key = override.split("=", 1)[0].strip().partition(".")
    name = next((s.name for s in stages if stage in (s.name, s.ref)), stage)
    return f"{name}.{key}"


def _storable(key: str, value: str, stages: list[ResolvedStage]) -> bool:
    """Whether a `--set` value may be written: not a secret field, no URL credentials in it."""
    stage_name, _, name = key.partition(".")
    stage = next((s for s in stages if s.name == stage_name), None)
    info = stage.cls.Config.model_fields.get(name) if stage is not None else None
    return not (info is not None and _is_secret(info)) and redact_text(value) == value


def load_run_pipeline(path: str | Path, run_dir: str, overrides: list[str] | None = None,
                      start: str | None = None) -> tuple[PipelineConfig, list[ResolvedStage], RunSettings]:
    """The pipeline as `config.load_pipeline` loads it, with the run dir's stored `--set` values applied first
    (those of stages this run has) and `overrides` after them; and what the run dir keeps afterwards."""
    overrides = list(overrides or [])
    pipeline, stages = load_pipeline(path, overrides, start=start)  # the given values alone must be valid
    stored = stored_settings(Ledger(run_dir))
    given = {_key(o, stages): o.split("=", 1)[1] for o in overrides}
    names = {s.name for s in stages}
    kept = {key: value for key, value in stored.items() if key not in given}
    applied = {key: value for key, value in kept.items() if key.partition(".")[0] in names}
    settings = RunSettings(stored=dict(kept))
    if applied:
        settings.notes.append("kept from earlier runs' --set (humove config DIR --unset STAGE.KEY drops one): "
                              + ", ".join(f"{key}={value}" for key, value in applied.items()))
    if len(applied) < len(kept):
        settings.notes.append("stored --set values of stages this run does not have, not applied: "
                              + ", ".join(key for key in kept if key not in applied))
    for key, value in given.items():
        if not _storable(key, value, stages):
            settings.notes.append(f"--set {key}: a secret, used by this run and not stored (give it again to "
                                  "later runs)")
            continue
        settings.stored[key] = value
        if key in stored and stored[key] != value:
            settings.notes.append(f"--set {key}: {stored[key]} → {value} (kept by later runs)")
        elif key not in stored:
            settings.notes.append(f"--set {key}={value} is kept by later runs on this run dir until changed")
    if applied:
        try:
            pipeline, stages = load_pipeline(path, [f"{k}={v}" for k, v in applied.items()] + overrides,
                                             start=start)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (kept in {run_dir}/run.json from an earlier run's --set; change it with "
                              "--set, or drop it with humove config DIR --unset STAGE.KEY)") from exc
    return pipeline, stages, settings


def effective_config(pipeline: PipelineConfig, stages: list[ResolvedStage]) -> dict:
    """What a run ran with, as it may be written: secrets and URL credentials masked."""
    return {
        "name": pipeline.name,
        "run": redact_value(pipeline.run.model_dump(mode="json")),
        "stages": [{"stage": stage.name, "class": stage.ref, "config": stage.config.redacted_dict(),
                    # an aggregate stage runs in the driver: no resources apply to it
                    **({"resources": stage.resources.model_dump(mode="json")} if issubclass(stage.cls, MapStage)
                       else {})}
                   for stage in stages],
    }


def recorded_config(ledger: Ledger) -> dict:
    """A run dir's effective config and kept `--set` values, from its run.json (written at each run); for a run
    dir written before run.json held it, each stage's config from its `_stage.json`."""
    info = ledger.run_info()
    config = info.get("config")
    if not isinstance(config, dict):
        stages = []
        for stage in ledger.stage_names():
            state = ledger.stage_state(stage) or {}
            stages.append({"stage": stage, "class": state.get("class"), "config": state.get("config")})
        config = {"name": info.get("pipeline"), "stages": stages}
    # run.json is written with sorted keys: back in reading order
    stages = [_ordered(stage, ("stage", "class", "config", "resources")) if isinstance(stage, dict) else stage
              for stage in config.get("stages") or []]
    return {**_ordered(config, ("name", "run")), "stages": stages, "settings": stored_settings(ledger)}


def _ordered(mapping: dict, first: tuple[str, ...]) -> dict:
    return {**{key: mapping[key] for key in first if key in mapping}, **mapping}


def unset_setting(run_dir: str, key: str) -> str:
    """Drop a kept `--set` value from the run dir (under its lock: not while a run is going); returns its value."""
    from humove.lock import RunLock

    ledger = Ledger(run_dir)
    with RunLock(ledger.run_dir) as lock:
        ledger.storage.guard = lock.check
        info = ledger.run_info()
        settings = stored_settings(ledger)
        if key not in settings:
            kept = ", ".join(settings) or "none"
            raise ValueError(f"{ledger.run_dir} keeps no --set {key} (kept: {kept})")
        value = settings.pop(key)
        ledger.write_run_info({**info, "settings": settings})
    return value


def config_yaml(config: dict) -> str:
    import yaml

    # A run dir is untrusted input: only JSON's types reach the YAML (safe_dump refuses anything else).
    return yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False, allow_unicode=True)
