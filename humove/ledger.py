"""The run directory's records: append-only Parquet parts per stage, read back as each input's latest result.

Layout of a run dir:
    run.json                       pipeline name and stage order (written at each run)
    <stage>/part-<ns>-<rand>.parquet   records, appended batch by batch as they finish (a crash keeps them)
    <stage>/_stage.json            the stage's fingerprint, config and version
    <stage>/_inputs.parquet        a source stage's currently listed input ids
    <stage>/current.parquet        the stage's current records (what `humove status` counts), for duckdb / pandas
    artifacts/<stage>/<id>.<ext>   large outputs (clips, motion files), written atomically
    run.log                        each run's notices and progress lines

Records refer to artifacts relative to the run dir (`artifacts/shots/<id>.mp4` in a `*_path` column), so a run
dir copied or moved elsewhere (another folder, another bucket) still reads, reports, resumes and publishes: the
ledger stores a reference under the run dir's `artifacts/` relative and gives it back joined to the run dir it
was opened at. Paths outside the run dir (a user's own videos) and the absolute references of run dirs written
before are kept as they are.

Reading rule: for each `input_id` the records of its latest attempt win (ties: the latest part). Two `ok`
records with the same `id` from different inputs (the same content twice) keep the first by `input_id`; the
others read as rejected `duplicate`.

Reading a run dir never imports code it names: `run.json` names each stage's class, but only built-in stages are
loaded from it. Other stages are read with the columns their Parquet parts hold, unless the caller passes the
classes (the engine, `humove status --pipeline FILE`) or opts in with `allow_custom_stages`.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from humove.registry import BUILTIN_STAGES, builtin_schema, load_stage_class
from humove.schemas.records import COMMON_FIELDS, RecordSchema, RecordSchemaError
from humove.storage import TEMP_MARK, Storage, libc_function

PART_PREFIX = "part-"
ARTIFACTS = "artifacts"  # the run dir's folder of stage outputs that records refer to
REF_SUFFIX = "_path"  # record columns that may hold a reference to an artifact
CURRENT_FILE = "current.parquet"
ROW_GROUP = 65_536  # records per Parquet row group: how many are read at once
# Parquet metadata key of a part that `compact` wrote: only current rows (latest attempt, duplicates marked).
_CURRENT_ROWS = b"humove.current_rows"


_MALLOC_TRIM = libc_function("malloc_trim", [ctypes.c_size_t])
_MALLOPT = libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_MMAP_THRESHOLD_LOW = 128 * 1024  # glibc's initial value
_MMAP_THRESHOLD_HIGH = 32 * 1024 * 1024  # the most glibc's own adjustment reaches (64-bit)
_passes_open = 0


@contextlib.contextmanager
def _memory_returned():
    """Within (a pass over a stage's records): glibc maps every block above 128 KiB itself, so that what the pass
    frees goes back to the OS. glibc raises that threshold after each such free, up to 32 MiB, and the later large
    Arrow buffers then came from the heap and stayed there: reading the keys of 300,000 records kept 64 MB
    instead of 19 MB (`bench.bench_scale`). After the outermost pass: large blocks come from the heap, as glibc's
    own adjustment has them once it has freed a large block, so that stage code running in this process (the
    shards stage's clips, decoded frames) reuses memory instead of faulting in fresh pages (the shards stage took
    15-20 % longer with the low threshold). A no-op without glibc, or when the user set `MALLOC_MMAP_THRESHOLD_`."""
    global _passes_open
    if _MALLOPT is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        yield
        return
    if _passes_open == 0:
        _MALLOPT(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_LOW)
    _passes_open += 1
    try:
        yield
    finally:
        _passes_open -= 1
        if _passes_open == 0:
            _MALLOPT(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_HIGH)


def returning_memory(function):
    """Run `function` (a pass over records: Ledger methods, the engine's joins) inside `_memory_returned()`."""
    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with _memory_returned():
            return function(*args, **kwargs)

    return wrapped


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
        """`run.json`, checked (a run dir is untrusted input): a LedgerError names the file and what is wrong."""
        url = self.storage.join("run.json")
        if not self.storage.exists(url):
            raise FileNotFoundError(f"{self.run_dir} is not a humove run dir (no run.json)")
        try:
            info = json.loads(self.storage.read_bytes(url))
        except ValueError as exc:  # not UTF-8, not JSON
            raise LedgerError(f"{url} is not valid JSON: {exc}") from None
        problem = _run_info_problem(info)
        if problem:
            raise LedgerError(f"{url}: {problem} (not a run.json humove wrote)")
        return info

    def write_run_info(self, info: dict) -> None:
        self.storage.write_text(self.storage.join("run.json"), json.dumps(info, indent=2, sort_keys=True))

    def stage_names(self) -> list[str]:
        return [s["name"] for s in self.run_info()["stages"]]

    def schema(self, stage: str) -> RecordSchema:
        """The stage's record schema: from its class (`stage_class`), a built-in stage's from its schema module
        (`humove.schemas.<name>`: reading a run dir imports no model library), or (custom stages, not opted in)
        the columns its stored parts hold, without importing its code."""
        if stage not in self.stage_classes and self._class_ref(stage) == BUILTIN_STAGES.get(stage):
            return builtin_schema(stage)
        cls = self.stage_class(stage)
        return cls.schema if cls is not None else self._stored_schema(stage)

    def _class_ref(self, stage: str) -> str | None:
        return {s["name"]: s["class"] for s in self.run_info()["stages"]}.get(stage, BUILTIN_STAGES.get(stage))

    def stage_class(self, stage: str) -> type | None:
        """The stage's class where its code may be imported: a trusted class, a built-in stage, or a custom stage
        when opted in; None for a custom stage that is not."""
        if stage in self.stage_classes:
            return self.stage_classes[stage]
        ref = self._class_ref(stage)
        if ref in BUILTIN_STAGES.values() or self.allow_custom_stages:
            return load_stage_class(ref or stage)
        return None

    def _stored_schema(self, stage: str) -> RecordSchema:
        """A schema read from the stage's first part (its own columns as written), or the common columns only."""
        parts = self.parts(stage)
        if not parts:
            return RecordSchema(stage, 0, "id")
        with self._parquet(parts[0]) as reader:
            arrow = reader.schema_arrow
        version = (arrow.metadata or {}).get(b"humove.schema_version", b"0")
        common = {f.name for f in COMMON_FIELDS}
        own = tuple(f for f in arrow if f.name not in common)
        return RecordSchema(stage, int(version), "id", own)

    def stage_state(self, stage: str) -> dict | None:
        url = self.storage.join(stage, "_stage.json")
        if not self.storage.exists(url):
            return None
        try:
            state = json.loads(self.storage.read_bytes(url))
        except ValueError as exc:
            raise LedgerError(f"{url} is not valid JSON: {exc}") from None
        if not isinstance(state, dict):
            raise LedgerError(f"{url} is not a JSON object (not a _stage.json humove wrote)")
        return state

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
        pq.write_table(self._relative_refs(table), buffer, row_group_size=ROW_GROUP)
        return self.storage.write_bytes(self._new_part(stage), buffer.getvalue())

    def _new_part(self, stage: str) -> str:
        """The URL of a new part: named by the time of writing, so that listing order is write order."""
        return self.storage.join(stage, f"{PART_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet")

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

    @returning_memory
    def records(self, stage: str, schema: RecordSchema | None = None, inputs: pa.Array | None = None,
                columns: list[str] | None = None, ordered: bool = True) -> pa.Table:
        """Each input's latest records, duplicates resolved, optionally only for the given input ids, sorted by
        (`input_id`, `id`) (in write order if not `ordered`: no sorted copy, for callers that only count).
        Columns: the stage schema, or `columns` of it (and always `input_id`, `id`, `status`, `attempt`): callers
        that need a few columns of a large stage read only those."""
        schema = schema or self.schema(stage)
        columns = None if columns is None else _key_columns(columns)
        return _table_of(self._current_pieces(stage, schema, inputs, columns), schema, columns, ordered)

    def _current_pieces(self, stage: str, schema: RecordSchema, inputs: pa.Array | None,
                        columns: list[str] | None) -> Iterator[pa.Table]:
        """The stage's current records (`columns`, all if None), one row group of its parts at a time, in write
        order: a stage of millions of records is never read whole. The rows are chosen first on the key columns
        alone (`_selection`), except in a stage whose only part is its compaction: those rows are current already."""
        parts = self.parts(stage)
        if len(parts) == 1:
            with self._parquet(parts[0]) as reader:
                if (reader.schema_arrow.metadata or {}).get(_CURRENT_ROWS) == b"1":
                    for index in range(reader.num_row_groups):
                        table = self._checked(reader.read_row_group(index, columns=columns), schema, columns,
                                              parts[0])
                        yield table if inputs is None else table.filter(is_in(table["input_id"], inputs))
                    return
        selection = self._selection(parts, inputs)
        groups = selection["_group"].to_numpy()
        counts = np.bincount(groups, minlength=int(groups.max()) + 1 if len(groups) else 0)
        start, group = 0, 0
        for part in parts:
            with self._parquet(part) as reader:
                for index in range(reader.num_row_groups):
                    count = int(counts[group]) if group < len(counts) else 0
                    group += 1
                    if not count:
                        continue
                    rows = selection.slice(start, count)
                    start += count
                    table = self._checked(reader.read_row_group(index, columns=columns), schema, columns, part)
                    yield _mark_duplicates(table.take(rows["_row"]), rows["_duplicate_of"])

    def _selection(self, parts: list[str], inputs: pa.Array | None) -> pa.Table:
        """Which stored rows are current, read from the key columns only: per input (among `inputs`, if given)
        the rows of its latest (attempt, part). Columns `_group` (row group, counted over all parts), `_row`
        (in that group), `_duplicate_of`: for a later `ok` record of an id that an earlier input (by
        `input_id`) already holds, that input, else null. Sorted by group and row."""
        # Copied out `ROW_GROUP` rows at a time: the id columns of a small read hold on to all the buffers it read
        # (53 MB for the keys of 300,000 records in 1,172 parts, instead of 11 MB).
        keys = [rows.combine_chunks() for rows in _regrouped(self._keys(parts), ROW_GROUP)]
        if not keys:
            return pa.table({"_group": pa.array([], pa.int32()), "_row": pa.array([], pa.int32()),
                             "_duplicate_of": pa.array([], pa.string())})
        table = pa.concat_tables(keys).combine_chunks()
        del keys
        if inputs is not None:
            table = table.filter(is_in(table["input_id"], inputs))
        # Per input, the rows of its latest (attempt, part): one sort by (input_id, newest first), then runs of
        # equal input_id, in numpy (hash aggregations of millions of strings cost far more memory).
        order = pc.sort_indices(table.select(["input_id", "newest"]),
                                sort_keys=[("input_id", "ascending"), ("newest", "descending")])
        run_start = _run_starts(table["input_id"].take(order))
        newest = table["newest"].take(order).to_numpy()
        order = order.to_numpy()[newest == newest[run_start][np.cumsum(_first_of_runs(run_start, len(order))) - 1]]
        del newest, run_start
        if len(order) < table.num_rows:  # else every row is current (one attempt per input): no copy
            table = table.take(np.sort(order))  # back in group and row order
        return table.select(["_group", "_row"]).append_column("_duplicate_of", _duplicate_of(table))

    def _keys(self, parts: list[str]) -> Iterator[pa.Table]:
        """The key columns of every stored row, one row group at a time, for `_selection`."""
        group = 0
        for order, part in enumerate(parts):
            with self._parquet(part) as reader:
                for index in range(reader.num_row_groups):
                    table = reader.read_row_group(index, columns=["input_id", "id", "attempt", "status"])
                    yield pa.table({
                        "input_id": table["input_id"], "id": table["id"], "ok": pc.equal(table["status"], "ok"),
                        # Larger is newer: the attempt, then the part (parts are listed in write order).
                        "newest": pc.add(pc.multiply(table["attempt"].cast(pa.int64()), 1 << 32), order),
                        "_group": pa.array(np.full(table.num_rows, group, np.int32)),
                        "_row": pa.array(np.arange(table.num_rows, dtype=np.int32)),
                    })
                    group += 1

    @contextlib.contextmanager
    def _parquet(self, part: str):
        """A part opened for reading; an unreadable file raises a LedgerError naming it."""
        try:
            with self.storage.open(part) as handle:
                yield pq.ParquetFile(handle)
        except pa.ArrowException as exc:  # not Parquet, truncated, corrupt
            raise LedgerError(f"{part}: unreadable record file ({exc}); move it out of the run dir to re-run "
                              "its items") from exc

    def _checked(self, table: pa.Table, schema: RecordSchema, columns: list[str] | None, part: str) -> pa.Table:
        """Records read back, validated against the schema: whole (`schema.check`) or only `columns`, each cast
        to its type; artifact references resolved against this run dir (`_resolved_refs`)."""
        if columns is None:
            return self._resolved_refs(schema.check(table, where=part))
        expected = schema.arrow
        unknown = [name for name in columns if name not in expected.names]
        if unknown:
            raise RecordSchemaError(f"stage {schema.stage!r} has no columns {unknown}")
        try:
            table = table.cast(pa.schema([expected.field(name) for name in columns]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as exc:
            raise RecordSchemaError(f"stage {schema.stage!r} records {part}: {exc}") from exc
        return self._resolved_refs(table)

    # Artifact references ----------------------------------------------------------------------------------
    @property
    def _base(self) -> str:
        """The run dir with its trailing separator: what a stored reference is relative to."""
        return self.storage.join(ARTIFACTS)[:-len(ARTIFACTS)]

    def relative_ref(self, value):
        """A reference as stored: under this run dir's `artifacts/`, relative to the run dir; else as it is."""
        if isinstance(value, str) and value.startswith(self._base + ARTIFACTS + "/"):
            return value[len(self._base):]
        return value

    def relative_refs(self, item: dict) -> dict:
        """An item (a row of records) with its artifact references as stored: what does not change when the run
        dir moves."""
        return {key: self.relative_ref(value) if key.endswith(REF_SUFFIX) else value for key, value in item.items()}

    def resolved_ref(self, value):
        """A stored reference as a path or URL to read: a relative one (`artifacts/…`) under this run dir."""
        if isinstance(value, str) and value.startswith(ARTIFACTS + "/"):
            return self._base + value
        return value

    def _relative_refs(self, table: pa.Table) -> pa.Table:
        base = self._base
        return _map_refs(table, base + ARTIFACTS + "/", lambda column: pc.utf8_slice_codeunits(column, len(base)))

    def _resolved_refs(self, table: pa.Table) -> pa.Table:
        base = self._base
        return _map_refs(table, ARTIFACTS + "/", lambda column: pc.binary_join_element_wise(base, column, ""))

    @returning_memory
    def replace(self, stage: str, table: pa.Table) -> None:
        """Replace a stage's records with `table`, as one part (atomic publish, then old parts removed)."""
        old = self.parts(stage)
        self.append(stage, table)
        for part in old:
            self.storage.delete(part)

    @returning_memory
    def compact(self, stage: str) -> None:
        """Rewrite a stage's current records as one part, streamed (atomic publish, then old parts removed)."""
        old = self.parts(stage)
        schema = self.schema(stage)
        self._write_pieces(self._new_part(stage), schema, self._current_pieces(stage, schema, None, None),
                           current_rows=True)
        for part in old:
            self.storage.delete(part)

    def _write_pieces(self, url: str, schema: RecordSchema, pieces: Iterator[pa.Table],
                      current_rows: bool = False) -> None:
        """Write record tables to one Parquet file at `url`, atomically, streamed into the file
        (`Storage.write_with`), in row groups of `ROW_GROUP` records: the pieces of a compaction are the stage's
        appended batches, often a few hundred records each, and a file of thousands of tiny row groups costs a
        large footer and a read per group each time it is opened. `current_rows`: the file holds a compaction
        (marked for `_current_pieces`)."""
        arrow = schema.arrow
        if current_rows:
            arrow = arrow.with_metadata({**(arrow.metadata or {}), _CURRENT_ROWS: b"1"})

        def fill(handle) -> None:
            with pq.ParquetWriter(handle, arrow) as writer:
                for rows in _regrouped(pieces, ROW_GROUP):
                    writer.write_table(self._relative_refs(rows), row_group_size=ROW_GROUP)

        self.storage.write_with(url, fill)
        release_freed_memory()

    @returning_memory
    def write_current(self) -> None:
        """Write each stage's current records (`current()`: latest attempt per input, after threshold re-decisions
        and listing changes, duplicates marked) to `<stage>/current.parquet`, atomically: what `humove status`
        counts, for duckdb or pandas; in write order. Stages with no records yet get none. Streamed."""
        for stage, schema, _, pieces in self._stage_passes():
            url = self.storage.join(stage, CURRENT_FILE)
            if self.parts(stage):
                self._write_pieces(url, schema, pieces)
            else:
                self.storage.delete(url)

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

    def iter_current(self, columns=None, ordered: bool = True) -> Iterator[tuple[str, pa.Table]]:
        """`current()` stage by stage, holding only the upstream `ok` ids between stages (`ordered`: as in
        `records`)."""
        with _memory_returned():
            for stage, schema, _, pieces in self._stage_passes(columns):
                table = _table_of(pieces, schema, None if columns is None else columns(schema), ordered)
                yield stage, table
                del table  # not held while the next stage's records are read

    def _stage_passes(self, columns=None) -> Iterator[tuple[str, RecordSchema, pa.Array | None, Iterator]]:
        """(stage, schema, its current input ids or None, its current records one piece at a time), stage by
        stage: the inputs of the first stage are what its source lists now, those of a later stage the `ok` ids
        of the pieces of the stage before (consume them all before asking for the next stage). `columns`: a
        function of the schema naming the columns to read besides `input_id`, `id`, `status` and `attempt`
        (None: every column)."""
        upstream_ok: pa.Array | None = None
        stages = self.stage_names()
        for index, stage in enumerate(stages):
            inputs = self.listed_inputs(stage) if index == 0 else upstream_ok
            schema = self.schema(stage)
            wanted = None if columns is None else _key_columns(columns(schema))
            ok_ids: list[pa.Array] = []
            last = index == len(stages) - 1  # no stage after it needs its ok ids

            def pieces(stage=stage, schema=schema, inputs=inputs, wanted=wanted, ok_ids=ok_ids, last=last):
                for piece in self._current_pieces(stage, schema, inputs, wanted):
                    if not last:
                        ok_ids.append(ok_records(piece)["id"].combine_chunks())
                    yield piece

            yield stage, schema, inputs, pieces()
            upstream_ok = _unique(pa.chunked_array(ok_ids, pa.string()))
            del ok_ids, inputs
            release_freed_memory()

    @returning_memory
    def summary(self, max_attempts: int | None = None, last: str | None = None) -> list[StageSummary]:
        """Per stage (up to `last`, if given): counts of its current records by status (rejections by reason,
        errors that used up their attempts as quarantined) and how many current inputs have no record yet
        (pending). One piece of records at a time."""
        max_attempts = max_attempts or self.run_info().get("max_attempts", 3)
        summaries = []
        for stage, _, expected, pieces in self._stage_passes(lambda schema: ["reason"]):
            summary = StageSummary(stage)
            processed: list[pa.Array] = []
            for piece in pieces:
                status = piece["status"]
                summary.ok += _count(pc.equal(status, "ok"))
                reasons = pc.fill_null(piece.filter(pc.equal(status, "rejected"))["reason"], "unspecified")
                for row in reasons.value_counts().to_pylist():
                    summary.rejected[row["values"]] = summary.rejected.get(row["values"], 0) + row["counts"]
                errors = pc.equal(status, "error")
                quarantined = _count(pc.and_(errors, pc.greater_equal(piece["attempt"], max_attempts)))
                summary.quarantined += quarantined
                summary.error += _count(errors) - quarantined
                processed.append(piece["input_id"].combine_chunks())
            if expected is not None:
                seen = is_in(expected, pa.chunked_array(processed, pa.string()))
                summary.pending = len(expected) - _count(seen)
            summaries.append(summary)
            if stage == last:
                break
        return summaries


# A stage's name is a folder of the run dir: no separators, no `..`, nothing hidden.
_STAGE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def _run_info_problem(info) -> str | None:
    """What makes `info` (a parsed run.json) unusable, or None."""
    if not isinstance(info, dict):
        return f"the file holds a JSON {type(info).__name__}, not an object"
    stages = info.get("stages")
    if not isinstance(stages, list):
        return f"'stages' is {json.dumps(stages)[:40]}, not a list of stages"
    names = []
    for number, stage in enumerate(stages, start=1):
        name = stage.get("name") if isinstance(stage, dict) else None
        if not isinstance(name, str) or not _STAGE_NAME.fullmatch(name):
            return f"stage {number}'s name is {json.dumps(name)[:40]}, not a stage name (letters, digits, _ and -)"
        if not isinstance(stage.get("class"), str):
            return f"stage {name!r} names no class"
        names.append(name)
    if len(set(names)) != len(names):
        return f"a stage is named twice in {names}"
    attempts = info.get("max_attempts", 3)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        return f"'max_attempts' is {json.dumps(attempts)[:40]}, not a positive whole number"
    return None


def _map_refs(table: pa.Table, prefix: str, change) -> pa.Table:
    """`table` with `change` applied to the values that start with `prefix` in its `*_path` string columns."""
    for index, column_field in enumerate(table.schema):
        if not (column_field.name.endswith(REF_SUFFIX) and pa.types.is_string(column_field.type)):
            continue
        column = table.column(index)
        matches = pc.starts_with(column, prefix)
        if not pc.any(matches).as_py():
            continue
        table = table.set_column(index, column_field, pc.if_else(matches, change(column), column))
    return table


def release_freed_memory() -> None:
    """Give the memory freed by a pass over a large stage back to the OS: Arrow's allocator and glibc's both keep
    freed pages for reuse, so the next pass would start from the previous one's peak (`bench.bench_scale`: 35 MB
    of 180 MB at the end of a 700,000-record run). `malloc_trim` exists in glibc only; elsewhere this is a
    no-op."""
    pa.default_memory_pool().release_unused()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _regrouped(pieces: Iterator[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The pieces' rows in order, as tables of `rows` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += piece.num_rows
        while held >= rows:
            table = pa.concat_tables(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, held = ([rest] if rest.num_rows else []), rest.num_rows
    if held:
        yield pa.concat_tables(pending)


_SET_SLICE = 32_768  # values per hash set in `is_in` / `index_in`


def is_in(values, value_set) -> pa.Array:
    """`pc.is_in(values, value_set=value_set)`, with the value set hashed a slice at a time as in `index_in`. Not
    `is_valid(index_in(...))`: the boolean results take a bit per value, the positions eight bytes."""
    if len(value_set) <= _SET_SLICE:
        return pc.is_in(values, value_set=value_set)
    found = None
    for start in range(0, len(value_set), _SET_SLICE):
        part = pc.is_in(values, value_set=value_set.slice(start, _SET_SLICE))
        found = part if found is None else pc.or_(found, part)
    return found


def index_in(values, value_set) -> pa.Array:
    """`pc.index_in(values, value_set=value_set)` (the first position of each value in the set, null if absent),
    with the value set hashed a slice at a time: a hash set of strings takes about four times their bytes (28 MB
    for 300,000 ids), a slice's a tenth of that; each slice costs one more probe per value."""
    if len(value_set) <= _SET_SLICE:
        return pc.index_in(values, value_set=value_set)
    position = None
    for start in range(0, len(value_set), _SET_SLICE):
        part = pc.add(pc.index_in(values, value_set=value_set.slice(start, _SET_SLICE)), start)
        position = part if position is None else pc.coalesce(position, part)
    return position


def rows_where(rows, mask):
    """`rows.filter(mask)` (a table or an array), or `rows` itself when every entry of `mask` is true: no copy."""
    return rows if pc.all(mask).as_py() is not False else rows.filter(mask)


def ok_records(table: pa.Table) -> pa.Table:
    """The table's `ok` rows (`rows_where`)."""
    return rows_where(table, pc.equal(table["status"], "ok"))


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


def _unique(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The distinct values, sorted, from one sort: `pc.unique`'s hash table takes about nine times the bytes of
    the strings it holds (47 MB for 300,000 ids), a sort about one."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    ordered = values.take(pc.sort_indices(values))
    return ordered.take(_run_starts(ordered))


def _run_starts(values: pa.Array) -> np.ndarray:
    """Positions where a run of equal values starts, in a sorted array."""
    if len(values) == 0:
        return np.zeros(0, np.int64)
    changed = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1)).to_numpy(zero_copy_only=False)
    return np.concatenate([[0], np.flatnonzero(changed) + 1])


def _first_of_runs(run_start: np.ndarray, length: int) -> np.ndarray:
    first = np.zeros(length, bool)
    first[run_start] = True
    return first


def _duplicate_of(table: pa.Table) -> pa.Array:
    """For each row of `table` (`input_id`, `id`, `ok`): the input that holds its id first when this `ok` record
    repeats the id of an `ok` record of an earlier input (by `input_id`), else null."""
    # First a check on the ok ids alone (one sorted copy of them): in the usual case no id is held twice, and
    # nothing else is copied.
    ids = rows_where(table["id"].combine_chunks(), table["ok"])
    if len(ids) < 2 or len(_run_starts(ids.take(pc.sort_indices(ids)))) == len(ids):
        return pa.nulls(table.num_rows, pa.string())
    ok = np.flatnonzero(table["ok"].to_numpy(zero_copy_only=False))
    inputs = table["input_id"].take(ok)
    order = pc.sort_indices(pa.table({"id": ids, "input_id": inputs}),
                            sort_keys=[("id", "ascending"), ("input_id", "ascending")]).to_numpy()
    run_start = _run_starts(ids.take(order))
    # Some id is held twice: rare, so Python from here is fine.
    duplicate_of = np.full(table.num_rows, None, object)
    owner = inputs.take(order).to_numpy(zero_copy_only=False)
    first = owner[run_start][np.cumsum(_first_of_runs(run_start, len(order))) - 1]
    for row, holder, own in zip(ok[order], first, owner, strict=True):
        if holder != own:
            duplicate_of[row] = holder
    return pa.array(duplicate_of, pa.string())


def _key_columns(columns: list[str]) -> list[str]:
    """`columns` after the ones every read includes: `input_id`, `id`, `status`, `attempt`."""
    return list(dict.fromkeys(["input_id", "id", "status", "attempt", *columns]))


def _table_of(pieces: Iterator[pa.Table], schema: RecordSchema, columns: list[str] | None,
              ordered: bool) -> pa.Table:
    """The pieces as one table (`_key_columns(columns)` of the schema, all if None), sorted by (`input_id`,
    `id`) if `ordered`."""
    pieces = list(pieces)
    if not pieces:
        empty = schema.empty()
        return empty if columns is None else empty.select(_key_columns(columns))
    table = pa.concat_tables(pieces)
    del pieces
    if not ordered:
        return table
    order = pc.sort_indices(table.select(["input_id", "id"]),
                            sort_keys=[("input_id", "ascending"), ("id", "ascending")])
    # Column by column, each unsorted column let go once sorted: the table is never held twice.
    arrow, columns = table.schema, table.columns
    del table
    for index, column in enumerate(columns):
        columns[index] = column.take(order)
        del column
    return pa.Table.from_arrays(columns, schema=arrow)
