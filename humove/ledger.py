"""The run directory's records: append-only Parquet parts per stage, read back as each input's latest result.

Layout of a run dir:
    run.json                       pipeline name and stage order (written at each run)
    <stage>/part-<ns>-<rand>.parquet   records, appended batch by batch as they finish (a crash keeps them)
    <stage>/_stage.json            the stage's fingerprint, config and version
    <stage>/_inputs.parquet        a source stage's currently listed input ids
    <stage>/current.parquet        the stage's current records (what `humove status` counts), for duckdb / pandas
    artifacts/<stage>/<id>.<ext>   large outputs (clips, motion files), written atomically

Reading rule: for each `input_id` the records of its latest attempt win (ties: the latest part). Two `ok`
records with the same `id` from different inputs (the same content twice) keep the first by `input_id`; the
others read as rejected `duplicate`.

Reading a run dir never imports code it names: `run.json` names each stage's class, but only built-in stages are
loaded from it. Other stages are read with the columns their Parquet parts hold, unless the caller passes the
classes (the engine, `humove status --pipeline FILE`) or opts in with `allow_custom_stages`.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from humove.registry import BUILTIN_STAGES, load_stage_class
from humove.schemas.records import COMMON_FIELDS, RecordSchema, RecordSchemaError
from humove.storage import TEMP_MARK, Storage

PART_PREFIX = "part-"
CURRENT_FILE = "current.parquet"


class LedgerError(ValueError):
    """A run dir's records cannot be read; the message names the file and what to do."""


@dataclass
class StageSummary:
    stage: str
    ok: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    error: int = 0
    quarantined: int = 0
    pending: int = 0

    @property
    def total(self) -> int:
        return self.ok + sum(self.rejected.values()) + self.error + self.quarantined + self.pending


class Ledger:
    """Records of one run dir (local path or object-store URL)."""

    def __init__(self, run_dir: str, stage_classes: dict[str, type] | None = None, allow_custom_stages: bool = False):
        """`stage_classes`: stage name → class, from a pipeline the caller trusts (the engine's own stages);
        `allow_custom_stages`: import the non-built-in classes `run.json` names (only for run dirs you trust)."""
        self.storage = Storage(run_dir)
        self.run_dir = self.storage.root
        self.stage_classes = dict(stage_classes or {})
        self.allow_custom_stages = allow_custom_stages

    # Run-level metadata ---------------------------------------------------------------------------------
    def run_info(self) -> dict:
        url = self.storage.join("run.json")
        if not self.storage.exists(url):
            raise FileNotFoundError(f"{self.run_dir} is not a humove run dir (no run.json)")
        return json.loads(self.storage.read_text(url))

    def write_run_info(self, info: dict) -> None:
        self.storage.write_text(self.storage.join("run.json"), json.dumps(info, indent=2, sort_keys=True))

    def stage_names(self) -> list[str]:
        return [s["name"] for s in self.run_info()["stages"]]

    def schema(self, stage: str) -> RecordSchema:
        """The stage's record schema: from the trusted classes, a built-in stage, or (custom stages, not opted
        in) the columns its stored parts hold, without importing its code."""
        if stage in self.stage_classes:
            return self.stage_classes[stage].schema
        refs = {s["name"]: s["class"] for s in self.run_info()["stages"]}
        ref = refs.get(stage, BUILTIN_STAGES.get(stage))
        if ref in BUILTIN_STAGES.values() or self.allow_custom_stages:
            return load_stage_class(ref or stage).schema
        return self._stored_schema(stage)

    def _stored_schema(self, stage: str) -> RecordSchema:
        """A schema read from the stage's first part (its own columns as written), or the common columns only."""
        parts = self.parts(stage)
        if not parts:
            return RecordSchema(stage, 0, "id")
        arrow = self._read(parts[0], schema_only=True)
        version = (arrow.metadata or {}).get(b"humove.schema_version", b"0")
        common = {f.name for f in COMMON_FIELDS}
        own = tuple(f for f in arrow if f.name not in common)
        return RecordSchema(stage, int(version), "id", own)

    def _read(self, part: str, schema_only: bool = False, columns: list[str] | None = None):
        """One part file (its schema only, or only some columns, if asked); an unreadable file raises a
        LedgerError naming it."""
        try:
            with self.storage.open(part) as handle:
                return pq.read_schema(handle) if schema_only else pq.read_table(handle, columns=columns)
        except pa.ArrowException as exc:  # not Parquet, truncated, corrupt
            raise LedgerError(f"{part}: unreadable record file ({exc}); move it out of the run dir to re-run "
                              "its items") from exc

    def stage_state(self, stage: str) -> dict | None:
        url = self.storage.join(stage, "_stage.json")
        return json.loads(self.storage.read_text(url)) if self.storage.exists(url) else None

    def write_stage_state(self, stage: str, state: dict) -> None:
        self.storage.write_text(self.storage.join(stage, "_stage.json"), json.dumps(state, indent=2, sort_keys=True))

    # Records ----------------------------------------------------------------------------------------------
    def parts(self, stage: str) -> list[str]:
        return [p for p in self.storage.list(self.storage.join(stage), ".parquet")
                if p.rsplit("/", 1)[-1].startswith(PART_PREFIX)]

    def append(self, stage: str, table: pa.Table) -> str | None:
        """Persist one finished batch of records atomically as a new part."""
        if table.num_rows == 0:
            return None
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        name = f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        return self.storage.write_bytes(self.storage.join(stage, name), buffer.getvalue())

    def write_listed_inputs(self, stage: str, input_ids: pa.Array | list[str]) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.table({"input_id": pa.array(input_ids, pa.string())}), buffer)
        self.storage.write_bytes(self.storage.join(stage, "_inputs.parquet"), buffer.getvalue())

    def listed_inputs(self, stage: str) -> pa.Array | None:
        """The input ids a source stage listed at its last run (None if it never recorded them)."""
        url = self.storage.join(stage, "_inputs.parquet")
        if not self.storage.exists(url):
            return None
        with self.storage.open(url) as handle:
            return pq.read_table(handle)["input_id"].combine_chunks()

    def records(self, stage: str, schema: RecordSchema | None = None, inputs: pa.Array | None = None,
                columns: list[str] | None = None) -> pa.Table:
        """Each input's latest records, duplicates resolved, optionally only for the given input ids, sorted by
        (`input_id`, `id`). Columns: the stage schema, or `columns` of it (and always `input_id`, `id`, `status`,
        `attempt`): callers that need a few columns of a large stage read only those."""
        schema = schema or self.schema(stage)
        if columns is not None:
            columns = list(dict.fromkeys(["input_id", "id", "status", "attempt", *columns]))
        tables = []
        for order, part in enumerate(self.parts(stage)):
            table = self._read_checked(part, schema, columns)
            tables.append(table.append_column("_part", pa.array(np.full(table.num_rows, order, np.int32))))
        if not tables:
            return _select(schema.empty(), columns)
        table = pa.concat_tables(tables).combine_chunks()
        if inputs is not None:
            table = table.filter(pc.is_in(table["input_id"], value_set=inputs))
        # Per input, the rows of its latest (attempt, part), as one sortable number; its maximum is looked up by
        # position (no join: Arrow joins do not carry the nested columns stages may have).
        order = pc.add(pc.multiply(table["attempt"].cast(pa.int64()), 1 << 32), table["_part"].cast(pa.int64()))
        latest = pa.table({"input_id": table["input_id"], "order": order}).group_by("input_id").aggregate(
            [("order", "max")])
        best = latest["order_max"].take(pc.index_in(table["input_id"], value_set=latest["input_id"]))
        keep = pc.equal(order, best)
        table = table.filter(keep).drop_columns(["_part"])
        # The first input (by `input_id`) with an `ok` record of an id keeps it; later ones read as duplicates.
        ok = pc.equal(table["status"], "ok")
        owners = pa.table({"id": table["id"].filter(ok), "input_id": table["input_id"].filter(ok)}).group_by(
            "id").aggregate([("input_id", "min")])
        first_input = owners["input_id_min"].take(pc.index_in(table["id"], value_set=owners["id"]))
        duplicate_of = pc.if_else(pc.and_(ok, pc.not_equal(table["input_id"], first_input)), first_input, None)
        order = pc.sort_indices(table.select(["input_id", "id"]),
                                sort_keys=[("input_id", "ascending"), ("id", "ascending")])
        return _mark_duplicates(table.take(order), duplicate_of.take(order))

    def _read_checked(self, part: str, schema: RecordSchema, columns: list[str] | None) -> pa.Table:
        """A part validated against the schema: whole (`schema.check`) or only `columns`, each cast to its type."""
        if columns is None:
            return schema.check(self._read(part), where=part)
        expected = schema.arrow
        unknown = [name for name in columns if name not in expected.names]
        if unknown:
            raise RecordSchemaError(f"stage {schema.stage!r} has no columns {unknown}")
        try:
            return self._read(part, columns=columns).cast(pa.schema([expected.field(name) for name in columns]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
            raise RecordSchemaError(f"stage {schema.stage!r} records {part}: {exc}") from exc

    def replace(self, stage: str, table: pa.Table) -> None:
        """Replace a stage's records with `table`, as one part (atomic publish, then old parts removed)."""
        old = self.parts(stage)
        self.append(stage, table)
        for part in old:
            self.storage.delete(part)

    def compact(self, stage: str) -> None:
        """Rewrite a stage's current records as one part (atomic publish, then old parts removed)."""
        self.replace(stage, self.records(stage))

    def write_current(self) -> None:
        """Write each stage's current records (`current()`: latest attempt per input, after threshold re-decisions
        and listing changes, duplicates marked) to `<stage>/current.parquet`, atomically: what `humove status`
        counts, for duckdb or pandas. Stages with no records yet get none. One stage in memory at a time."""
        for stage, table in self.iter_current():
            url = self.storage.join(stage, CURRENT_FILE)
            if table.num_rows == 0 and not self.parts(stage):
                self.storage.delete(url)
                continue
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            self.storage.write_bytes(url, buffer.getvalue())
            del table, buffer

    def remove_temp_files(self, stages: list[str]) -> list[str]:
        """Delete what interrupted writes left (`*.tmp-*`) under each stage's folder and its artifacts, and at the
        top of the run dir. Call only while holding the run lock: then no write is in progress."""
        removed = [p for p in self.storage.list(self.run_dir) if TEMP_MARK in p.rsplit("/", 1)[-1]]
        for path in removed:
            self.storage.delete(path)
        for stage in stages:
            removed += self.storage.remove_temp_files(self.storage.join(stage))
            removed += self.storage.remove_temp_files(self.storage.join("artifacts", stage))
        return removed

    def invalidate(self, stage: str) -> None:
        """Remove a stage's records and artifacts."""
        self.storage.delete(self.storage.join(stage), recursive=True)
        self.storage.delete(self.storage.join("artifacts", stage), recursive=True)

    # Summary -----------------------------------------------------------------------------------------------
    def current(self, columns=None) -> dict[str, pa.Table]:
        """Each stage's records restricted to its current inputs: what the source lists now, and for later
        stages what is still `ok` upstream (thresholds and listings may change). `columns`: a function of the
        stage's schema naming the columns to read (all if None)."""
        return dict(self.iter_current(columns))

    def iter_current(self, columns=None) -> Iterator[tuple[str, pa.Table]]:
        """`current()` stage by stage, holding only the upstream `ok` ids between stages."""
        upstream_ok: pa.Array | None = None
        for index, stage in enumerate(self.stage_names()):
            inputs = self.listed_inputs(stage) if index == 0 else upstream_ok
            schema = self.schema(stage)
            wanted = None if columns is None else ["status", *columns(schema)]
            table = self.records(stage, schema, inputs=inputs, columns=wanted)
            upstream_ok = pc.unique(table.filter(pc.equal(table["status"], "ok"))["id"])
            yield stage, table

    def summary(self, max_attempts: int | None = None) -> list[StageSummary]:
        info = self.run_info()
        max_attempts = max_attempts or info.get("max_attempts", 3)
        summaries = []
        previous_ok: pa.Array | None = None
        for stage, table in self.iter_current(lambda schema: ["reason", "attempt"]):
            status, attempt = table["status"], table["attempt"]
            summary = StageSummary(stage)
            summary.ok = _count(pc.equal(status, "ok"))
            rejected = table.filter(pc.equal(status, "rejected"))
            reasons = pc.fill_null(rejected["reason"], "unspecified").value_counts()
            summary.rejected = {row["values"]: row["counts"] for row in reasons.to_pylist()}
            errors = pc.equal(status, "error")
            summary.quarantined = _count(pc.and_(errors, pc.greater_equal(attempt, max_attempts)))
            summary.error = _count(errors) - summary.quarantined
            processed = pc.unique(table["input_id"])
            expected = self.listed_inputs(stage) if previous_ok is None else previous_ok
            if expected is not None:
                summary.pending = len(expected) - _count(pc.is_in(expected, value_set=processed))
            previous_ok = pc.unique(table.filter(pc.equal(status, "ok"))["id"])
            summaries.append(summary)
        return summaries


def _count(mask) -> int:
    """How many entries of a boolean array are true."""
    return int(pc.sum(mask.cast(pa.int64())).as_py() or 0)


def _mark_duplicates(table: pa.Table, duplicate_of: pa.Array) -> pa.Table:
    """Rows whose `duplicate_of` names an input (the one that holds the same id first) read as rejected
    `duplicate`; only the columns the table has are set."""
    duplicate = pc.is_valid(duplicate_of)
    if not pc.any(duplicate).as_py():
        return table
    detail = pc.binary_join_element_wise("same content as input '", duplicate_of, "'", "")
    schema = table.schema  # the parts of one stage keep one schema (nullability included)
    for name, value in (("status", "rejected"), ("reason", "duplicate"), ("detail", detail)):
        if name in table.column_names:
            column = pc.if_else(duplicate, value, table[name]).cast(pa.string())
            table = table.set_column(table.schema.get_field_index(name), name, column)
    return table.cast(schema)


def _select(table: pa.Table, columns: list[str] | None) -> pa.Table:
    return table if columns is None else table.select(columns)
