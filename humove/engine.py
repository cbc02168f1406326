"""The pipeline runner: stage by stage, resume from the run dir's ledger, invalidate what changed.

For each stage in order:
1. Fingerprint = (stage class, version, schema version, config without thresholds, and the fingerprints of the
   upstream stages that make the columns it reads: `Stage.reads`, `stage_sources`). A changed fingerprint (or
   `--force`) invalidates that stage and the stages that read what it makes, no others.
2. Inputs: a source stage lists its own; any other stage reads the upstream stage's `ok` records, joined with
   the stage-specific columns of all earlier stages.
3. Map stages: items without a record, and `error` items below `max_attempts`, go to the executor; each
   finished batch is appended to the ledger at once. Threshold changes are re-decided on stored measures.
   Aggregate stages rerun whole when their input set changes.

The driver's memory stays flat as the inputs grow: a stage's inputs and its work are found by the ledger's duckdb
index (`Ledger.index`: bounded memory, spills to disk), and the work goes to the executor as Parquet files in the
stage's folder (`items.WorkFile`), read a batch at a time (on Ray, a large work by tasks from the run dir).

Streaming (Ray executor, `run.streaming`, the default): consecutive map stages whose records are clips run at
once as one streaming Ray Data pipeline (`_run_stream`, `RayExecutor.stream`): every stage's pool is alive, each
`ok` record becomes the next stage's item as soon as it is made (`worker.next_item` builds what `joined_inputs`
would), a rejected one leaves, and each stage's own pending work enters at its stage. The driver appends every
stage's records batch by batch as they come out; items of a lost batch run again stage by stage afterwards.
Video and keyword stages end a stream (a video found through several inputs is kept once, by the ledger, when
the stage has finished), as do aggregate stages.

Before the first stage that needs workers, the executor starts and checks the resources of every stage still to
run against what it has (`executors.check_resources`): a request that can never be met stops the run with one
line per stage instead of waiting forever. A local run dir on a Ray cluster of several nodes must be shared by
all of them (`--shared-fs`, checked with a marker file each node must see: `check_run_dir`). `run.env` is set in
the driver's environment for the run, and the executor forwards it, with the default list of
`config.FORWARDED_ENV_PREFIXES`, to every worker.

Each run records its effective config and the kept `--set` values in `run.json` (`humove.run_config`), and
appends its notices and plain progress lines to `run.log` (`humove.progress`).

Why not Ray Data's own checkpointing: it skips rows by id for read → map → write pipelines, but our resume
needs per-item status (retry errors up to a count, quarantine, keep rejections with reasons), fan-out (one
video → many clips), threshold re-decisions and cross-stage invalidation, so the ledger keeps that state.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from humove.config import PipelineConfig, ResolvedStage, stage_sources, worker_environment
from humove.executors import EXECUTORS, StreamStage, make_executor
from humove.items import ATTEMPT, LISTING_SCHEMA, WorkFile, all_items, listing_chunks
from humove.ledger import Ledger, ok_records, returning_memory
from humove.lock import RunLock
from humove.metrics import PrometheusProgress, check_metrics_port
from humove.progress import Fanout, Progress, ProgressLines, RunLog, progress_interval
from humove.run_config import RunSettings, effective_config, stored_settings
from humove.stage import AggregateStage, MapStage, StageContext, fingerprint
from humove.worker import decide_safely, finalize, records_to_table

REDECIDE_BATCH = 10_000  # records re-decided (as dicts) at a time


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


def stage_fingerprints(stages: list[ResolvedStage]) -> dict[str, dict]:
    """Per stage: `fingerprint` (class, version, record-schema version, config without thresholds, and the
    fingerprints of the stages it reads from), `decisions` (of its thresholds) and `reads` (`stage_sources`)."""
    prints: dict[str, dict] = {}
    for index, stage in enumerate(stages):
        sources = stage_sources(stages, index)
        value = fingerprint({
            "class": stage.ref, "version": str(stage.cls.version), "schema": stage.cls.schema.version,
            "config": stage.config.fingerprint_dict(),
            "reads": {name: prints[name]["fingerprint"] for name in sorted(sources)},
        })
        prints[stage.name] = {"fingerprint": value, "decisions": fingerprint(stage.config.decision_dict()),
                              "reads": sources}
    return prints


def _chained_fingerprints(stages: list[ResolvedStage]) -> dict[str, str]:
    """The fingerprints run dirs hold from before stages declared what they read: each one chained to the one
    before it (so any upstream change changed it). A stage whose state holds this value is unchanged."""
    prints, upstream = {}, ""
    for stage in stages:
        upstream = prints[stage.name] = fingerprint({
            "class": stage.ref, "version": str(stage.cls.version), "schema": stage.cls.schema.version,
            "config": stage.config.fingerprint_dict(), "upstream": upstream,
        })
    return prints


class Runner:
    def __init__(self, pipeline: PipelineConfig, stages: list[ResolvedStage], run_dir: str,
                 executor: str | None = None, ray_address: str | None = None, force: list[str] | None = None,
                 until: str | None = None, break_lock: bool = False, progress: Progress | None = None,
                 shared_fs: bool = False, progress_every_s: float | None = None,
                 settings: RunSettings | None = None, metrics_port: int | None = None,
                 metrics_host: str | None = None):
        """`progress`: the caller's display (the CLI's bars or lines); the run's log (`run.log`) gets plain
        progress lines every `progress_every_s` seconds (default: `progress.progress_interval()`) whatever it is.
        `metrics_port`, `metrics_host`: where the run's progress is also served as Prometheus metrics while it
        lasts (`humove.metrics`; default: `run.metrics_port`, `run.metrics_host`).
        `settings`: the `--set` values the run dir keeps and what to say about them
        (`run_config.load_run_pipeline`); None keeps those it has."""
        self.pipeline = pipeline
        self.stages = stages
        self.ledger = Ledger(run_dir, stage_classes={s.name: s.cls for s in stages})
        self.run_dir = self.ledger.run_dir
        self.executor_name = executor or pipeline.run.executor
        self.ray_address = ray_address or pipeline.run.ray_address
        self.force = list(force or [])
        self.until = until
        self.break_lock = break_lock
        self.shared_fs = shared_fs or pipeline.run.shared_fs
        self.progress = progress or Progress()
        self.progress_every_s = progress_interval(progress_every_s)
        self.settings = settings
        self.metrics_port = metrics_port or pipeline.run.metrics_port
        self.metrics_host = metrics_host or pipeline.run.metrics_host
        self.max_attempts = pipeline.run.max_attempts
        self._started_executor = None
        self._listing: Inputs | None = None  # the source's listed items (an index table), while its stages run
        self._kept: set[str] = set()  # stages kept although a stage before them was invalidated (this run)
        # Everything is checked here, before the run writes anything (lock, run.json, sample videos).
        names = [s.name for s in stages]
        for name in self.force + ([until] if until else []):
            if name not in names:
                raise ValueError(f"no stage {name!r} in pipeline {pipeline.name!r}; stages: {names}")
        if self.executor_name not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor_name!r}: use one of {', '.join(EXECUTORS)}")
        if self.ledger.storage.local and Path(self.run_dir).exists() and not Path(self.run_dir).is_dir():
            raise ValueError(f"run dir {self.run_dir} is a file, not a folder")
        if metrics_host and not self.metrics_port:
            raise ValueError(f"metrics host {metrics_host} needs a port: add --metrics-port PORT (or run.metrics_port)")
        if self.metrics_port:
            check_metrics_port(self.metrics_port, self.metrics_host)

    # Orchestration -------------------------------------------------------------------------------------------
    def run(self) -> list[StageResult]:
        """Run the stages in order. An OS error (disk full, read-only, permission) raises `RunStorageError`."""
        self._current = "run"  # what an OS error is blamed on: the stage running, or the run's own files
        try:
            with RunLock(self.run_dir, break_lock=self.break_lock) as lock:
                self.ledger.storage.guard = lock.check  # a run that lost its lock writes no more records
                with self._run_log(), self._run_environment():
                    return self._run_stages()
        except OSError as exc:
            raise RunStorageError(self._current, exc) from exc

    def _run_stages(self) -> list[StageResult]:
        for note in self.settings.notes if self.settings else []:
            self.progress.message(note)
        self._remove_temp_files()
        self.ledger.write_run_info({
            "pipeline": self.pipeline.name, "max_attempts": self.max_attempts,
            "stages": [{"name": s.name, "class": s.ref} for s in self.stages],
            "config": effective_config(self.pipeline, self.stages),
            "settings": stored_settings(self.ledger) if self.settings is None else self.settings.stored,
        })
        prints = stage_fingerprints(self.stages)
        self._invalidate_changed(prints)
        results = []
        last = next((i for i, s in enumerate(self.stages) if s.name == self.until), len(self.stages) - 1)
        start = 0
        while start <= last:
            segment = self._segment(start, last)
            self._current = segment[0].name
            if len(segment) > 1:
                results += self._run_stream(segment, prints)
            else:
                results.append(self._run_stage(segment[0], prints[segment[0].name]))
            # What `humove status` shows, on disk for duckdb / pandas; later stages' current inputs depend on
            # these, so all are rewritten.
            self.ledger.write_current()
            summaries = {summary.stage: summary
                         for summary in self.ledger.summary(self.max_attempts, last=segment[-1].name)}
            for stage in segment:
                self.progress.finish(stage.name, summaries.get(stage.name))
            start += len(segment)
            self._drop_listing()
        self._current = "run"
        return results

    def _segment(self, start: int, last: int) -> list[ResolvedStage]:
        """The stages run together from `start`: the consecutive map stages up to `last` when they stream (Ray
        executor, `run.streaming`), else the one stage. A stage whose records are not clips ends its segment: a
        video (or keyword) can be found through several inputs, and which of them keeps it is the ledger's
        decision (`Ledger._selection`) once the stage has finished; a clip's id comes from its one input."""
        if self.executor_name != "ray" or not self.pipeline.run.streaming:
            return [self.stages[start]]
        segment = []
        for stage in self.stages[start:last + 1]:
            # A stage kept while one before it runs everything again must not be handed all of that again.
            if not issubclass(stage.cls, MapStage) or (segment and stage.name in self._kept):
                break
            segment.append(stage)
            if stage.cls.schema.key != "clip_id":
                break
        return segment or [self.stages[start]]

    @contextlib.contextmanager
    def _run_log(self):
        """While the run lasts, every notice and plain progress lines (`progress.ProgressLines`) also go to
        `<run_dir>/run.log`, whatever the caller's display is."""
        display = self.progress
        metrics = PrometheusProgress(self.metrics_port, self.metrics_host) if self.metrics_port else None
        log = RunLog(self.ledger.storage, self.progress_every_s)
        lines = ProgressLines(log.write, self.progress_every_s)
        self.progress = Fanout(display, lines, *[metrics] if metrics else [])
        lines.message(f"run of pipeline {self.pipeline.name!r} ({', '.join(s.name for s in self.stages)}) on "
                      f"{self.run_dir}, executor {self.executor_name}")
        if metrics:
            self.progress.message(f"Prometheus metrics at {metrics.url}")
        try:
            yield
        except BaseException as exc:
            lines.message(f"run stopped: {type(exc).__name__}: {exc}".splitlines()[0])
            # The run's own error (a full disk, a lost lock) is the one to report, not the log's failing with it.
            with contextlib.suppress(Exception):
                lines.close()
                log.close()
            raise
        else:
            lines.message("run finished")
            lines.close()
            log.close()
        finally:
            if metrics:
                metrics.close()
            self.progress = display

    def _remove_temp_files(self) -> None:
        """Temp files of writes a killed run (SIGKILL, full disk) left behind; the lock is held, so none is live."""
        removed = self.ledger.remove_temp_files([s.name for s in self.stages])
        if removed:
            self.progress.message(f"removed {len(removed)} temp files left by an interrupted run")

    @contextlib.contextmanager
    def _run_environment(self):
        """`run.env` in the driver's environment while the run lasts (the workers get it from the executor)."""
        saved = {name: os.environ.get(name) for name in self.pipeline.run.env}
        replaced = sorted(name for name, value in self.pipeline.run.env.items() if saved[name] not in (None, value))
        if replaced:  # names only: values may be paths the user would rather not see in a log
            self.progress.message(f"run.env replaces the value of {', '.join(replaced)} from the environment")
        os.environ.update(self.pipeline.run.env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _executor(self, stage: ResolvedStage):
        """Started on first use, so a resume with nothing left to do does not start Ray; then every stage from
        `stage` on (to `--until`) is checked against the resources the executor has, before any of them runs."""
        if self._started_executor is None:
            executor = make_executor(self.executor_name, self.ray_address, worker_environment(self.pipeline.run.env),
                                     self.pipeline.run.ray_connect_timeout_s, self.progress.message)
            if self.ledger.storage.local:
                executor.check_run_dir(self.run_dir, self.shared_fs)
            last = next((i for i, s in enumerate(self.stages) if s.name == self.until), len(self.stages) - 1)
            executor.check_resources(self.stages[self.stages.index(stage):last + 1],
                                     self.pipeline.run.wait_for_resources_s, self.progress.message)
            self._started_executor = executor
        return self._started_executor

    def _context(self, stage: ResolvedStage) -> StageContext:
        return StageContext(run_dir=self.run_dir, stage=stage.name)

    def _invalidate_changed(self, prints: dict[str, dict]) -> None:
        """Invalidate each stage that changed (its fingerprint, or `--force`) and each stage that reads from one
        that did, saying why; the others keep their records (their inputs still follow the upstream `ok` records,
        `Ledger.current`). A state written before stages declared what they read holds the chained fingerprint
        (`_chained_fingerprints`): that value for the current config means unchanged, and the state is updated."""
        chained = _chained_fingerprints(self.stages)
        changed: set[str] = set()
        invalidated: list[str] = []
        kept: list[str] = []
        for stage in self.stages:
            state = self.ledger.stage_state(stage.name)
            now = prints[stage.name]
            sources = {name: fields for name, fields in now["reads"].items() if name in changed}
            stored = (state or {}).get("fingerprint")
            if stage.name in self.force:
                why = "forced with --force"
            elif state and stored not in (now["fingerprint"], chained[stage.name]) or sources:
                why = _describe_change(state, stage, sources)
            else:
                if state and stored != now["fingerprint"]:
                    self._update_state(stage, state, now, stored)
                if invalidated and state:
                    kept.append(stage.name)
                continue
            changed.add(stage.name)
            if state or self.ledger.parts(stage.name):
                self.progress.message(f"stage {stage.name!r} {why}: invalidating {stage.name}")
                self.ledger.invalidate(stage.name)
                invalidated.append(stage.name)
        self._kept = set(kept)
        if kept:
            self.progress.message(f"kept {', '.join(kept)}: {'it reads' if len(kept) == 1 else 'they read'} "
                                  "nothing that changed")

    def _update_state(self, stage: ResolvedStage, state: dict, now: dict, chained: str) -> None:
        """An unchanged stage's state, from before stages declared what they read, given the new fingerprint (an
        aggregate's input signature too, where its inputs are still those it was made from)."""
        if state.get("input_signature"):
            inputs = all_items(self._input_table(stage, stage.cls(stage.config, self._context(stage))))
            if state["input_signature"] == self._input_signature(chained, inputs):
                state["input_signature"] = self._input_signature(now["fingerprint"], inputs)
        self.ledger.write_stage_state(stage.name, {**state, "fingerprint": now["fingerprint"], "reads": now["reads"]})

    def _input_signature(self, stage_fingerprint: str, inputs: list[dict]) -> str:
        """What an aggregate stage was made from: its fingerprint and its inputs as stored (artifact references
        relative to the run dir: a moved run dir is not a change)."""
        return fingerprint({"fingerprint": stage_fingerprint,
                            "inputs": sorted(fingerprint(self.ledger.relative_refs(item)) for item in inputs)})

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
            "schema_version": stage.cls.schema.version, "config": stage.config.redacted_dict(),
            **prints, **extra,
        })

    # Inputs --------------------------------------------------------------------------------------------------
    def _inputs(self, stage: ResolvedStage, instance) -> Inputs:
        """The stage's input items as a query on the ledger's index (`Inputs`): a source's listing (listed once
        per run: a listing may search or call a model), else the upstream `ok` records joined with the earlier
        stages' columns (`joined_inputs_query`)."""
        index = self.stages.index(stage)
        if index > 0:
            return joined_inputs_query(self.ledger, self.stages[:index])
        if not getattr(instance, "is_source", False):
            raise ValueError(f"stage {stage.name!r} is first but is not a source stage")
        if self._listing is None:
            numbered = 0

            def chunks():
                nonlocal numbered
                for chunk in listing_chunks(instance.list_inputs()):
                    order = pa.array(range(numbered, numbered + chunk.num_rows), pa.int64())
                    numbered += chunk.num_rows
                    yield chunk.append_column("_order", order)

            table = self.ledger.index_table(chunks(), LISTING_SCHEMA.append(pa.field("_order", pa.int64())))
            self._listing = Inputs(self.ledger, f"SELECT * FROM {table}", LISTING_SCHEMA, numbered, [table])
            if self.ledger.count_ids(table, distinct=True) != numbered:
                self._drop_listing()
                raise ValueError(f"stage {stage.name!r} listed duplicate input ids")
        return self._listing

    def _drop_listing(self) -> None:
        if self._listing is not None:
            self._listing.drop()
            self._listing = None

    def _input_table(self, stage: ResolvedStage, instance) -> pa.Table:
        """Every input item as one table: only for aggregate stages, which take their whole input at once."""
        inputs = self._inputs(stage, instance)
        try:
            return inputs.table()
        finally:
            if inputs is not self._listing:
                inputs.drop()

    # Map stages ----------------------------------------------------------------------------------------------
    def _run_map(self, stage: ResolvedStage, instance: MapStage, prints: dict[str, str]) -> StageResult:
        self._begin_map(stage, instance, prints)
        result, work = self._pending(stage, instance)
        self._drop_listing()  # not held while the stage runs: `work` has what it needs
        try:
            executor = self._executor(stage) if work.num_rows else None  # its checks print before the bars
            self.progress.start(stage.name, work.num_rows, result.skipped)
            if executor:
                self._execute(stage, instance, work, result)
        finally:
            work.remove()
        return result

    def _begin_map(self, stage: ResolvedStage, instance: MapStage, prints: dict[str, str]) -> None:
        """Before a map stage runs: a source records what it lists; changed thresholds are applied to the stored
        measures; the stage's state (fingerprint, config) is written."""
        if getattr(instance, "is_source", False):
            listing = self._inputs(stage, instance)
            self.ledger.write_listed_inputs(stage.name, (batch["input_id"] for batch in self.ledger.index_batches(
                f"SELECT input_id FROM ({listing.sql}) ORDER BY _order")))
        state = self.ledger.stage_state(stage.name) or {}
        if state and state.get("decisions") != prints["decisions"]:
            self._redecide(stage, instance)
        self._write_state(stage, prints)

    @returning_memory
    def _pending(self, stage: ResolvedStage, instance: MapStage,
                 since_ns: int | None = None) -> tuple[StageResult, WorkFile]:
        """The stage's work now, as a work file in its folder (remove it when done): the inputs still to run, with
        the attempt each runs as (`ATTEMPT`): those without a record (attempt 1), and those whose latest attempt
        has an `error` record below `max_attempts` (that attempt + 1); with `since_ns`, less the inputs with a
        record written since then (those a stream just ran). And a result counting the inputs it skips. Found by
        the ledger's index (duckdb) and written a row group at a time: the driver never holds a stage's inputs."""
        inputs = self._inputs(stage, instance)
        latest = self.ledger.latest_attempts(stage.name, since_ns)
        try:
            attempt = (f"CASE WHEN s.input_id IS NULL THEN 1 WHEN s.failed AND s.attempt < {int(self.max_attempts)} "
                       "THEN s.attempt + 1 END")
            recent = "" if since_ns is None else "AND NOT coalesce(s.recent, false)"
            rows = self.ledger.index_batches(
                f"SELECT i.* EXCLUDE (_order), ({attempt})::INTEGER AS {ATTEMPT} FROM ({inputs.sql}) i "
                f"LEFT JOIN {latest} s ON i.input_id = s.input_id WHERE ({attempt}) IS NOT NULL {recent} "
                "ORDER BY i._order")
            work = WorkFile.write(self.ledger.storage, self.ledger.storage.join(stage.name),
                                  inputs.schema.append(pa.field(ATTEMPT, pa.int32())), rows, stage.resources.batch_size)
        finally:
            self.ledger.drop_table(latest)
            if inputs is not self._listing:
                inputs.drop()
        return StageResult(stage.name, skipped=inputs.count - work.num_rows), work

    def _execute(self, stage: ResolvedStage, instance: MapStage, work: WorkFile, result: StageResult) -> None:
        """Run `work` on the executor, one stage: each finished batch is appended to the ledger at once."""
        config = stage.config.model_dump(mode="json")
        batches = self._executor(stage).map(stage.ref, config, self.run_dir, work, stage.resources,
                                            prepare_resources=instance.prepare_resources)
        for records in batches:
            self._persist(stage, instance, records, result)
        del batches
        self.ledger.compact(stage.name)

    def _persist(self, stage: ResolvedStage, instance: MapStage, records: list[dict], result: StageResult) -> int:
        """Append one batch of finished records; returns the number of items it finished."""
        self.ledger.append(stage.name, records_to_table(instance, records))
        items = len({r["input_id"] for r in records})
        result.processed += items
        self.progress.advance(stage.name, records, items)
        return items

    # Streaming -----------------------------------------------------------------------------------------------
    def _run_stream(self, segment: list[ResolvedStage], prints: dict[str, dict[str, str]]) -> list[StageResult]:
        """Consecutive map stages at once, as one streaming pipeline (`RayExecutor.stream`): each stage's pending
        work (as `_run_map` finds it) enters at its stage, and every `ok` record moves on to the next stage as soon
        as it is made. Records are appended to the ledger batch by batch as they come out. The stages a cluster
        cannot hold at once (GPUs, memory: `executors.streamable`) stream in turn. Afterwards each stage's
        remaining work, which only a lost batch leaves (a worker that died, a lost node), runs stage by stage with
        the executor's own recovery (`RayExecutor.map`: item by item, then `WorkerDied` records)."""
        started = time.time()
        instances = [stage.cls(stage.config, self._context(stage)) for stage in segment]
        for stage, instance in zip(segment, instances, strict=True):
            self._current = stage.name
            self._begin_map(stage, instance, prints[stage.name])
        pending = []
        try:
            for stage, instance in zip(segment, instances, strict=True):
                pending.append(self._pending(stage, instance))
            results = [result for result, _ in pending]
            if not any(work.num_rows for _, work in pending):
                for stage, result in zip(segment, results, strict=True):
                    self.progress.start(stage.name, 0, result.skipped)
                return results
            executor = self._executor(segment[0])
            held = executor.streamable(segment)
            if held < len(segment):  # the first `held` stages now; the others (their inputs made by then) after
                self.progress.message(f"stages {', '.join(s.name for s in segment[held:])} stream after "
                                      f"{', '.join(s.name for s in segment[:held])}: the cluster cannot hold every "
                                      "pool at once")
                for _, work in pending:
                    work.remove()
                pending = []
                return self._run_stream(segment[:held], prints) + self._run_stream(segment[held:], prints)
            for stage, (result, work) in zip(segment, pending, strict=True):
                self.progress.start(stage.name, work.num_rows, result.skipped)
            expected = [work.num_rows for _, work in pending]  # items each stage must finish: its work + what it is fed
            first = self.stages.index(segment[0])
            stream = [StreamStage(stage.name, stage.ref, stage.config.model_dump(mode="json"), stage.resources,
                                  instance.prepare_resources, carry_item=first + position > 0)
                      for position, (stage, instance) in enumerate(zip(segment, instances, strict=True))]
            streamed_ns = time.time_ns()  # the records the stream writes are in the parts written from now on
            for finished in executor.stream(stream, self.run_dir, [work for _, work in pending]):
                for position, per_item in finished.items():
                    stage, instance = segment[position], instances[position]
                    self._current = stage.name
                    records = [record for records in per_item for record in records]
                    self._persist(stage, instance, records, results[position])
                    expected[position] -= len(per_item)
                    if position + 1 < len(segment):
                        fed = sum(1 for record in records if record["status"] == "ok")
                        expected[position + 1] += fed
                        self.progress.grow(segment[position + 1].name, fed)
        finally:
            for _, work in pending:
                work.remove()
        # Only a lost batch leaves items unfinished; from the first stage it hit on, the ledger says what is left:
        # the stage's work now, less the items the stream ran (`_pending(since_ns=...)`), before it is compacted.
        lost_from = next((position for position, left in enumerate(expected) if left > 0), len(segment))
        for position, (stage, instance) in enumerate(zip(segment, instances, strict=True)):
            self._current = stage.name
            if position < lost_from:
                self.ledger.compact(stage.name)
                continue
            _, work = self._pending(stage, instance, since_ns=streamed_ns)
            try:
                if work.num_rows:
                    self.progress.message(f"stage {stage.name!r}: {work.num_rows} items left by the stream run "
                                          "again")
                    self.progress.grow(stage.name, work.num_rows)
                    self._execute(stage, instance, work, results[position])
                else:
                    self.ledger.compact(stage.name)
            finally:
                work.remove()
        for result in results:
            result.seconds = time.time() - started
        return results

    def _redecide(self, stage: ResolvedStage, instance: MapStage) -> None:
        """Thresholds changed: apply them to stored measures, no recompute."""
        table = self.ledger.records(stage.name)
        decided, changed = [], 0
        for start in range(0, table.num_rows, REDECIDE_BATCH):
            old = table.slice(start, REDECIDE_BATCH)
            rows = [decide_safely(instance, row) for row in old.to_pylist()]
            changed += sum(1 for status, row in zip(old["status"].to_pylist(), rows, strict=True)
                           if status != row["status"])
            decided.append(records_to_table(instance, rows))
        self.ledger.replace(stage.name, pa.concat_tables(decided) if decided else table)
        self.progress.message(f"stage {stage.name!r}: thresholds changed, re-decided {table.num_rows} records "
                              f"without recomputing ({changed} changed status)")

    # Aggregate stages ----------------------------------------------------------------------------------------
    def _run_aggregate(self, stage: ResolvedStage, instance: AggregateStage, prints: dict[str, str]) -> StageResult:
        """Rerun whole when the inputs or fingerprint changed, or when items failed with attempts left."""
        inputs = all_items(self._input_table(stage, instance))
        signature = self._input_signature(prints["fingerprint"], inputs)
        state = self.ledger.stage_state(stage.name) or {}
        stored = self.ledger.records(stage.name, columns=["status", "attempt"]).to_pylist()
        errors = [row["attempt"] for row in stored if row["status"] == "error"]
        retry = any(attempt < self.max_attempts for attempt in errors)
        if state.get("input_signature") == signature and stored and not retry:
            self.progress.start(stage.name, 0, len(inputs))
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
        return StageResult(stage.name, processed=len(inputs))


@dataclass
class Inputs:
    """A stage's input items as a query on the ledger's index (`Ledger.index`): `sql` selects the item columns
    (`schema`) and `_order` (the order they run in); `count` items; `tables`: the index tables it reads, dropped
    with `drop()`."""
    ledger: Ledger
    sql: str
    schema: pa.Schema
    count: int
    tables: list[str]

    def table(self) -> pa.Table:
        """Every item as one table (aggregate stages take their whole input at once)."""
        batches = self.ledger.index_batches(f"SELECT * EXCLUDE (_order) FROM ({self.sql}) ORDER BY _order")
        return pa.concat_tables([self.schema.empty_table(), *(pa.Table.from_batches([batch]).cast(self.schema)
                                                              for batch in batches)])

    def drop(self) -> None:
        for table in self.tables:
            self.ledger.drop_table(table)


def joined_inputs(ledger: Ledger, upstream: list[ResolvedStage]) -> pa.Table:
    """`joined_inputs_query` as one table."""
    inputs = joined_inputs_query(ledger, upstream)
    try:
        return inputs.table()
    finally:
        inputs.drop()


def joined_inputs_query(ledger: Ledger, upstream: list[ResolvedStage]) -> Inputs:
    """The last upstream stage's `ok` records as input items (`input_id` and the stage's key = the record's id),
    each joined with the stage-specific columns of every earlier stage, looked up by that stage's key
    (`video_id` or `clip_id`); a column two stages share comes from the nearer one. Each stage's current `ok`
    records are read into the ledger's index a piece at a time, and joined there."""
    names = [stage.name for stage in upstream]
    tables: dict[str, str] = {}
    schemas = {}
    try:
        for stage, schema, _, pieces in ledger.stage_passes(lambda schema: schema.own_names):
            if stage in names:
                own = ["input_id", "id", *schema.own_names]
                arrow = schema.arrow
                tables[stage] = ledger.index_table((ok_records(piece).select(own) for piece in pieces),
                                                   pa.schema([arrow.field(name) for name in own]))
                schemas[stage] = schema
            if stage == names[-1]:  # the stages after it are not read
                break
    except BaseException:
        for table in tables.values():
            ledger.drop_table(table)
        raise
    last = upstream[-1]
    key = last.cls.schema.key
    columns: dict[str, tuple[str, pa.Field]] = {}  # name → (SQL expression, Arrow field)
    for name in schemas[last.name].own_names:
        if name != key:
            columns[name] = (f't0."{name}"', schemas[last.name].arrow.field(name))
    columns[key] = ("t0.id", pa.field(key, pa.string()))
    columns["input_id"] = ("t0.id", pa.field("input_id", pa.string()))
    joins = []
    for number, earlier in enumerate(reversed(upstream[:-1]), start=1):  # nearest first
        key = earlier.cls.schema.key
        if key not in columns:
            columns[key] = ("NULL::VARCHAR", pa.field(key, pa.string()))
        joins.append(f"LEFT JOIN {tables[earlier.name]} t{number} ON t{number}.id = {columns[key][0]}")
        for name in schemas[earlier.name].own_names:
            if name not in columns:
                columns[name] = (f't{number}."{name}"', schemas[earlier.name].arrow.field(name))
    select = ", ".join(f'{expression} AS "{name}"' for name, (expression, _) in columns.items())
    sql = (f"SELECT {select}, struct_pack(i := t0.input_id, id := t0.id) AS _order "
           f"FROM {tables[last.name]} t0 {' '.join(joins)}")
    count = ledger.index_value(f"SELECT count(*) FROM {tables[last.name]}")
    return Inputs(ledger, sql, pa.schema([field for _, field in columns.values()]), count, list(tables.values()))


def _describe_change(state: dict | None, stage: ResolvedStage, sources: dict[str, list[str] | None]) -> str:
    """Why a stage is invalidated: its own change (class, version, record schema, config), else the changed
    stages it reads (`sources`: {stage: the columns it reads of it, None for all})."""
    if state:
        if state.get("class") != stage.ref:
            return f"class changed ({state.get('class')} → {stage.ref})"
        if str(state.get("version")) != str(stage.cls.version):
            return f"version changed ({state.get('version')} → {stage.cls.version})"
        if state.get("schema_version") != stage.cls.schema.version:
            return f"record schema changed (v{state.get('schema_version')} → v{stage.cls.schema.version})"
        old = state.get("config", {})
        new = stage.config.redacted_dict()  # as `_write_state` stored it: no secret on disk
        unprinted = set(new) - set(stage.config.fingerprint_dict())  # thresholds, listings: no recompute
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in unprinted)
        if changed:
            return f"config changed ({', '.join(changed)})"
    if sources:
        return "reads " + "; ".join(f"{name} ({', '.join(fields) if fields else 'all of it'})"
                                    for name, fields in sources.items())
    return "changed upstream"

