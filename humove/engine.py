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
import pyarrow.compute as pc

from humove.config import PipelineConfig, ResolvedStage, stage_sources, worker_environment
from humove.executors import EXECUTORS, StreamStage, make_executor
from humove.items import ATTEMPT, all_items, listing_table
from humove.ledger import (
    Ledger,
    index_in,
    is_in,
    ok_records,
    release_freed_memory,
    returning_memory,
    rows_where,
)
from humove.lock import RunLock
from humove.metrics import PrometheusProgress, check_metrics_port
from humove.progress import Fanout, Progress, ProgressLines, RunLog, progress_interval
from humove.run_config import RunSettings, effective_config, stored_settings
from humove.schemas.records import COMMON_NAMES
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
        self._listing: pa.Table | None = None  # the source's listed items, while its stages run
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
            self._listing = None
        self._current = "run"
        return results

    def _segment(self, start: int, last: int) -> list[ResolvedStage]:
        """The stages run together from `start`: the consecutive map stages up to `last` when they stream (Ray
        executor, `run.streaming`), else the one stage. A stage whose records are not clips ends its segment: a
        video (or keyword) can be found through several inputs, and which of them keeps it is the ledger's
        decision (`ledger._duplicate_of`) once the stage has finished; a clip's id comes from its one input."""
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
            inputs = all_items(self._inputs(stage, stage.cls(stage.config, self._context(stage))))
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
    def _inputs(self, stage: ResolvedStage, instance) -> pa.Table:
        """The stage's input items as an Arrow table (`humove.items`): a source's listing, else the upstream
        `ok` records joined with the earlier stages' columns."""
        index = self.stages.index(stage)
        if index == 0:
            if not getattr(instance, "is_source", False):
                raise ValueError(f"stage {stage.name!r} is first but is not a source stage")
            if self._listing is None:  # listed once per run (a listing may search or call a model)
                items = listing_table(instance.list_inputs())
                if pc.count_distinct(items["input_id"]).as_py() != items.num_rows:
                    raise ValueError(f"stage {stage.name!r} listed duplicate input ids")
                self._listing = items
            return self._listing
        return joined_inputs(self.ledger, self.stages[:index])

    # Map stages ----------------------------------------------------------------------------------------------
    def _run_map(self, stage: ResolvedStage, instance: MapStage, prints: dict[str, str]) -> StageResult:
        self._begin_map(stage, instance, prints)
        result, work = self._pending(stage, instance)
        self._listing = None  # not held while the stage runs: `work` has what it needs
        executor = self._executor(stage) if work.num_rows else None  # its checks print before the bars
        self.progress.start(stage.name, work.num_rows, result.skipped)
        if executor:
            self._execute(stage, instance, work, result)
        return result

    def _begin_map(self, stage: ResolvedStage, instance: MapStage, prints: dict[str, str]) -> None:
        """Before a map stage runs: a source records what it lists; changed thresholds are applied to the stored
        measures; the stage's state (fingerprint, config) is written."""
        if getattr(instance, "is_source", False):
            self.ledger.write_listed_inputs(stage.name, self._inputs(stage, instance)["input_id"].combine_chunks())
        state = self.ledger.stage_state(stage.name) or {}
        if state and state.get("decisions") != prints["decisions"]:
            self._redecide(stage, instance)
        self._write_state(stage, prints)

    def _pending(self, stage: ResolvedStage, instance: MapStage,
                 exclude: list[pa.Array] | None = None) -> tuple[StageResult, pa.Table]:
        """The stage's work now (`_work`), less the input ids in `exclude` (those a stream just ran), and a
        result counting the inputs it skips."""
        inputs = self._inputs(stage, instance)
        work = self._work(stage, inputs)
        if exclude:
            work = rows_where(work, pc.invert(is_in(work["input_id"], pa.chunked_array(exclude, pa.string()))))
        result = StageResult(stage.name, skipped=inputs.num_rows - work.num_rows)
        del inputs  # `work` is a filtered copy: one table of the stage's inputs is held while it runs, not two
        release_freed_memory()  # what reading and joining the records left
        return result, work

    def _execute(self, stage: ResolvedStage, instance: MapStage, work: pa.Table, result: StageResult) -> None:
        """Run `work` on the executor, one stage: each finished batch is appended to the ledger at once."""
        config = stage.config.model_dump(mode="json")
        batches = self._executor(stage).map(stage.ref, config, self.run_dir, work, stage.resources,
                                            prepare_resources=instance.prepare_resources)
        for records in batches:
            self._persist(stage, instance, records, result)
        del work, batches  # not held while the stage's records are compacted
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
        pending = [self._pending(stage, instance) for stage, instance in zip(segment, instances, strict=True)]
        results = [result for result, _ in pending]
        if not any(work.num_rows for _, work in pending):
            for stage, result in zip(segment, results, strict=True):
                self.progress.start(stage.name, 0, result.skipped)
            return results
        executor = self._executor(segment[0])
        held = executor.streamable(segment)
        if held < len(segment):  # the first `held` stages now; the others (their inputs made by then) after them
            self.progress.message(f"stages {', '.join(s.name for s in segment[held:])} stream after "
                                  f"{', '.join(s.name for s in segment[:held])}: the cluster cannot hold every "
                                  "pool at once")
            del pending, results
            return self._run_stream(segment[:held], prints) + self._run_stream(segment[held:], prints)
        for stage, (result, work) in zip(segment, pending, strict=True):
            self.progress.start(stage.name, work.num_rows, result.skipped)
        ran: list[list[pa.Array]] = [[] for _ in segment]
        expected = [work.num_rows for _, work in pending]  # items each stage must finish: its work + what it is fed
        first = self.stages.index(segment[0])
        stream = [StreamStage(stage.name, stage.ref, stage.config.model_dump(mode="json"), stage.resources,
                              instance.prepare_resources, carry_item=first + position > 0)
                  for position, (stage, instance) in enumerate(zip(segment, instances, strict=True))]
        for finished in executor.stream(stream, self.run_dir, [work for _, work in pending]):
            for position, per_item in finished.items():
                stage, instance = segment[position], instances[position]
                self._current = stage.name
                records = [record for records in per_item for record in records]
                self._persist(stage, instance, records, results[position])
                ran[position].append(pa.array([records[0]["input_id"] for records in per_item if records],
                                               pa.string()))
                expected[position] -= len(per_item)
                if position + 1 < len(segment):
                    fed = sum(1 for record in records if record["status"] == "ok")
                    expected[position + 1] += fed
                    self.progress.grow(segment[position + 1].name, fed)
        del pending
        # Only a lost batch leaves items unfinished; from the first stage it hit on, the ledger says what is left.
        lost_from = next((position for position, left in enumerate(expected) if left > 0), len(segment))
        for position, (stage, instance) in enumerate(zip(segment, instances, strict=True)):
            self._current = stage.name
            self.ledger.compact(stage.name)
            if position < lost_from:
                continue
            _, work = self._pending(stage, instance, exclude=ran[position])
            ran[position] = []
            if work.num_rows:
                self.progress.message(f"stage {stage.name!r}: {work.num_rows} items left by the stream run again")
                self.progress.grow(stage.name, work.num_rows)
                self._execute(stage, instance, work, results[position])
        for result in results:
            result.seconds = time.time() - started
        return results

    @returning_memory
    def _work(self, stage: ResolvedStage, inputs: pa.Table) -> pa.Table:
        """The inputs still to run, with the attempt each runs as (`ATTEMPT`): those without a record (attempt
        1), and those whose latest attempt has an `error` record below `max_attempts` (that attempt + 1)."""
        stored = self.ledger.records(stage.name, columns=["status", "attempt"], ordered=False)
        stored = stored.append_column("failed", pc.equal(stored["status"], "error"))
        latest = stored.group_by("input_id").aggregate([("attempt", "max"), ("failed", "any")])
        position = index_in(inputs["input_id"], latest["input_id"])
        attempt = latest["attempt_max"].take(position)
        retry = pc.and_(latest["failed_any"].take(position), pc.less(attempt, self.max_attempts))
        next_attempt = pc.if_else(pc.is_null(position), 1, pc.if_else(retry, pc.add(attempt, 1), None))
        work = inputs.append_column(ATTEMPT, next_attempt.cast(pa.int32()))
        return rows_where(work, pc.is_valid(work[ATTEMPT]))

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
        inputs = all_items(self._inputs(stage, instance))
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


@returning_memory
def joined_inputs(ledger: Ledger, upstream: list[ResolvedStage]) -> pa.Table:
    """The last upstream stage's `ok` records as input items (`input_id` and the stage's key = the record's id),
    each joined with the stage-specific columns of every earlier stage, looked up by that stage's key
    (`video_id` or `clip_id`); a column two stages share comes from the nearer one."""
    last = upstream[-1]
    tables = {}
    for stage, table in ledger.iter_current(lambda schema: schema.own_names):  # common columns are not passed on
        tables[stage] = table
        if stage == last.name:  # the stages after it are not read
            break
    ok = ok_records(tables.pop(last.name))  # each stage's table is let go once used: one held at a time
    joined = ok.select([c for c in ok.column_names if c not in COMMON_NAMES and c != last.cls.schema.key])
    joined = joined.append_column(last.cls.schema.key, ok["id"]).append_column("input_id", ok["id"])
    for earlier in reversed(upstream[:-1]):  # nearest first: its key column may come from a nearer stage
        table = ok_records(tables.pop(earlier.name))
        key = earlier.cls.schema.key
        if key not in joined.column_names:
            joined = joined.append_column(key, pa.nulls(joined.num_rows, pa.string()))
        # By position, not an Arrow join: joins do not carry the nested columns stages may have.
        position = index_in(joined[key], table["id"])
        for column in table.column_names:
            if column not in COMMON_NAMES and column not in joined.column_names:
                joined = joined.append_column(column, table[column].take(position))
    return joined


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

