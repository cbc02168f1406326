"""What the report shows, read from a run's ledger: units, thresholds, measures, and the sample of clips that get
previews. Nothing here draws or writes."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from humove.ledger import is_in
from humove.schemas.records import COMMON_NAMES

if TYPE_CHECKING:
    from humove.ledger import Ledger

MAX_HISTOGRAMS_PER_STAGE = 12  # decided measures always get theirs, the other measures fill up to this
MAX_EXAMPLES = 5               # error examples per stage
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


# Measures ---------------------------------------------------------------------------------------------------------

@dataclass
class Measure:
    """One histogram: a numeric column's values among kept and rejected records, and its thresholds."""

    column: str
    title: str                 # the column, "(all values)" for a list column
    unit: str
    kept: list[float]
    rejected: list[float]
    thresholds: list[Threshold] = field(default_factory=list)
    integer: bool = False
    is_list: bool = False      # values of a list column: several per record


def measures(table: pa.Table, thresholds: dict[str, list[Threshold]] | None = None) -> list[Measure]:
    """The numeric measures of a stage worth a histogram: floating-point columns (durations, frame rates,
    scores), lists of floats flattened (per-frame scores), frame counts, and the clip length when start and end
    are known; only those with more than one value. Decided measures (with thresholds) first, all of them; the
    others up to `MAX_HISTOGRAMS_PER_STAGE` in all."""
    thresholds = thresholds or {}
    parts = {label: table.filter(pc.equal(table["status"], status)) if table.num_rows else table
             for label, status in (("kept", "ok"), ("rejected", "rejected"))}
    found: list[Measure] = []
    if {"start_s", "end_s"} <= set(table.column_names):
        lengths = {label: _finite(pc.subtract(part["end_s"], part["start_s"]).to_pylist())
                   for label, part in parts.items()}
        found.append(Measure("clip length", "clip length (end_s − start_s)", "s", **lengths))
    for column in table.schema:
        name = column.name
        if name in COMMON_NAMES or name in NOT_MEASURES or name in PER_LABEL_COLUMNS:
            continue
        is_list = pa.types.is_list(column.type) and pa.types.is_floating(column.type.value_type)
        integer = pa.types.is_integer(column.type) and name.endswith("num_frames")
        if not (is_list or integer or pa.types.is_floating(column.type)):
            continue
        values = {label: _finite(_flatten(part[name].to_pylist()) if is_list else part[name].to_pylist())
                  for label, part in parts.items()}
        found.append(Measure(name, f"{name} (all values)" if is_list else name, unit_of(name), **values,
                             thresholds=thresholds.get(name, []), integer=integer, is_list=is_list))
    found = [m for m in found if len(set(m.kept + m.rejected)) > 1]  # a histogram of one value says nothing
    decided = [m for m in found if m.thresholds]
    others = [m for m in found if not m.thresholds]
    return decided + others[:max(0, MAX_HISTOGRAMS_PER_STAGE - len(decided))]


def content_type_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """label → {"kept": clips, "rejected": clips} whose most probable content type it is, most frequent first."""
    if "content_type" not in table.column_names:
        return {}
    counts = {label: Counter(value for value in table.filter(pc.equal(table["status"], status))["content_type"]
                             .to_pylist() if value) for label, status in (("kept", "ok"), ("rejected", "rejected"))}
    labels = sorted(set(counts["kept"]) | set(counts["rejected"]),
                    key=lambda label: (-counts["kept"][label] - counts["rejected"][label], label))
    return {label: {part: counts[part][label] for part in ("kept", "rejected")} for label in labels}


# Records ----------------------------------------------------------------------------------------------------------

def rows(table: pa.Table, status: str, columns: list[str], limit: int | None = None) -> list[dict]:
    """The records of one status (the first `limit` of them), as dicts of `columns`."""
    if table.num_rows == 0:
        return []
    chosen = table.filter(pc.equal(table["status"], status))
    if limit is not None:
        chosen = chosen.slice(0, limit)
    return chosen.select(columns).to_pylist()


def count(table: pa.Table, status: str) -> int:
    return 0 if table.num_rows == 0 else int(pc.sum(pc.equal(table["status"], status)).as_py() or 0)


def evenly(items: list, n: int) -> list:
    """At most `n` items spread over the list (all of them when there are few)."""
    if n <= 0:
        return []
    step = max(1, len(items) // n)
    return items[::step][:n]


def kept_clip_ids(tables: dict[str, pa.Table], n: int) -> tuple[list[str], int]:
    """Up to `n` kept clips spread over the sorted ids, and how many there are: clips kept by the last stage
    that has records, among those of the first stage that writes clips (`clip_path`)."""
    order = list(tables)
    clip_stage = next((s for s in order if "clip_path" in tables[s].column_names), None)
    if clip_stage is None:
        return [], 0
    kept = sorted(_ids(tables[clip_stage], "ok"))
    later = [s for s in order[order.index(clip_stage) + 1:] if tables[s].num_rows]
    if later:
        last = _ids(tables[later[-1]], "ok")
        if last & set(kept):
            kept = [clip_id for clip_id in kept if clip_id in last]
    return evenly(kept, n), len(kept)


def refused_examples(table: pa.Table, n: int) -> dict[str, list[dict]]:
    """reason → up to `n` rejected records (id, reason, value, detail), spread over the sorted ids."""
    by_reason: dict[str, list[dict]] = {}
    for row in sorted(rows(table, "rejected", ["id", "reason", "value", "detail"]), key=lambda r: r["id"]):
        by_reason.setdefault(row["reason"] or "unspecified", []).append(row)
    return {reason: evenly(found, n) for reason, found in sorted(by_reason.items())}


def clip_rows(tables: dict[str, pa.Table], ids: set[str] | list[str]) -> dict[str, dict]:
    """clip_id → the stage columns of every stage's record of that clip (any status), for the given ids only:
    the shots clip, the person stage's trimmed clip and artifacts, the pose artifact, the motion file, scores.
    Ids without a clip (`clip_path`) are left out."""
    wanted = pa.array(sorted(set(ids)), pa.string())
    joined: dict[str, dict] = {}
    if not len(wanted):
        return joined
    for table in tables.values():
        if table.num_rows == 0:
            continue
        own = [c for c in table.column_names if c not in COMMON_NAMES]
        for row in table.filter(is_in(table["id"], wanted)).select(["id", *own]).to_pylist():
            record_id = row.pop("id")
            merged = joined.setdefault(record_id, {"clip_id": record_id})
            merged.update({key: value for key, value in row.items() if value is not None})
    return {clip_id: row for clip_id, row in joined.items() if row.get("clip_path")}


def _ids(table: pa.Table, status: str) -> set[str]:
    return {row["id"] for row in rows(table, status, ["id"])}


def _flatten(lists: list[list | None]) -> list:
    return [value for values in lists if values for value in values]


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]
