"""A stage's input items as Arrow rows, turned into Python dicts one batch at a time.

The driver never holds every item of a stage as Python dicts, nor the whole of a stage's work: a stage's work is
a Parquet file (`WorkFile`) read a row group at a time. Two kinds of rows reach a stage:
- a source's listing: `input_id` plus each item as JSON text (`ITEM_JSON`), since listed items can have any shape;
- a later stage's inputs: the upstream records' typed columns (`input_id` = the upstream record's id).
Rows of work to do have one more column, `ATTEMPT`: the attempt number each item runs as.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from humove.storage import TEMP_MARK, Storage
from humove.worker import to_json

ITEM_JSON = "_item_json"
ATTEMPT = "_attempt"
LISTING_CHUNK = 5_000  # listed items turned into Arrow this many at a time


LISTING_SCHEMA = pa.schema([("input_id", pa.string()), (ITEM_JSON, pa.string())])
CHUNK_GROUPS = 64  # row groups (batches) per work file: a small footer for a task that reads a few batches


def listing_chunks(items: Iterable[dict]) -> Iterator[pa.Table]:
    """A source's listed items (a list or any iterable of dicts, each with `input_id`) as tables of `input_id` +
    `ITEM_JSON` columns, `LISTING_CHUNK` items at a time."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, LISTING_CHUNK)):
        yield pa.table({"input_id": pa.array([item["input_id"] for item in chunk], pa.string()),
                        ITEM_JSON: pa.array([to_json(item) for item in chunk], pa.string())})


class WorkFile:
    """A stage's work (its item rows and `ATTEMPT`) as Parquet files in the stage's folder of the run dir, under
    temp names: row groups of the stage's batch size, `CHUNK_GROUPS` of them per file, so that a few batches are
    read alone (`read_groups`, in a Ray task) or the rows in order (`tables`), never the whole work at once.
    `remove()` it when the stage is done; what a killed run left is removed with the other temp files
    (`Ledger.remove_temp_files`)."""

    def __init__(self, storage: Storage, folder: str, schema: pa.Schema, batch_size: int):
        self.storage, self.folder, self.schema, self.batch_size = storage, folder, schema, batch_size
        self.chunks: list[tuple[str, int]] = []  # (url, row groups) of each file
        self.num_rows = 0

    @classmethod
    def write(cls, storage: Storage, folder: str, schema: pa.Schema, rows: Iterable[pa.Table | pa.RecordBatch],
              batch_size: int) -> WorkFile:
        """New work files in `folder` of `rows` (each cast to `schema`), in row groups of `batch_size` rows."""
        name = f"work{TEMP_MARK}{uuid.uuid4().hex[:12]}"
        work = cls(storage, folder, schema, batch_size)
        per_chunk = CHUNK_GROUPS * batch_size
        held: list[pa.Table] = []
        count = 0

        def flush(tables: list[pa.Table]) -> None:
            table = pa.concat_tables(tables)
            url = storage.join(folder, f"{name}-{len(work.chunks):06d}.parquet")
            storage.write_with(url, lambda handle: pq.write_table(table, handle, row_group_size=batch_size))
            work.chunks.append((url, -(-table.num_rows // batch_size)))
            work.num_rows += table.num_rows

        try:
            for table in rows:
                table = pa.Table.from_batches([table]) if isinstance(table, pa.RecordBatch) else table
                held.append(table.cast(schema))
                count += table.num_rows
                while count >= per_chunk:
                    table = pa.concat_tables(held)
                    flush([table.slice(0, per_chunk)])
                    held, count = [table.slice(per_chunk)], table.num_rows - per_chunk
            if count:
                flush(held)
        except BaseException:
            work.remove()
            raise
        return work

    @property
    def num_batches(self) -> int:
        """Its row groups: batches of `batch_size` rows (each file's last may be shorter)."""
        return sum(groups for _, groups in self.chunks)

    def tables(self, size: int | None = None) -> Iterator[pa.Table]:
        """The rows in order, `size` at a time (default: the batch size; the last table may be shorter)."""
        size = size or self.batch_size
        held = None
        for url, _ in self.chunks:
            with self.storage.open(url) as handle:
                reader = pq.ParquetFile(handle)
                for index in range(reader.num_row_groups):
                    group = reader.read_row_group(index)
                    held = group if held is None else pa.concat_tables([held, group])
                    while held.num_rows >= size:
                        yield held.slice(0, size)
                        held = held.slice(size)
        if held is not None and held.num_rows:
            yield held

    def envelopes(self, size: int) -> Iterator[list[dict]]:
        """The rows as the envelopes workers take (`envelopes`), `size` at a time."""
        for table in self.tables(size):
            yield envelopes(table)

    def read_units(self, batches: int) -> Iterator[tuple[str, int, int]]:
        """(file, first row group, row groups) of each run of up to `batches` batches, in order: what a Ray task
        reads with `read_groups`."""
        for url, groups in self.chunks:
            for first in range(0, groups, batches):
                yield url, first, min(batches, groups - first)

    def where(self, keep: Callable[[pa.Table], pa.Array], batch_size: int | None = None) -> WorkFile:
        """New work files beside these of the rows for which `keep(table)` is true (in batches of `batch_size`,
        default this work's)."""
        return WorkFile.write(self.storage, self.folder, self.schema,
                              (table.filter(keep(table)) for table in self.tables()), batch_size or self.batch_size)

    def remove(self) -> None:
        for url, _ in self.chunks:
            self.storage.delete(url)


def read_groups(root: str, url: str, first: int, count: int) -> Iterator[pa.Table]:
    """`count` batches of a work file from row group `first` on (`WorkFile.read_units`), in a worker: `root` is
    the run dir."""
    with Storage(root).open(url) as handle:
        reader = pq.ParquetFile(handle)
        for group in range(first, first + count):
            yield reader.read_row_group(group)


def item_batches(table: pa.Table, size: int) -> Iterator[list[dict]]:
    """The table's items as dicts, `size` rows at a time (without the `ATTEMPT` column)."""
    for start in range(0, table.num_rows, size):
        rows = table.slice(start, size)
        if ITEM_JSON in rows.column_names:
            yield [json.loads(text) for text in rows[ITEM_JSON].to_pylist()]
        else:
            yield (rows.drop_columns([ATTEMPT]) if ATTEMPT in rows.column_names else rows).to_pylist()


def envelopes(work: pa.Table) -> list[dict]:
    """Work rows as the envelopes workers take: `{"item": dict, "attempt": int}`."""
    [items] = item_batches(work, max(1, work.num_rows)) if work.num_rows else [[]]
    return [{"item": item, "attempt": attempt} for item, attempt in zip(items, work[ATTEMPT].to_pylist(), strict=True)]


def envelope_rows(work: pa.Table, to: int | None = None) -> pa.Table:
    """Work rows as the rows Ray workers take: column `item`, each envelope as JSON text, and (`to` given) the
    stream position `to` (`RayExecutor.stream`)."""
    texts = pa.array([to_json(envelope) for envelope in envelopes(work)], pa.string())
    if to is None:
        return pa.table({"item": texts})
    return pa.table({"to": pa.array([to] * len(texts), pa.int32()), "item": texts})


def all_items(table: pa.Table) -> list[dict]:
    """Every item as a dict: only for aggregate stages, which take their whole input at once."""
    return [item for batch in item_batches(table, LISTING_CHUNK) for item in batch]
