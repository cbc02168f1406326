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

import collections
import contextlib
import ctypes
import functools
import io
import itertools
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
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
INDEX_MEMORY = "64MB"  # the ledger's duckdb index (`Ledger.index`): what it holds beyond spills to disk
SMALL_KEYS = 65_536  # a stage of at most this many stored rows has its current rows chosen in memory
_PART_SHIFT = 32  # a stored row's position (`pos`): its part's number (in write order) << 32 | its row in the part


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
        self._index = None  # `index`, opened on first use
        self._index_count = 0

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

    def write_listed_inputs(self, stage: str, input_ids: pa.Array | list[str] | Iterable[pa.Array]) -> None:
        """Record the ids a source stage lists now: an array, or arrays of them one after another (streamed)."""
        if isinstance(input_ids, (pa.Array, pa.ChunkedArray, list)):
            input_ids = [input_ids]
        schema = pa.schema([("input_id", pa.string())])

        def fill(handle) -> None:
            with pq.ParquetWriter(handle, schema) as writer:
                for ids in input_ids:
                    writer.write_table(pa.table({"input_id": pa.array(ids, pa.string())}), row_group_size=ROW_GROUP)

        self.storage.write_with(self.storage.join(stage, "_inputs.parquet"), fill)

    def listed_inputs(self, stage: str) -> pa.Array | None:
        """The input ids a source stage listed at its last run (None if it never recorded them)."""
        url = self.storage.join(stage, "_inputs.parquet")
        if not self.storage.exists(url):
            return None
        with self.storage.open(url) as handle:
            return pq.read_table(handle)["input_id"].combine_chunks()

    @returning_memory
    def records(self, stage: str, schema: RecordSchema | None = None, inputs: pa.Array | str | None = None,
                columns: list[str] | None = None, ordered: bool = True) -> pa.Table:
        """Each input's latest records, duplicates resolved, optionally only for the given input ids, sorted by
        (`input_id`, `id`) (in write order if not `ordered`: no sorted copy, for callers that only count).
        Columns: the stage schema, or `columns` of it (and always `input_id`, `id`, `status`, `attempt`): callers
        that need a few columns of a large stage read only those."""
        schema = schema or self.schema(stage)
        columns = None if columns is None else _key_columns(columns)
        return _table_of(self._current_pieces(stage, schema, inputs, columns), schema, columns, ordered)

    def _current_pieces(self, stage: str, schema: RecordSchema, inputs: pa.Array | str | None,
                        columns: list[str] | None) -> Iterator[pa.Table]:
        """The stage's current records (`columns`, all if None), one row group of its parts at a time, in write
        order: a stage of millions of records is never read whole. The rows are chosen first on the key columns
        alone (`_selection`, in duckdb). `inputs`: the input ids to keep (an array, or an index table of them)."""
        parts = self.parts(stage)
        chosen = _Rows(self._selection(parts, inputs))
        for number, part in enumerate(parts):
            with self._parquet(part) as reader:
                start = number << _PART_SHIFT
                for index in range(reader.num_row_groups):
                    end = start + reader.metadata.row_group(index).num_rows
                    rows = chosen.before(end)
                    if rows.num_rows:
                        table = self._checked(reader.read_row_group(index, columns=columns), schema, columns, part)
                        yield _mark_duplicates(table.take(pc.subtract(rows["pos"], start)), rows["duplicate_of"])
                    start = end

    def _selection(self, parts: list[str], inputs: pa.Array | str | None) -> Iterator[pa.RecordBatch]:
        """Which stored rows are current, from the key columns only (`_key_pieces`): per input (among `inputs`, if
        given) the rows of its latest (attempt, part). Columns `pos` (`_PART_SHIFT`) and `duplicate_of`: for an
        `ok` record of an id that an earlier input (by `input_id`) also holds as `ok`, that input, else null. In
        `pos` order, streamed. A stage of at most `SMALL_KEYS` stored rows (and inputs) is chosen in Arrow, in
        memory (a duckdb query costs milliseconds however few its rows); a larger one by the index, in bounded
        memory."""
        pieces = self._key_pieces(parts)
        held, count = [], 0
        for piece in pieces:
            held.append(piece)
            count += piece.num_rows
            if count > SMALL_KEYS:
                break
        else:
            ids = self._small_inputs(inputs)
            if ids is not False:
                yield from _current_rows(pa.concat_tables([_KEY_SCHEMA.empty_table(), *held]), ids).to_batches()
                return
        with self._index_tables() as temp:
            keys = temp(self.index_table(itertools.chain(held, pieces), _KEY_SCHEMA))
            del held
            where = ""
            if inputs is not None:
                where = f"WHERE input_id IN (SELECT input_id FROM {self._inputs_table(inputs, temp)})"
            yield from self.index_batches(f"""
                WITH k AS (SELECT * FROM {keys} {where}),
                current AS (SELECT k.* FROM k JOIN (SELECT input_id, max(newest) AS newest FROM k GROUP BY input_id)
                            USING (input_id, newest)),
                held AS (SELECT id, min(input_id) AS holder FROM current WHERE ok GROUP BY id
                         HAVING min(input_id) <> max(input_id))
                SELECT pos, CASE WHEN ok AND holder <> input_id THEN holder END AS duplicate_of
                FROM current LEFT JOIN held USING (id) ORDER BY pos""")

    def _small_inputs(self, inputs: pa.Array | str | None) -> pa.Array | None | bool:
        """`inputs` as an array for `_current_rows` (None: all), or False when they are an index table of more than
        `SMALL_KEYS` ids."""
        if not isinstance(inputs, str):
            return inputs
        if self.index_value(f"SELECT count(*) FROM {inputs}") > SMALL_KEYS:
            return False
        return self.index.sql(f"SELECT input_id FROM {inputs}").to_arrow_table()["input_id"]

    def _inputs_table(self, inputs: pa.Array | str, temp) -> str:
        """An index table of input ids (column `input_id`): `inputs` itself when it names one."""
        if isinstance(inputs, str):
            return inputs
        return temp(self.index_table([pa.table({"input_id": pa.array(inputs, pa.string())})]))

    def _key_pieces(self, parts: list[str]) -> Iterator[pa.Table]:
        """The key columns of every stored row (`_KEY_SCHEMA`: `newest` is larger for newer rows, the attempt then
        the part; `pos`), a row group at a time."""
        for order, part in enumerate(parts):
            with self._parquet(part) as reader:
                start = order << _PART_SHIFT
                for index in range(reader.num_row_groups):
                    table = reader.read_row_group(index, columns=["input_id", "id", "attempt", "status"])
                    yield pa.table({
                        "input_id": table["input_id"], "id": table["id"], "ok": pc.equal(table["status"], "ok"),
                        "error": pc.equal(table["status"], "error"), "attempt": table["attempt"],
                        "newest": pc.add(pc.multiply(table["attempt"].cast(pa.int64()), 1 << 32), order),
                        "pos": pa.array(np.arange(start, start + table.num_rows, dtype=np.int64)),
                    }, schema=_KEY_SCHEMA)
                    start += table.num_rows

    def latest_attempts(self, stage: str, since_ns: int | None = None) -> str:
        """An index table of the stage's inputs with records: `input_id`, the `attempt` of its latest records,
        whether one of them is an `error` (`failed`), and (`since_ns`) whether it has a record in a part written
        since then (`recent`). Drop it with `drop_table`."""
        parts = self.parts(stage)
        first_new = next((n for n, part in enumerate(parts) if since_ns is not None
                          and part.rsplit("/", 1)[-1] >= f"{PART_PREFIX}{since_ns:020d}"), len(parts))
        with self._index_tables() as temp:
            keys = temp(self.index_table(self._key_pieces(parts), _KEY_SCHEMA))
            name = self._index_name("latest")
            self.index.execute(f"""
                CREATE TABLE {name} AS
                SELECT input_id, max(attempt) AS attempt, bool_or(error AND newest = latest) AS failed,
                       bool_or(pos >= {first_new << _PART_SHIFT}) AS recent
                FROM (SELECT *, max(newest) OVER (PARTITION BY input_id) AS latest FROM {keys})
                GROUP BY input_id""")
        return name

    # The ledger's index: duckdb, of bounded memory ----------------------------------------------------------
    @property
    def index(self):
        """A duckdb database for the set operations over a stage's records (which rows are current, which inputs
        are still to run, the columns of earlier stages for a stage's inputs): its memory is bounded
        (`INDEX_MEMORY`), what it holds beyond spills to a temporary folder (the system's, as the report's duckdb:
        a run dir may be an object store), so the driver's memory does not grow with the number of records.
        Private to this ledger; the folder goes with it. Row order is kept only where a query asks for it."""
        if self._index is None:
            import duckdb

            # In memory: its tables' blocks are evicted to the temp folder when the limit is near (as a database
            # file's would be to the file), and tables come and go without a write-ahead log synced at each one.
            self._index_folder = tempfile.TemporaryDirectory(prefix="humove-ledger-")
            self._index = duckdb.connect(":memory:", config={
                "memory_limit": INDEX_MEMORY, "threads": 1,
                "temp_directory": self._index_folder.name, "preserve_insertion_order": False,
                "autoinstall_known_extensions": False, "autoload_known_extensions": False})
        return self._index

    def _index_name(self, prefix: str) -> str:
        self._index_count += 1
        return f"{prefix}_{self._index_count}"

    def index_table(self, pieces: Iterable[pa.Table], schema: pa.Schema | None = None) -> str:
        """A new index table of the pieces' rows (in `ROW_GROUP` rows at a time); `schema`: its columns when
        there is no piece. Returns its name; drop it with `drop_table`."""
        name = None
        for rows in _regrouped(pieces, ROW_GROUP):
            name = self._add_rows(name, rows)
        if name is None:
            if schema is None:
                raise ValueError("an index table of no rows needs a schema")
            name = self._add_rows(None, schema.empty_table())
        return name

    def _add_rows(self, name: str | None, rows: pa.Table) -> str:
        """Append `rows` to index table `name`, or to a new one if None; returns its name."""
        self.index.register("_rows", rows)
        if name is None:
            name = self._index_name("t")
            self.index.execute(f"CREATE TABLE {name} AS SELECT * FROM _rows")
        else:
            self.index.execute(f"INSERT INTO {name} SELECT * FROM _rows")
        self.index.unregister("_rows")
        return name

    def drop_table(self, name: pa.Array | str | None) -> None:
        """Drop an index table (an array of ids, for a small stage, is not one: nothing to drop)."""
        if isinstance(name, str) and self._index is not None:
            self._index.execute(f"DROP TABLE IF EXISTS {name}")

    @contextlib.contextmanager
    def _index_tables(self):
        """`temp(name)` marks an index table to drop when the block ends."""
        names: list[str] = []

        def temp(name: str) -> str:
            names.append(name)
            return name

        try:
            yield temp
        finally:
            for name in names:
                self.drop_table(name)

    def index_batches(self, sql: str, rows: int = ROW_GROUP) -> Iterator[pa.RecordBatch]:
        """The result of a query on the index, `rows` at a time, on a cursor of its own (other queries may run
        while it is read)."""
        cursor = self.index.cursor()
        try:
            yield from cursor.sql(sql).to_arrow_reader(rows)
        finally:
            cursor.close()

    def index_value(self, sql: str):
        return self.index.execute(sql).fetchall()[0][0]

    def count_ids(self, ids: pa.Array | str, distinct: bool = False) -> int:
        """How many ids an index table (or an array of them) holds, each once if `distinct`."""
        if not isinstance(ids, str):
            return pc.count_distinct(ids).as_py() if distinct else len(ids)
        rows = f"(SELECT input_id FROM {ids} GROUP BY input_id)" if distinct else ids
        return self.index_value(f"SELECT count(*) FROM {rows}")

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
        self._write_pieces(self._new_part(stage), schema, self._current_pieces(stage, schema, None, None))
        for part in old:
            self.storage.delete(part)

    def _write_pieces(self, url: str, schema: RecordSchema, pieces: Iterator[pa.Table]) -> None:
        """Write record tables to one Parquet file at `url`, atomically, streamed into the file
        (`Storage.write_with`), in row groups of `ROW_GROUP` records: the pieces of a compaction are the stage's
        appended batches, often a few hundred records each, and a file of thousands of tiny row groups costs a
        large footer and a read per group each time it is opened."""
        arrow = schema.arrow

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
        for stage, schema, _, pieces in self.stage_passes():
            url = self.storage.join(stage, CURRENT_FILE)
            if self.parts(stage):
                self._write_pieces(url, schema, pieces)
            else:
                self.storage.delete(url)

    def remove_temp_files(self, stages: list[str]) -> list[str]:
        """Delete what interrupted writes left (`*.tmp-*`) under each stage's folder and its artifacts, and at the
        top of the run dir (on an object store, where writes publish whole objects: the stages' work files
        only, `items.WorkFile`). Call only while holding the run lock: then no write is in progress."""
        folders = [self.run_dir, *([] if self.storage.local else [self.storage.join(stage) for stage in stages])]
        removed = [p for folder in folders for p in self.storage.list(folder) if TEMP_MARK in p.rsplit("/", 1)[-1]]
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
            for stage, schema, _, pieces in self.stage_passes(columns):
                table = _table_of(pieces, schema, None if columns is None else columns(schema), ordered)
                yield stage, table
                del table  # not held while the next stage's records are read

    def stage_passes(self, columns=None) -> Iterator[tuple[str, RecordSchema, pa.Array | str | None, Iterator]]:
        """(stage, schema, an index table of its current input ids (an array for a small stage) or None, its
        current records one piece at a time), stage by stage: the inputs of the first stage are what its source
        lists now, those of a later stage the `ok` ids of the pieces of the stage before (pieces the caller leaves
        unread are read on its way to the next stage). `columns`: a function of the schema naming the columns to
        read besides `input_id`, `id`, `status` and `attempt` (None: every column)."""
        stages = self.stage_names()
        inputs = self._listed_table(stages[0]) if stages else None
        ok = None
        try:
            for index, stage in enumerate(stages):
                schema = self.schema(stage)
                wanted = None if columns is None else _key_columns(columns(schema))
                ok = None if index == len(stages) - 1 else _IndexRows(self, "input_id")  # the next stage's inputs

                def pieces(stage=stage, schema=schema, inputs=inputs, wanted=wanted, ok=ok):
                    for piece in self._current_pieces(stage, schema, inputs, wanted):
                        if ok is not None:
                            ok.add(ok_records(piece)["id"])
                        yield piece

                stage_pieces = pieces()
                yield stage, schema, inputs, stage_pieces
                if ok is not None:
                    collections.deque(stage_pieces, maxlen=0)  # the rest of its ok ids: the next stage's inputs
                self.drop_table(inputs)
                inputs, ok = (ok.close() if ok is not None else None), None
                release_freed_memory()
        finally:  # also when the caller stops early
            self.drop_table(inputs)
            self.drop_table(ok.name if ok is not None else None)

    def _listed_table(self, stage: str) -> pa.Array | str | None:
        """An index table of the input ids a source stage listed at its last run (None if it never recorded
        them), read a row group at a time; an array of them if there are no more than `SMALL_KEYS`."""
        url = self.storage.join(stage, "_inputs.parquet")
        if not self.storage.exists(url):
            return None
        with self.storage.open(url) as handle:
            reader = pq.ParquetFile(handle)
            if reader.metadata.num_rows <= SMALL_KEYS:
                return reader.read(columns=["input_id"])["input_id"].combine_chunks()
            return self.index_table((reader.read_row_group(index, columns=["input_id"])
                                     for index in range(reader.num_row_groups)), reader.schema_arrow)

    @returning_memory
    def summary(self, max_attempts: int | None = None, last: str | None = None) -> list[StageSummary]:
        """Per stage (up to `last`, if given): counts of its current records by status (rejections by reason,
        errors that used up their attempts as quarantined) and how many current inputs have no record yet
        (pending). One piece of records at a time."""
        max_attempts = max_attempts or self.run_info().get("max_attempts", 3)
        summaries = []
        for stage, _, expected, pieces in self.stage_passes(lambda schema: ["reason"]):
            summary = StageSummary(stage)
            processed = _IndexRows(self, "input_id")
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
                processed.add(piece["input_id"])
            processed = processed.close()
            if expected is not None:  # the pieces hold only current inputs: those without one are pending
                summary.pending = self.count_ids(expected) - self.count_ids(processed, distinct=True)
            self.drop_table(processed)
            summaries.append(summary)
            if stage == last:
                break
        return summaries


class _IndexRows:
    """An index table of one string column filled array by array (`ROW_GROUP` values at a time): `close()`
    returns its name, or the values as an array when there are no more than `ROW_GROUP` (a small stage: no
    duckdb statement)."""

    def __init__(self, ledger: Ledger, column: str):
        self.ledger, self.column = ledger, column
        self.name: str | None = None
        self.held: list[pa.Array] = []
        self.count = 0

    def add(self, values) -> None:
        self.held.append(values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values)
        self.count += len(values)
        if self.count >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        self.name = self.ledger._add_rows(self.name, pa.table({self.column: pa.chunked_array(self.held, pa.string())}))
        self.held, self.count = [], 0

    def close(self) -> pa.Array | str:
        if self.name is None:
            return pa.chunked_array(self.held, pa.string()).combine_chunks()
        if self.held:
            self._flush()
        return self.name


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


_KEY_SCHEMA = pa.schema([("input_id", pa.string()), ("id", pa.string()), ("ok", pa.bool_()), ("error", pa.bool_()),
                         ("attempt", pa.int32()), ("newest", pa.int64()), ("pos", pa.int64())])


def _current_rows(keys: pa.Table, inputs: pa.Array | None) -> pa.Table:
    """`Ledger._selection` in Arrow, for a small stage: `keys` (`_KEY_SCHEMA`) → `pos`, `duplicate_of`."""
    if inputs is not None:
        keys = keys.filter(pc.is_in(keys["input_id"], value_set=pa.array(inputs, pa.string())))
    latest = keys.group_by("input_id").aggregate([("newest", "max")]).rename_columns(["input_id", "newest"])
    current = keys.join(latest, ["input_id", "newest"], join_type="inner")
    ok = current.filter(current["ok"])
    held = ok.group_by("id").aggregate([("input_id", "min"), ("input_id", "max")])
    held = held.filter(pc.not_equal(held["input_id_min"], held["input_id_max"]))
    current = current.join(held.select(["id", "input_id_min"]).rename_columns(["id", "holder"]), "id",
                           join_type="left outer")
    duplicate_of = pc.if_else(pc.and_(current["ok"], pc.not_equal(current["holder"], current["input_id"])),
                              current["holder"], pa.scalar(None, pa.string()))
    return pa.table({"pos": current["pos"], "duplicate_of": duplicate_of}).sort_by("pos")


class _Rows:
    """A stream of selected rows (`pos` ascending) taken in order: `before(end)` gives those with `pos` < end."""

    def __init__(self, batches: Iterator[pa.RecordBatch]):
        self.batches = iter(batches)
        self.held: pa.Table | None = None
        self.done = False

    def before(self, end: int) -> pa.Table:
        taken = []
        while True:
            if self.held is None or self.held.num_rows == 0:
                batch = None if self.done else next(self.batches, None)
                if batch is None:
                    self.done = True
                    break
                self.held = pa.Table.from_batches([batch])
            count = int(np.searchsorted(self.held["pos"].to_numpy(), end))
            taken.append(self.held.slice(0, count))
            self.held = self.held.slice(count)
            if self.held.num_rows:
                break
        if not taken:
            return pa.table({"pos": pa.array([], pa.int64()), "duplicate_of": pa.array([], pa.string())})
        return pa.concat_tables(taken)


_SET_SLICE = 32_768  # values per hash set in `is_in`


def is_in(values, value_set) -> pa.Array:
    """`pc.is_in(values, value_set=value_set)`, with the value set hashed a slice at a time: a hash set of strings
    takes about four times their bytes, a slice's a fraction of that."""
    if len(value_set) <= _SET_SLICE:
        return pc.is_in(values, value_set=value_set)
    found = None
    for start in range(0, len(value_set), _SET_SLICE):
        part = pc.is_in(values, value_set=value_set.slice(start, _SET_SLICE))
        found = part if found is None else pc.or_(found, part)
    return found


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
