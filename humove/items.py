"""A stage's input items held as an Arrow table, turned into Python dicts one batch at a time.

The driver never holds every item of a stage as Python dicts: 100,000 videos fanned out to clips would cost
hundreds of MB. Two kinds of table reach a stage:
- a source's listing: `input_id` plus each item as JSON text (`ITEM_JSON`), since listed items can have any shape;
- a later stage's inputs: the upstream records' typed columns (`input_id` = the upstream record's id).
A table of work to do has one more column, `ATTEMPT`: the attempt number each item runs as.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator

import pyarrow as pa

from humove.worker import to_json

ITEM_JSON = "_item_json"
ATTEMPT = "_attempt"
LISTING_CHUNK = 5_000  # listed items turned into Arrow this many at a time


def listing_table(items: Iterable[dict]) -> pa.Table:
    """A source's listed items (a list or any iterable of dicts, each with `input_id`) as `input_id` +
    `ITEM_JSON` columns, converted chunk by chunk."""
    chunks = []
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, LISTING_CHUNK)):
        chunks.append(pa.table({"input_id": pa.array([item["input_id"] for item in chunk], pa.string()),
                                ITEM_JSON: pa.array([to_json(item) for item in chunk], pa.string())}))
    if not chunks:
        return pa.table({"input_id": pa.array([], pa.string()), ITEM_JSON: pa.array([], pa.string())})
    return pa.concat_tables(chunks)


def item_batches(table: pa.Table, size: int) -> Iterator[list[dict]]:
    """The table's items as dicts, `size` rows at a time (without the `ATTEMPT` column)."""
    for start in range(0, table.num_rows, size):
        rows = table.slice(start, size)
        if ITEM_JSON in rows.column_names:
            yield [json.loads(text) for text in rows[ITEM_JSON].to_pylist()]
        else:
            yield (rows.drop_columns([ATTEMPT]) if ATTEMPT in rows.column_names else rows).to_pylist()


def envelope_batches(work: pa.Table, size: int) -> Iterator[list[dict]]:
    """Work rows as the envelopes workers take, `size` at a time: `{"item": dict, "attempt": int}`."""
    for start, items in zip(itertools.count(0, size), item_batches(work, size)):
        attempts = work[ATTEMPT].slice(start, len(items)).to_pylist()
        yield [{"item": item, "attempt": attempt} for item, attempt in zip(items, attempts, strict=True)]


def all_items(table: pa.Table) -> list[dict]:
    """Every item as a dict: only for aggregate stages, which take their whole input at once."""
    return [item for batch in item_batches(table, LISTING_CHUNK) for item in batch]
