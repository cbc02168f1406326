"""Record schemas: the columns every stage record has, and the versioned schema of each stage's own columns.

Every stage writes Parquet records. Each record has the common columns below plus its stage's own columns.
Stage columns are named uniquely across stages (e.g. `duration_s` only in ingest), so the engine can join
a clip's records from all upstream stages into one row without collisions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

STATUSES = ("ok", "rejected", "error")

COMMON_FIELDS = (
    pa.field("id", pa.string(), nullable=False),          # this record's key: video_id or clip_id
    pa.field("input_id", pa.string(), nullable=False),    # key of the upstream record it came from
    pa.field("status", pa.string(), nullable=False),      # ok | rejected | error
    pa.field("reason", pa.string()),                      # machine-readable, e.g. "aesthetic_below_min"
    pa.field("value", pa.float64()),                      # the measured value behind a rejection
    pa.field("detail", pa.string()),                      # human-readable explanation of a rejection
    pa.field("by_threshold", pa.bool_()),                 # rejected by a threshold (re-decided when it changes)
    pa.field("error_type", pa.string()),
    pa.field("error_message", pa.string()),
    pa.field("attempt", pa.int32(), nullable=False),
    pa.field("backend", pa.string()),                     # which model/library produced the measures
    pa.field("stage_version", pa.string(), nullable=False),
    pa.field("schema_version", pa.int32(), nullable=False),
    pa.field("created_at", pa.timestamp("ms", tz="UTC"), nullable=False),
)
COMMON_NAMES = frozenset(f.name for f in COMMON_FIELDS)


class RecordSchemaError(ValueError):
    """Records do not match their stage schema; the message names the stage, record and column."""


@dataclass(frozen=True)
class RecordSchema:
    """The versioned record schema of one stage."""

    stage: str
    version: int
    key: str                                   # "video_id" or "clip_id": what `id` holds
    fields: tuple[pa.Field, ...] = field(default_factory=tuple)

    def __post_init__(self):
        clash = COMMON_NAMES & {f.name for f in self.fields}
        if clash:
            raise RecordSchemaError(f"stage {self.stage!r}: columns {sorted(clash)} are reserved")

    @functools.cached_property
    def arrow(self) -> pa.Schema:
        return pa.schema(
            list(COMMON_FIELDS) + list(self.fields),
            metadata={"humove.stage": self.stage, "humove.schema_version": str(self.version)},
        )

    @functools.cached_property
    def integer_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.arrow if pa.types.is_integer(f.type))

    @property
    def own_names(self) -> list[str]:
        return [f.name for f in self.fields]

    def to_table(self, rows: list[dict]) -> pa.Table:
        """Build a table from record dicts, enforcing the schema (unknown columns, types, required columns)."""
        schema = self.arrow
        names = set(schema.names)
        for row in rows:
            unknown = set(row) - names
            if unknown:
                raise RecordSchemaError(
                    f"stage {self.stage!r} record {row.get('id')!r}: unknown columns {sorted(unknown)}"
                )
            if row.get("status") not in STATUSES:
                raise RecordSchemaError(
                    f"stage {self.stage!r} record {row.get('id')!r}: status {row.get('status')!r} "
                    f"is not one of {STATUSES}"
                )
            for name in self.integer_names:  # Arrow would truncate 2.7 to 2 without a word
                value = row.get(name)
                if isinstance(value, float | np.floating) and not float(value).is_integer():
                    raise RecordSchemaError(f"stage {self.stage!r} record {row.get('id')!r}: column {name!r} is "
                                            f"an integer column, got {value!r}")
        try:
            return pa.Table.from_pylist(rows, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise RecordSchemaError(f"stage {self.stage!r}: records do not fit the schema: {exc}") from exc

    def check(self, table: pa.Table, where: str = "") -> pa.Table:
        """Validate a table read back from storage and cast it to the schema."""
        expected = self.arrow
        missing = [n for n in expected.names if n not in table.column_names]
        if missing:
            raise RecordSchemaError(f"stage {self.stage!r} records {where}: missing columns {missing}")
        extra = [n for n in table.column_names if n not in expected.names]
        if extra:
            raise RecordSchemaError(f"stage {self.stage!r} records {where}: unknown columns {extra}")
        meta = table.schema.metadata or {}
        found = meta.get(b"humove.schema_version")
        if found is not None and int(found) != self.version:
            raise RecordSchemaError(
                f"stage {self.stage!r} records {where}: schema version {int(found)}, expected {self.version}"
            )
        try:
            return table.select(expected.names).cast(expected)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise RecordSchemaError(f"stage {self.stage!r} records {where}: {exc}") from exc

    def empty(self) -> pa.Table:
        return self.arrow.empty_table()
