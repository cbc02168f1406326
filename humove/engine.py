"""The pipeline runner: stage by stage, resume from the run dir's ledger, invalidate what changed.

For each stage in order:
1. Fingerprint = (stage class, version, schema version, config without thresholds, upstream fingerprint).
   A changed fingerprint (or `--force`) invalidates that stage and everything downstream.
2. Inputs: a source stage lists its own; any other stage reads the upstream stage's `ok` records, joined with
   the stage-specific columns of all earlier stages.
3. Map stages: items without a record, and `error` items below `max_attempts`, go to the executor; each
   finished batch is appended to the ledger at once. Threshold changes are re-decided on stored measures.
   Aggregate stages rerun whole when their input set changes.

Why not Ray Data's own checkpointing: it skips rows by id for read → map → write pipelines, but our resume
needs per-item status (retry errors up to a count, quarantine, keep rejections with reasons), fan-out (one
video → many clips), threshold re-decisions and cross-stage invalidation, so the ledger keeps that state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc

from humove.config import PipelineConfig, ResolvedStage
from humove.executors import EXECUTORS, make_executor
from humove.ledger import Ledger
from humove.lock import RunLock
from humove.schemas.records import COMMON_NAMES
from humove.stage import AggregateStage, MapStage, StageContext, fingerprint
from humove.worker import decide_safely, finalize, records_to_table


class RunStorageError(RuntimeError):
    """The OS refused a read or write of the run (disk full, read-only file system, permission denied): says
    which stage (or `run` for the run's own files), which path and why, in one line."""

    def __init__(self, stage: str, error: OSError):
        self.stage = stage
        self.path = error.filename
        self.reason = error.strerror or str(error)
        super().__init__(": ".join(str(part) for part in (stage, self.path, self.reason) if part))


@dataclass
class StageResult:
    stage: str
    processed: int = 0
    skipped: int = 0
    seconds: float = 0.0


class Progress:
    """Callbacks the CLI implements (rich bars); the default does nothing."""

    def message(self, text: str) -> None:
        pass

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, records: list[dict], items: int) -> None:
        pass

    def finish(self, stage: str) -> None:
        pass


def stage_fingerprints(stages: list[ResolvedStage]) -> dict[str, dict[str, str]]:
    prints: dict[str, dict[str, str]] = {}
    upstream = ""
    for stage in stages:
        value = fingerprint({
            "class": stage.ref, "version": str(stage.cls.version), "schema": stage.cls.schema.version,
            "config": stage.config.fingerprint_dict(), "upstream": upstream,
        })
        prints[stage.name] = {"fingerprint": value, "decisions": fingerprint(stage.config.decision_dict())}
        upstream = value
    return prints


class Runner:
    def __init__(self, pipeline: PipelineConfig, stages: list[ResolvedStage], run_dir: str,
                 executor: str | None = None, ray_address: str | None = None, force: list[str] | None = None,
                 until: str | None = None, break_lock: bool = False, progress: Progress | None = None):
        self.pipeline = pipeline
        self.stages = stages
        self.ledger = Ledger(run_dir, stage_classes={s.name: s.cls for s in stages})
        self.run_dir = self.ledger.run_dir
        self.executor_name = executor or pipeline.run.executor
        self.ray_address = ray_address or pipeline.run.ray_address
        self.force = list(force or [])
        self.until = until
        self.break_lock = break_lock
        self.progress = progress or Progress()
        self.max_attempts = pipeline.run.max_attempts
        self._started_executor = None
        # Everything is checked here, before the run writes anything (lock, run.json, sample videos).
        names = [s.name for s in stages]
        for name in self.force + ([until] if until else []):
            if name not in names:
                raise ValueError(f"no stage {name!r} in pipeline {pipeline.name!r}; stages: {names}")
        if self.executor_name not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor_name!r}: use one of {', '.join(EXECUTORS)}")
        if self.ledger.storage.local and Path(self.run_dir).exists() and not Path(self.run_dir).is_dir():
            raise ValueError(f"run dir {self.run_dir} is a file, not a folder")

    # Orchestration -------------------------------------------------------------------------------------------
    def run(self) -> list[StageResult]:
        """Run the stages in order. An OS error (disk full, read-only, permission) raises `RunStorageError`."""
        current = "run"
        try:
            with RunLock(self.run_dir, break_lock=self.break_lock):
                self._remove_temp_files()
                self.ledger.write_run_info({
                    "pipeline": self.pipeline.name, "max_attempts": self.max_attempts,
                    "stages": [{"name": s.name, "class": s.ref} for s in self.stages],
                })
                prints = stage_fingerprints(self.stages)
                self._invalidate_changed(prints)
                results = []
                for stage in self.stages:
                    current = stage.name
                    results.append(self._run_stage(stage, prints[stage.name]))
                    # What `humove status` shows, on disk for duckdb / pandas; later stages' current inputs
                    # depend on this one, so all are rewritten.
                    self.ledger.write_current()
                    if stage.name == self.until:
                        break
                return results
        except OSError as exc:
            raise RunStorageError(current, exc) from exc

    def _remove_temp_files(self) -> None:
        """Temp files of writes a killed run (SIGKILL, full disk) left behind; the lock is held, so none is live."""
        removed = self.ledger.remove_temp_files([s.name for s in self.stages])
        if removed:
            self.progress.message(f"removed {len(removed)} temp files left by an interrupted run")

    def _executor(self):
        """Started on first use, so a resume with nothing left to do does not start Ray."""
        if self._started_executor is None:
            self._started_executor = make_executor(self.executor_name, self.ray_address)
        return self._started_executor

    def _context(self, stage: ResolvedStage) -> StageContext:
        return StageContext(run_dir=self.run_dir, stage=stage.name)

    def _invalidate_changed(self, prints: dict[str, dict[str, str]]) -> None:
        first_changed = None
        for index, stage in enumerate(self.stages):
            state = self.ledger.stage_state(stage.name)
            if stage.name in self.force:
                first_changed, why = index, "forced with --force"
            elif state and state.get("fingerprint") != prints[stage.name]["fingerprint"]:
                first_changed, why = index, _describe_change(state, stage)
            else:
                continue
            break
        if first_changed is None:
            return
        doomed = [s.name for s in self.stages[first_changed:] if self.ledger.stage_state(s.name)
                  or self.ledger.parts(s.name)]
        if doomed:
            self.progress.message(f"stage {self.stages[first_changed].name!r} {why}: "
                                  f"invalidating {', '.join(doomed)}")
            for name in doomed:
                self.ledger.invalidate(name)

    def _run_stage(self, stage: ResolvedStage, prints: dict[str, str]) -> StageResult:
        instance = stage.cls(stage.config, self._context(stage))
        started = time.time()
        if isinstance(instance, MapStage):
            result = self._run_map(stage, instance, prints)
        elif isinstance(instance, AggregateStage):
            result = self._run_aggregate(stage, instance, prints)
        else:
            raise TypeError(f"stage {stage.name!r} is neither a MapStage nor an AggregateStage")
        result.seconds = time.time() - started
        return result

    def _write_state(self, stage: ResolvedStage, prints: dict[str, str], **extra) -> None:
        self.ledger.write_stage_state(stage.name, {
            "stage": stage.name, "class": stage.ref, "version": str(stage.cls.version),
            "schema_version": stage.cls.schema.version, "config": stage.config.model_dump(mode="json"),
            **prints, **extra,
        })

    # Inputs --------------------------------------------------------------------------------------------------
    def _inputs(self, stage: ResolvedStage, instance) -> list[dict]:
        index = self.stages.index(stage)
        if index == 0:
            if not getattr(instance, "is_source", False):
                raise ValueError(f"stage {stage.name!r} is first but is not a source stage")
            items = instance.list_inputs()
            ids = [item["input_id"] for item in items]
            if len(set(ids)) != len(ids):
                raise ValueError(f"stage {stage.name!r} listed duplicate input ids")
            return items
        return joined_inputs(self.ledger, self.stages[:index])

    # Map stages ----------------------------------------------------------------------------------------------
    def _run_map(self, stage: ResolvedStage, instance: MapStage, prints: dict[str, str]) -> StageResult:
        inputs = self._inputs(stage, instance)
        if getattr(instance, "is_source", False):
            self.ledger.write_listed_inputs(stage.name, [item["input_id"] for item in inputs])
        state = self.ledger.stage_state(stage.name) or {}
        if state and state.get("decisions") != prints["decisions"]:
            self._redecide(stage, instance)
        self._write_state(stage, prints)
        latest: dict[str, tuple[bool, int]] = {}  # input_id → (has error, attempt)
        for row in self.ledger.records(stage.name).select(["input_id", "status", "attempt"]).to_pylist():
            has_error, attempt = latest.get(row["input_id"], (False, 0))
            latest[row["input_id"]] = (has_error or row["status"] == "error", max(attempt, row["attempt"]))
        envelopes = []
        for item in inputs:
            previous = latest.get(item["input_id"])
            if previous is None:
                envelopes.append({"item": item, "attempt": 1})
            elif previous[0] and previous[1] < self.max_attempts:
                envelopes.append({"item": item, "attempt": previous[1] + 1})
        result = StageResult(stage.name, skipped=len(inputs) - len(envelopes))
        self.progress.start(stage.name, len(envelopes))
        if envelopes:
            config = stage.config.model_dump(mode="json")
            batches = self._executor().map(stage.ref, config, self.run_dir, envelopes, stage.resources,
                                           prepare_resources=instance.prepare_resources)
            for records in batches:
                self.ledger.append(stage.name, records_to_table(instance, records))
                items = len({r["input_id"] for r in records})
                result.processed += items
                self.progress.advance(stage.name, records, items)
            self.ledger.replace(stage.name, self.ledger.records(stage.name))  # compact the parts
        self.progress.finish(stage.name)
        return result

    def _redecide(self, stage: ResolvedStage, instance: MapStage) -> None:
        """Thresholds changed: apply them to stored measures, no recompute."""
        table = self.ledger.records(stage.name)
        rows = [decide_safely(instance, row) for row in table.to_pylist()]
        changed = sum(1 for old, new in zip(table["status"].to_pylist(), rows, strict=True)
                      if old != new["status"])
        self.ledger.replace(stage.name, records_to_table(instance, rows))
        self.progress.message(f"stage {stage.name!r}: thresholds changed, re-decided {len(rows)} records "
                              f"without recomputing ({changed} changed status)")

    # Aggregate stages ----------------------------------------------------------------------------------------
    def _run_aggregate(self, stage: ResolvedStage, instance: AggregateStage, prints: dict[str, str]) -> StageResult:
        """Rerun whole when the inputs or fingerprint changed, or when items failed with attempts left."""
        inputs = self._inputs(stage, instance)
        signature = fingerprint({"fingerprint": prints["fingerprint"],
                                 "inputs": sorted(fingerprint(item) for item in inputs)})
        state = self.ledger.stage_state(stage.name) or {}
        stored = self.ledger.records(stage.name).select(["status", "attempt"]).to_pylist()
        errors = [row["attempt"] for row in stored if row["status"] == "error"]
        retry = any(attempt < self.max_attempts for attempt in errors)
        if state.get("input_signature") == signature and stored and not retry:
            return StageResult(stage.name, skipped=len(inputs))
        attempt = max(errors) + 1 if retry and state.get("input_signature") == signature else 1
        self.progress.start(stage.name, len(inputs))
        records = instance.run(inputs)
        by_id = {item.get("clip_id") or item["input_id"]: item for item in inputs}
        finished = []
        for record in records:
            item = by_id.get(record["id"], {"input_id": record["id"]})
            finished.extend(finalize(instance, {"input_id": item["input_id"]}, record, attempt=attempt))
        self.ledger.replace(stage.name, records_to_table(instance, finished))
        self._write_state(stage, prints, input_signature=signature)
        self.progress.advance(stage.name, finished, len(inputs))
        self.progress.finish(stage.name)
        return StageResult(stage.name, processed=len(inputs))


def joined_inputs(ledger: Ledger, upstream: list[ResolvedStage]) -> list[dict]:
    """The last upstream stage's `ok` records as input items, each joined with the stage-specific columns of
    every earlier stage (by that stage's key: `video_id` or `clip_id`)."""
    tables = ledger.current()
    last = upstream[-1]
    ok = tables[last.name].filter(pc.equal(tables[last.name]["status"], "ok"))
    lookups: list[tuple[str, dict[str, dict]]] = []
    for earlier in upstream[:-1]:
        table = tables[earlier.name]
        table = table.filter(pc.equal(table["status"], "ok"))
        own = [c for c in table.column_names if c not in COMMON_NAMES]
        rows = table.select(["id", *own]).to_pylist()
        lookups.append((earlier.cls.schema.key, {row.pop("id"): row for row in rows}))
    own_last = [c for c in ok.column_names if c not in COMMON_NAMES]
    items = []
    for row in ok.select(["id", *own_last]).to_pylist():
        record_id = row.pop("id")
        item = {last.cls.schema.key: record_id}
        for key, lookup in reversed(lookups):
            item.update(lookup.get(item.get(key) or row.get(key), {}))
            item.setdefault(key, row.get(key))
        item.update(row)
        item["input_id"] = record_id
        items.append(item)
    return items


def _describe_change(state: dict, stage: ResolvedStage) -> str:
    if state.get("class") != stage.ref:
        return f"class changed ({state.get('class')} → {stage.ref})"
    if str(state.get("version")) != str(stage.cls.version):
        return f"version changed ({state.get('version')} → {stage.cls.version})"
    if state.get("schema_version") != stage.cls.schema.version:
        return f"record schema changed (v{state.get('schema_version')} → v{stage.cls.schema.version})"
    old = state.get("config", {})
    new = stage.config.model_dump(mode="json")
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        return f"config changed ({', '.join(changed)})"
    return "changed upstream"

