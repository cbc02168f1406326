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
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from humove.registry import BUILTIN_STAGES, load_stage_class
from humove.schemas.records import COMMON_FIELDS, RecordSchema
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

    def _read(self, part: str, schema_only: bool = False):
        """One part file (its schema only, if asked); an unreadable file raises a LedgerError naming it."""
        try:
            with self.storage.open(part) as handle:
                return pq.read_schema(handle) if schema_only else pq.read_table(handle)
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

    def raw(self, stage: str, schema: RecordSchema | None = None) -> pa.Table:
        """Every stored record of a stage, in write order, validated against the stage schema."""
        schema = schema or self.schema(stage)
        tables = []
        for order, part in enumerate(self.parts(stage)):
            table = schema.check(self._read(part), where=part)
            tables.append(table.append_column("_part", pa.array([order] * table.num_rows, pa.int32())))
        if not tables:
            empty = schema.empty()
            return empty.append_column("_part", pa.array([], pa.int32()))
        return pa.concat_tables(tables)

    def write_listed_inputs(self, stage: str, input_ids: list[str]) -> None:
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

    def records(self, stage: str, schema: RecordSchema | None = None, inputs: pa.Array | None = None) -> pa.Table:
        """Each input's latest records, duplicates resolved, optionally only for the given input ids.
        Columns: the stage schema."""
        table = self.raw(stage, schema)
        if inputs is not None:
            table = table.filter(pc.is_in(table["input_id"], value_set=inputs))
        if table.num_rows == 0:
            return table.drop_columns(["_part"])
        # Keep, per input, the rows of its latest (attempt, part); done in Python because Arrow joins
        # do not carry nested columns that later stages may have.
        keys = list(zip(table["input_id"].to_pylist(), table["attempt"].to_pylist(),
                        table["_part"].to_pylist(), strict=True))
        best: dict[str, tuple[int, int]] = {}
        for input_id, attempt, part in keys:
            if (attempt, part) > best.get(input_id, (-1, -1)):
                best[input_id] = (attempt, part)
        keep = [row for row, (input_id, attempt, part) in enumerate(keys) if best[input_id] == (attempt, part)]
        table = table.take(pa.array(keep, pa.int64())).drop_columns(["_part"])
        table = table.sort_by([("input_id", "ascending"), ("id", "ascending")])
        return _mark_duplicates(table)

    def replace(self, stage: str, table: pa.Table) -> None:
        """Compact a stage's records into one part (atomic publish, then old parts removed)."""
        old = self.parts(stage)
        self.append(stage, table)
        for part in old:
            self.storage.delete(part)

    def write_current(self) -> None:
        """Write each stage's current records (`current()`: latest attempt per input, after threshold re-decisions
        and listing changes, duplicates marked) to `<stage>/current.parquet`, atomically: what `humove status`
        counts, for duckdb or pandas. Stages with no records yet get none."""
        for stage, table in self.current().items():
            url = self.storage.join(stage, CURRENT_FILE)
            if table.num_rows == 0 and not self.parts(stage):
                self.storage.delete(url)
                continue
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            self.storage.write_bytes(url, buffer.getvalue())

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
    def current(self) -> dict[str, pa.Table]:
        """Each stage's records restricted to its current inputs: what the source lists now, and for later
        stages what is still `ok` upstream (thresholds and listings may change)."""
        result: dict[str, pa.Table] = {}
        upstream_ok: pa.Array | None = None
        for index, stage in enumerate(self.stage_names()):
            inputs = self.listed_inputs(stage) if index == 0 else upstream_ok
            table = self.records(stage, inputs=inputs)
            result[stage] = table
            upstream_ok = pc.unique(table.filter(pc.equal(table["status"], "ok"))["id"])
        return result

    def summary(self, max_attempts: int | None = None) -> list[StageSummary]:
        info = self.run_info()
        max_attempts = max_attempts or info.get("max_attempts", 3)
        summaries = []
        previous_ok: set[str] | None = None
        for stage, table in self.current().items():
            rows = table.select(["input_id", "id", "status", "reason", "attempt"]).to_pylist()
            summary = StageSummary(stage)
            for row in rows:
                if row["status"] == "ok":
                    summary.ok += 1
                elif row["status"] == "rejected":
                    reason = row["reason"] or "unspecified"
                    summary.rejected[reason] = summary.rejected.get(reason, 0) + 1
                elif row["attempt"] >= max_attempts:
                    summary.quarantined += 1
                else:
                    summary.error += 1
            processed = {row["input_id"] for row in rows}
            if previous_ok is None:
                listed = self.listed_inputs(stage)
                summary.pending = len(set(listed.to_pylist()) - processed) if listed is not None else 0
            else:
                summary.pending = len(previous_ok - processed)
            previous_ok = {row["id"] for row in rows if row["status"] == "ok"}
            summaries.append(summary)
        return summaries


def _mark_duplicates(table: pa.Table) -> pa.Table:
    """Later `ok` records whose id was already seen read as rejected `duplicate` (table sorted by input_id)."""
    status = table["status"].to_pylist()
    ids = table["id"].to_pylist()
    inputs = table["input_id"].to_pylist()
    first_input: dict[str, str] = {}
    duplicate_rows = []
    for row, (record_id, state) in enumerate(zip(ids, status, strict=True)):
        if state != "ok":
            continue
        if record_id in first_input and first_input[record_id] != inputs[row]:
            duplicate_rows.append(row)
        else:
            first_input.setdefault(record_id, inputs[row])
    if not duplicate_rows:
        return table
    reason = table["reason"].to_pylist()
    detail = table["detail"].to_pylist()
    for row in duplicate_rows:
        status[row] = "rejected"
        reason[row] = "duplicate"
        detail[row] = f"same content as input {first_input[ids[row]]!r}"
    table = table.set_column(table.schema.get_field_index("status"), "status", pa.array(status, pa.string()))
    table = table.set_column(table.schema.get_field_index("reason"), "reason", pa.array(reason, pa.string()))
    return table.set_column(table.schema.get_field_index("detail"), "detail", pa.array(detail, pa.string()))
