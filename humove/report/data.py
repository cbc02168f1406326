"""What the report shows, read from a run's ledger: units, thresholds, measures, and the sample of clips that get
previews. Nothing here draws or writes. The records are queried where they lie (`Records`: duckdb over each
stage's `current.parquet`): counts, binned histograms and bounded samples come back, never every record."""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from humove.schemas.records import COMMON_NAMES

if TYPE_CHECKING:
    from humove.ledger import Ledger, StageSummary

MAX_HISTOGRAMS_PER_STAGE = 12  # decided measures always get theirs, the other measures fill up to this
MAX_EXAMPLES = 5               # error examples per stage
DUCKDB_MEMORY = "256MB"        # what a query may hold before spilling: the report stays flat at a million records
# What a stage's records count, by its schema's key.
UNITS_OF_KEYS = {"keyword_id": "keywords", "video_id": "videos", "clip_id": "clips"}
# Per-label lists (scores in the order of a labels column): mixing their labels in one histogram says nothing.
PER_LABEL_COLUMNS = {"content_type_scores": "content_type_labels"}
NOT_MEASURES = {"start_s", "end_s", "person_picture_box"}  # positions in the source video or in the picture

# Units of the measure columns whose name does not tell (names ending in _s, _mps, _px, fps, … do: `unit_of`).
UNITS = {
    "aesthetic_scores": "score", "aesthetic_mean": "score", "synthetic_score": "probability",
    "aesthetic_sharpness": "0–1, 1 = good", "aesthetic_exposure": "0–1, 1 = good",
    "aesthetic_contrast": "0–1, 1 = good", "aesthetic_noise": "0–1, 1 = good",
    "person_exit_changes": "mean |Δ| / 255", "person_people_mean": "people per frame",
    "person_box_height": "× picture height", "person_size": "× picture height", "person_box_area": "× picture area",
    "person_box_aspect": "width / height", "person_second_ratio": "× main box height", "person_box_stability": "IoU",
    "person_score_mean": "detection score", "pose_visible_mean": "keypoints of 17",
    "pose_visible_p10": "keypoints of 17",
    "pose_in_box_fraction": "share of keypoints", "pose_score_mean": "keypoint score",
    "motion_agreement_pck": "share of keypoints", "motion_max_abs_beta": "|β|, SMPL shape (standard normal)",
    "motion_reprojection_rel": "× person height", "motion_limb_length_error": "|log| length ratio",
    "caption_words": "words",
}
_SUFFIX_UNITS = (("_mps2", "m/s²"), ("_mps", "m/s"), ("_s", "s"), ("fps", "frames/s"), ("num_frames", "frames"),
                 ("_px", "px"), ("_bytes", "bytes"), ("_mm", "mm"))
_SHARE_OF_FRAMES = ("fraction", "coverage", "_present", "_touch_", "visibility", "_part_")


def unit_of(column: str) -> str:
    """The unit of a measure column, in words ("" where unknown)."""
    if column in UNITS:
        return UNITS[column]
    for suffix, unit in _SUFFIX_UNITS:
        if column.endswith(suffix):
            return unit
    return "share of frames" if any(part in column for part in _SHARE_OF_FRAMES) else ""


def stage_unit(ledger: Ledger, stage: str) -> str:
    """What one record of the stage is: "keywords", "videos", "clips" (or "records")."""
    return UNITS_OF_KEYS.get(ledger.schema(stage).key, "records")


# Thresholds -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Threshold:
    """A decision field of a stage's config and the value the stage last ran with."""

    name: str      # the config field, e.g. "min_person_size"
    value: float

    @property
    def label(self) -> str:
        if self.name.startswith(("min_", "max_")):
            return f"{self.name}: keeps {'≥' if self.name.startswith('min_') else '≤'} {self.value:g}"
        return f"{self.name} = {self.value:g}"


def stage_thresholds(ledger: Ledger, stage: str) -> dict[str, list[Threshold]]:
    """Measure column → its thresholds, as the stage's config declares them (`decision(measure=…)`) with the
    values of its stored config (`<stage>/_stage.json`, written by the run). Empty for a custom stage whose code
    is not imported, and where the stored config is missing or unreadable (a run dir is untrusted input)."""
    cls = ledger.stage_class(stage)
    measures = getattr(getattr(cls, "Config", None), "decision_measures", None)
    if measures is None:
        return {}
    try:
        config = (ledger.stage_state(stage) or {}).get("config")
    except ValueError:  # not JSON: no thresholds to show, the rest of the report stands
        return {}
    found: dict[str, list[Threshold]] = {}
    for name, column in measures().items():
        value = config.get(name) if isinstance(config, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            found.setdefault(column, []).append(Threshold(name, float(value)))
    return found


# Records ----------------------------------------------------------------------------------------------------------

class Records:
    """One stage's current records, queried by duckdb where they lie (`<stage>/current.parquet`, or an Arrow
    table): the report reads aggregates and a bounded sample, never every record, so its memory stays flat as
    the run grows. `file_row_number` numbers the records in their stored order (the "first" example of a reason)."""

    def __init__(self, source: pa.Table | str, connection: duckdb.DuckDBPyConnection | None = None,
                 name: str = "records"):
        self.connection = connection or connect()
        self.name = name
        if isinstance(source, pa.Table):
            self.schema = source.schema
            self._table = source.append_column("file_row_number", pa.array(np.arange(source.num_rows, dtype=np.int64)))
            self.connection.register(name, self._table)
        else:
            self.schema = pq.read_schema(source)
            self.connection.read_parquet(source, file_row_number=True).create_view(name)
        self.column_names = list(self.schema.names)
        self.num_rows = self.scalar(f"SELECT count(*) FROM {name}")

    def query(self, sql: str, params: list | None = None) -> pa.Table:
        """`sql` with `{t}` for this stage's records."""
        return self.connection.sql(sql.format(t=self.name), params=params or None).to_arrow_table()

    def scalar(self, sql: str, params: list | None = None):
        return self.connection.execute(sql.format(t=self.name), params or []).fetchall()[0][0]

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """Every record (of `columns`): only for stages that stay small (keywords)."""
        return self.query(f"SELECT {_select(columns or self.column_names)} FROM {{t}} ORDER BY file_row_number")

    def where_id_in(self, ids: list[str], columns: list[str] | None = None) -> pa.Table:
        """The records with one of `ids`, in stored order."""
        return self.query(f"SELECT {_select(columns or self.column_names)} FROM {{t}} "
                          "WHERE id IN (SELECT unnest($1::VARCHAR[])) ORDER BY file_row_number", [list(ids)])


def connect() -> duckdb.DuckDBPyConnection:
    """A duckdb connection of bounded memory that loads no extension; what a query holds beyond the limit spills
    to the system's temporary folder (not to the working directory, duckdb's default)."""
    return duckdb.connect(config={"memory_limit": DUCKDB_MEMORY, "threads": min(4, os.cpu_count() or 1),
                                  "temp_directory": str(Path(tempfile.gettempdir(), f"humove-report-{os.getpid()}")),
                                  "autoinstall_known_extensions": False, "autoload_known_extensions": False})


def _records(source: Records | pa.Table) -> Records:
    return source if isinstance(source, Records) else Records(source)


def _select(columns: list[str]) -> str:
    return ", ".join(_quoted(c) for c in columns)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# Measures ---------------------------------------------------------------------------------------------------------

@dataclass
class Measure:
    """One histogram: a numeric column's values among kept and rejected records, counted in bins, and its
    thresholds."""

    column: str
    title: str                 # the column, "(all values)" for a list column
    unit: str
    edges: list[float]         # bin edges (bins + 1)
    kept: list[int]            # kept values per bin
    rejected: list[int]        # rejected values per bin
    thresholds: list[Threshold] = field(default_factory=list)
    integer: bool = False
    is_list: bool = False      # values of a list column: several per record

    @classmethod
    def of_values(cls, column: str, title: str, unit: str, kept: list[float], rejected: list[float],
                  thresholds: list[Threshold] | None = None, integer: bool = False, is_list: bool = False) -> Measure:
        """A measure binned from its values (the report bins in duckdb: `measures`)."""
        values = [*kept, *rejected]
        edges = bin_edges(min(values), max(values), len(values), integer)
        kept_counts, rejected_counts = (np.histogram(part, edges)[0].tolist() for part in (kept, rejected))
        return cls(column, title, unit, edges.tolist(), kept_counts, rejected_counts, thresholds or [], integer,
                   is_list)


def bin_edges(low: float, high: float, values: int, integer: bool) -> np.ndarray:
    """Histogram bin edges for `values` values from `low` to `high`: between whole numbers, a whole number wide
    and at most 15 bins for counts (`integer`); else 6 to 30 equal bins, fewer for few values."""
    if integer:
        low, high = math.floor(low), math.ceil(high)
        width = max(1, math.ceil((high - low + 1) / 15))
        return np.arange(low, high + width + 1, width) - 0.5
    return np.linspace(low, high, min(30, max(6, values // 3)) + 1)


def measures(source: Records | pa.Table, thresholds: dict[str, list[Threshold]] | None = None) -> list[Measure]:
    """The numeric measures of a stage worth a histogram: floating-point columns (durations, frame rates,
    scores), lists of floats flattened (per-frame scores), frame counts, and the clip length when start and end
    are known; only those with more than one value. Decided measures (with thresholds) first, all of them; the
    others up to `MAX_HISTOGRAMS_PER_STAGE` in all. Binned by duckdb: the bins from each measure's finite values
    (NaN and missing left out), counted per bin and outcome."""
    records = _records(source)
    thresholds = thresholds or {}
    candidates: list[tuple[str, str, str, str, bool, bool]] = []  # column, title, unit, values expression, …
    if {"start_s", "end_s"} <= set(records.column_names):
        candidates.append(("clip length", "clip length (end_s − start_s)", "s", '"end_s" - "start_s"', False, False))
    for column in records.schema:
        name = column.name
        if name in COMMON_NAMES or name in NOT_MEASURES or name in PER_LABEL_COLUMNS:
            continue
        is_list = pa.types.is_list(column.type) and pa.types.is_floating(column.type.value_type)
        integer = pa.types.is_integer(column.type) and name.endswith("num_frames")
        if not (is_list or integer or pa.types.is_floating(column.type)):
            continue
        candidates.append((name, f"{name} (all values)" if is_list else name, unit_of(name),
                           f"unnest({_quoted(name)})" if is_list else _quoted(name), integer, is_list))
    found = [m for m in (_binned(records, *c, thresholds=thresholds.get(c[0], [])) for c in candidates) if m]
    decided = [m for m in found if m.thresholds]
    others = [m for m in found if not m.thresholds]
    return decided + others[:max(0, MAX_HISTOGRAMS_PER_STAGE - len(decided))]


def _binned(records: Records, column: str, title: str, unit: str, expression: str, integer: bool, is_list: bool,
            thresholds: list[Threshold]) -> Measure | None:
    """One measure's histogram, or None where its values are fewer than two different ones (a histogram of one
    value says nothing)."""
    values = (f"SELECT status, CAST(v AS DOUBLE) AS v FROM (SELECT status, {expression} AS v FROM {{t}} "
              "WHERE status IN ('ok', 'rejected')) WHERE isfinite(CAST(v AS DOUBLE))")
    n, low, high = records.connection.execute(
        f"SELECT count(*), min(v), max(v) FROM ({values.format(t=records.name)})").fetchall()[0]
    if not n or low == high:
        return None
    edges = bin_edges(low, high, n, integer)
    bins = len(edges) - 1
    if integer:
        index = f"CAST(floor((v - {float(edges[0])!r}) / {float(edges[1] - edges[0])!r}) AS BIGINT)"
    else:
        index = f"CAST(floor((v - {low!r}) / ({high!r} - {low!r}) * {bins}) AS BIGINT)"
    counts = {"ok": [0] * bins, "rejected": [0] * bins}
    for status, at, found in records.connection.execute(
            f"SELECT status, least(greatest({index}, 0), {bins - 1}) AS bin, count(*) "
            f"FROM ({values.format(t=records.name)}) GROUP BY ALL").fetchall():
        counts[status][at] += found
    return Measure(column, title, unit, edges.tolist(), counts["ok"], counts["rejected"], thresholds, integer,
                   is_list)


def content_type_counts(source: Records | pa.Table) -> dict[str, dict[str, int]]:
    """label → {"kept": clips, "rejected": clips} whose most probable content type it is, most frequent first."""
    records = _records(source)
    if "content_type" not in records.column_names:
        return {}
    counts: dict[str, dict[str, int]] = {}
    for label, status, found in records.connection.execute(
            f"SELECT content_type, status, count(*) FROM {records.name} WHERE status IN ('ok', 'rejected') "
            "AND content_type IS NOT NULL AND content_type <> '' GROUP BY ALL").fetchall():
        counts.setdefault(label, {"kept": 0, "rejected": 0})["kept" if status == "ok" else "rejected"] += found
    return dict(sorted(counts.items(), key=lambda item: (-item[1]["kept"] - item[1]["rejected"], item[0])))


# Records of one status ----------------------------------------------------------------------------------------------

def count(source: Records | pa.Table, status: str) -> int:
    records = _records(source)
    return int(records.scalar("SELECT count(*) FROM {t} WHERE status = $1", [status]))


def first_rows(source: Records | pa.Table, status: str, columns: list[str], limit: int) -> list[dict]:
    """The first `limit` records of one status (in stored order), as dicts of `columns`."""
    return _records(source).query(f"SELECT {_select(columns)} FROM {{t}} WHERE status = $1 "
                                  "ORDER BY file_row_number LIMIT $2", [status, limit]).to_pylist()


def rejection_reasons(source: Records | pa.Table) -> list[tuple[str, int, dict]]:
    """(reason, rejected records, the first of them as id/reason/value/detail), most frequent first (ties: by
    reason); a missing reason is "unspecified"."""
    query = _records(source).query(
        "SELECT * FROM (SELECT coalesce(reason, 'unspecified') AS r, id, reason, value, detail, "
        "count(*) OVER (PARTITION BY coalesce(reason, 'unspecified')) AS n, "
        "row_number() OVER (PARTITION BY coalesce(reason, 'unspecified') ORDER BY file_row_number) AS k "
        "FROM {t} WHERE status = 'rejected') WHERE k = 1 ORDER BY n DESC, r").drop_columns(["k"])
    return [(row.pop("r"), row.pop("n"), row) for row in query.to_pylist()]


def evenly(items: list, n: int) -> list:
    """At most `n` items spread over the list (all of them when there are few)."""
    if n <= 0:
        return []
    step = max(1, len(items) // n)
    return items[::step][:n]


# The same choice as `evenly`, in SQL: row k of `total` (0-based, in order) is taken when it is a multiple of the
# step and among the first n multiples.
_EVENLY = "k % greatest(1, total // {n}) = 0 AND k // greatest(1, total // {n}) < {n}"


def kept_clip_ids(records: dict[str, Records], n: int) -> tuple[list[str], int]:
    """Up to `n` kept clips spread over the sorted ids, and how many there are: clips kept by the last stage
    that has records, among those of the first stage that writes clips (`clip_path`). The records of every
    stage share one connection (`stage_records`)."""
    order = list(records)
    clip_stage = next((s for s in order if "clip_path" in records[s].column_names), None)
    if clip_stage is None:
        return [], 0
    kept = f"SELECT DISTINCT id FROM {records[clip_stage].name} WHERE status = 'ok'"
    later = [s for s in order[order.index(clip_stage) + 1:] if records[s].num_rows]
    connection = records[clip_stage].connection
    if later:
        last = records[later[-1]]
        both = f"{kept} AND id IN (SELECT id FROM {last.name} WHERE status = 'ok')"
        if last.connection is connection and connection.execute(f"SELECT count(*) FROM ({both})").fetchall()[0][0]:
            kept = both
    total = connection.execute(f"SELECT count(*) FROM ({kept})").fetchall()[0][0]
    if n <= 0:
        return [], total
    chosen = connection.execute(
        f"SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k, count(*) OVER () AS total "
        f"FROM ({kept})) WHERE {_EVENLY.format(n=int(n))} ORDER BY id").fetchall()
    return [clip_id for (clip_id,) in chosen], total


def refused_examples(source: Records | pa.Table, n: int) -> dict[str, list[dict]]:
    """reason → up to `n` rejected records (id, reason, value, detail), spread over the sorted ids."""
    if n <= 0:
        return {}
    query = _records(source).query(
        "SELECT * FROM (SELECT coalesce(reason, 'unspecified') AS r, id, reason, value, detail, "
        "row_number() OVER (PARTITION BY coalesce(reason, 'unspecified') ORDER BY id, file_row_number) - 1 AS k, "
        "count(*) OVER (PARTITION BY coalesce(reason, 'unspecified')) AS total "
        f"FROM {{t}} WHERE status = 'rejected') WHERE {_EVENLY.format(n=int(n))} ORDER BY r, k")
    by_reason: dict[str, list[dict]] = {}
    for row in query.drop_columns(["k", "total"]).to_pylist():
        by_reason.setdefault(row.pop("r"), []).append(row)
    return by_reason


def clip_rows(records: dict[str, Records], ids: set[str] | list[str], resolve=lambda value: value) -> dict[str, dict]:
    """clip_id → the stage columns of every stage's record of that clip (any status), for the given ids only:
    the shots clip, the person stage's trimmed clip and artifacts, the pose artifact, the motion file, scores.
    Ids without a clip (`clip_path`) are left out. `resolve`: a stored artifact reference (`*_path`) → the path
    to read (`Ledger.resolved_ref`)."""
    wanted = sorted(set(ids))
    joined: dict[str, dict] = {}
    if not wanted:
        return joined
    for stage in records.values():
        if stage.num_rows == 0:
            continue
        own = [c for c in stage.column_names if c not in COMMON_NAMES]
        for row in stage.where_id_in(wanted, ["id", *own]).to_pylist():
            record_id = row.pop("id")
            merged = joined.setdefault(record_id, {"clip_id": record_id})
            merged.update({key: resolve(value) if key.endswith("_path") else value
                           for key, value in row.items() if value is not None})
    return {clip_id: row for clip_id, row in joined.items() if row.get("clip_path")}


# Collection and captions --------------------------------------------------------------------------------------------

def download_outcomes(source: Records | pa.Table) -> dict:
    """Videos per outcome ("ok", "rejected: duplicate", "error: HTTPError"), overall and per category, and the
    megabytes downloaded, counted by duckdb."""
    records = _records(source)
    category = "download_category" if "download_category" in records.column_names else "NULL"
    error_type = "error_type" if "error_type" in records.column_names else "NULL"
    outcome = ("CASE WHEN status = 'ok' THEN 'ok' WHEN status = 'rejected' THEN 'rejected: ' || "
               "coalesce(nullif(reason, ''), 'unspecified') ELSE 'error: ' || coalesce(nullif("
               f"{error_type}, ''), 'unknown') END")
    rows = records.query(f"SELECT {outcome} AS outcome, coalesce(nullif({category}, ''), '(none)') AS category, "
                         "count(*) AS videos FROM {t} GROUP BY ALL").to_pylist()
    totals: dict[str, int] = {}
    per_category: dict[str, dict[str, int]] = {}
    for row in rows:
        totals[row["outcome"]] = totals.get(row["outcome"], 0) + row["videos"]
        per_category.setdefault(row["category"], {})[row["outcome"]] = row["videos"]
    names = [name for name, _ in sorted(totals.items(), key=lambda item: -item[1])]
    size = "download_bytes" if "download_bytes" in records.column_names else "0"
    downloaded = records.scalar(f"SELECT coalesce(sum(CAST({size} AS DOUBLE)), 0) FROM {{t}} WHERE status = 'ok'")
    return {
        "outcomes": [{"outcome": name, "status": name.split(":")[0], "videos": totals[name]} for name in names],
        "names": names,
        "categories": [{"category": category, "counts": [counts.get(name, 0) for name in names]}
                       for category, counts in sorted(per_category.items())],
        "megabytes": downloaded / 1e6,
    }


def caption_lengths(source: Records | pa.Table) -> dict:
    """Words per kept caption as {words: captions}, template and model captions apart; their count and median;
    how many were malformed twice, counted by duckdb."""
    records = _records(source)
    groups: dict[str, dict[int, int]] = {"template": {}, "model": {}}
    for template, words, found in records.connection.execute(
            f"SELECT coalesce(caption_is_template, false), caption_words, count(*) FROM {records.name} "
            "WHERE status = 'ok' AND caption_words IS NOT NULL GROUP BY ALL ORDER BY 2").fetchall():
        groups["template" if template else "model"][int(words)] = found
    captions = sum(n for group in groups.values() for n in group.values())
    median = records.scalar("SELECT caption_words FROM {t} WHERE status = 'ok' AND caption_words IS NOT NULL "
                            "ORDER BY caption_words LIMIT 1 OFFSET $1", [captions // 2]) if captions else None
    return {"groups": {label: sorted(group.items()) for label, group in groups.items()}, "captions": captions,
            "median": median,
            "malformed": records.scalar("SELECT count(*) FROM {t} WHERE reason = 'caption_malformed'")}


# The run's records ----------------------------------------------------------------------------------------------------

def stage_records(ledger: Ledger) -> dict[str, Records]:
    """Each stage's current records, on one duckdb connection: its `<stage>/current.parquet` (what every run
    writes last), written again first where it is missing or older than the records, configs or listings of the
    run dir (a run dir that a run left unfinished, or one of an older humove). A run dir that is not local is
    read through the ledger instead, one stage at a time."""
    from humove.ledger import CURRENT_FILE
    from humove.storage import is_local

    connection = connect()
    stages = ledger.stage_names()
    if not is_local(ledger.run_dir):
        return {stage: Records(table, connection, f"stage_{index}")
                for index, (stage, table) in enumerate(ledger.iter_current())}
    root = Path(ledger.run_dir.removeprefix("file://"))
    if _stale(root, stages, CURRENT_FILE):
        ledger.write_current()
    found = {}
    for index, stage in enumerate(stages):
        current = root / stage / CURRENT_FILE
        source = str(current) if current.exists() else ledger.schema(stage).arrow.empty_table()
        found[stage] = Records(source, connection, f"stage_{index}")
    return found


def _stale(root: Path, stages: list[str], current_file: str) -> bool:
    """Whether a stage with records lacks its current file, or a file the current records are read from (parts,
    `_stage.json`, `_inputs.parquet`, `run.json`) is newer than the oldest current file."""
    written, read = [], [root / "run.json"]
    for stage in stages:
        folder = root / stage
        files = [path for path in folder.iterdir() if path.is_file()] if folder.is_dir() else []
        current = [path for path in files if path.name == current_file]
        if not current and any(path.name.startswith("part-") for path in files):
            return True
        written += current
        read += [path for path in files if path.name != current_file]
    if not written:
        return False
    oldest = min(path.stat().st_mtime_ns for path in written)
    return any(path.exists() and path.stat().st_mtime_ns > oldest for path in read)



def summary(ledger: Ledger, records: dict[str, Records]) -> list[StageSummary]:
    """`Ledger.summary()` counted by duckdb over the current records: per stage its records by status (rejections
    by reason, errors that used up their attempts as quarantined) and its current inputs with no record yet
    (pending: of the source's listing for the first stage, of the stage before's `ok` ids for the others)."""
    from humove.ledger import StageSummary

    max_attempts = int(ledger.run_info().get("max_attempts", 3))
    found: list[StageSummary] = []
    found_names: list[str] = []
    for index, (stage, current) in enumerate(records.items()):
        counted = StageSummary(stage)
        for status, reason, used_up, n in current.connection.execute(
                f"SELECT status, CASE WHEN status = 'rejected' THEN coalesce(reason, 'unspecified') END, "
                f"status = 'error' AND attempt >= $1, count(*) FROM {current.name} GROUP BY ALL",
                [max_attempts]).fetchall():
            if status == "ok":
                counted.ok += n
            elif status == "rejected":
                counted.rejected[reason] = counted.rejected.get(reason, 0) + n
            elif used_up:
                counted.quarantined += n
            elif status == "error":
                counted.error += n
        inputs = None
        if index == 0:
            listed = ledger.listed_inputs(stage)
            if listed is not None:
                current.connection.register("listed_inputs", pa.table({"id": listed}))
                inputs = "SELECT id FROM listed_inputs"
        else:
            inputs = f"SELECT DISTINCT id FROM {found_names[-1]} WHERE status = 'ok'"
        if inputs is not None:
            counted.pending = current.connection.execute(
                f"SELECT count(*) FROM ({inputs}) u WHERE NOT EXISTS "
                f"(SELECT 1 FROM {current.name} s WHERE s.input_id = u.id)").fetchall()[0][0]
        found.append(counted)
        found_names.append(current.name)
    return found
