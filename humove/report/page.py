"""The report page: what each section shows (`data`, `charts`, `previews`), rendered by the Jinja2 templates in
`templates/` with autoescaping (record fields, reasons, captions and paths are untrusted text)."""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from jinja2 import Environment, PackageLoader, StrictUndefined

from humove.collect import report as collect
from humove.report import ReportOptions, charts, data
from humove.report.previews import (
    BONE_COLOUR,
    MAIN_BOX_COLOUR,
    OTHER_BOX_COLOUR,
    POINT_COLOUR,
    SMPL_COLOUR,
    SMPL_INVALID_COLOUR,
    MediaFolder,
    Previews,
)
from humove.report.status import STATUS_COLOURS, by_count
from humove.storage import Storage, is_local

if TYPE_CHECKING:
    from humove.ledger import Ledger, StageSummary

STATUSES = ("ok", "rejected", "error", "quarantined", "pending")
# Measures printed on a clip card (column, label, format).
CARD_MEASURES = (("aesthetic_mean", "aesthetic", ".3g"), ("person_box_height", "person height", ".2f"),
                 ("pose_visible_mean", "visible keypoints", ".3g"), ("motion_agreement_pck", "fit PCK", ".0%"),
                 ("motion_reprojection_rel", "reprojection/height", ".2f"),
                 ("motion_valid_fraction", "valid frames", ".0%"))
# What the colours drawn on a preview mean, for the legend above the cards.
OVERLAY_LEGEND = ((MAIN_BOX_COLOUR, "main person box"), (OTHER_BOX_COLOUR, "other people"),
                  (BONE_COLOUR, "pose skeleton"), (POINT_COLOUR, "pose keypoints"),
                  (SMPL_COLOUR, "fitted SMPL joints"), (SMPL_INVALID_COLOUR, "SMPL joints, invalid frame"))


def write_page(ledger: Ledger, out_path: str, options: ReportOptions) -> str:
    stages = ledger.stage_names()
    records = data.stage_records(ledger)  # what is still an input of each stage, like the funnel; not loaded
    summary = data.summary(ledger, records)
    units = {stage: data.stage_unit(ledger, stage) for stage in stages}
    thresholds = {stage: data.stage_thresholds(ledger, stage) for stage in stages}
    html_url = _local_path(out_path) if is_local(out_path) else out_path
    media = MediaFolder(html_url)
    jitter = next((t for found in thresholds.values() for t in found.get("motion_jitter_mps2", [])), None)
    previews = Previews(media, ledger.run_dir, options.preview_width, options.preview_frames, jitter)
    chart = _Charts(media)

    kept_ids, kept_total = data.kept_clip_ids(records, options.kept_clips)
    refused = {stage: data.refused_examples(found, options.examples_per_reason)  # video ids have no clip: no card
               for stage, found in records.items()}
    clips = data.clip_rows(records, kept_ids + [row["id"] for by_reason in refused.values()
                                                for examples in by_reason.values() for row in examples],
                           ledger.resolved_ref)
    captions = (collect.captions_of(records["caption"].where_id_in(kept_ids), kept_ids)
                if "caption" in records and kept_ids else {})
    kept_cards = [_card(clips[clip_id], previews, "kept", "", captions.get(clip_id))
                  for clip_id in kept_ids if clip_id in clips]

    page = _environment().get_template("report.html.j2").render(
        run_dir=ledger.run_dir,
        stages=stages,
        generated=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        colours=STATUS_COLOURS,
        funnel=_funnel(summary, units, chart),
        rejections=_rejections(records, units, refused, clips, previews, chart),
        measures=_measures(records, units, thresholds, chart),
        kept={"cards": kept_cards, "total": kept_total, "captioned": bool(captions)},
        legend=[("#{:02x}{:02x}{:02x}".format(*colour), label) for colour, label in OVERLAY_LEGEND],
        options=options,
        collection=_collection(records, chart),
        motion_eval=_motion_eval(ledger),
        dataset=_dataset(ledger, stages),
        errors=_errors(records),
    )
    Storage(_parent(html_url)).write_text(html_url, page)
    media.prune()
    return out_path


class _Charts:
    """Charts as PNG files of the media folder, named by the hash of what they show: `chart("histogram",
    measure, "clips")` draws `charts.histogram(measure, "clips")` unless the same chart is already there."""

    def __init__(self, media: MediaFolder):
        self.media = media

    def __call__(self, name: str, *args) -> str:
        key = {"chart": name, "version": charts.VERSION, "args": args}
        return self.media.file(key, "png", lambda: charts.png(getattr(charts, name)(*args)))


def _environment() -> Environment:
    environment = Environment(loader=PackageLoader("humove.report", "templates"), autoescape=True,
                              undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    environment.filters["number"] = _number
    return environment


def _local_path(url: str) -> str:
    return str(Path(url.removeprefix("file://")).absolute())


def _parent(url: str) -> str:
    return str(Path(url).parent) if is_local(url) else url.rsplit("/", 1)[0]


def _number(value) -> str:
    """A measured value in four significant digits; "-" for none (or anything that is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:.4g}"


# Sections ---------------------------------------------------------------------------------------------------------

def _funnel(summary: list[StageSummary], units: dict[str, str], chart: _Charts) -> dict:
    stages = [{"stage": s.stage, "unit": units.get(s.stage, "records"), "ok": s.ok,
               "rejected": sum(s.rejected.values()), "error": s.error, "quarantined": s.quarantined,
               "pending": s.pending, "total": s.total, "reasons": by_count(s.rejected)} for s in summary]
    changes = [{"stage": stage["stage"], "before": before["unit"], "after": stage["unit"],
                "one_before": before["unit"].removesuffix("s"), "one_after": stage["unit"].removesuffix("s")}
               for before, stage in zip(stages[:-1], stages[1:], strict=True) if stage["unit"] != before["unit"]]
    return {"stages": stages, "changes": changes, "chart": chart("funnel", stages) if stages else None}


def _rejections(records: dict[str, data.Records], units: dict[str, str],
                refused: dict[str, dict[str, list[dict]]], clips: dict[str, dict], previews: Previews,
                chart: _Charts) -> list[dict]:
    blocks = []
    for stage, found in records.items():
        counted = data.rejection_reasons(found)
        if not counted:
            continue
        reasons = [(reason, n) for reason, n, _ in counted]
        first = {reason: row for reason, _, row in counted}
        cards = [_card(clips[row["id"]], previews, "refused", _refusal_note(stage, row))
                 for examples in refused.get(stage, {}).values() for row in examples if row["id"] in clips]
        blocks.append({"stage": stage, "unit": units[stage], "chart": chart("reasons", stage, reasons, units[stage]),
                       "reasons": [{"reason": reason, "count": n, "example": first[reason]} for reason, n in reasons],
                       "cards": cards})
    return blocks


def _refusal_note(stage: str, row: dict) -> str:
    """The stage's detail puts the measure beside its threshold ("close_up: 2 of 5 body parts … (needs …)")."""
    if row["detail"]:
        return f"{stage}: {row['detail']}"
    value = f" ({_number(row['value'])})" if row["value"] is not None else ""
    return f"{stage}: {row['reason'] or 'unspecified'}{value}"


def _card(row: dict, previews: Previews, outcome: str, note: str, caption: dict | None = None) -> dict:
    """One clip: its preview and timeline, what it is, why it was refused, its scores and caption."""
    preview = previews.of(row)
    scores = [f"{label} {format(row[name], spec)}" for name, label, spec in CARD_MEASURES
              if isinstance(row.get(name), float)]
    return {"id": row["clip_id"], "outcome": outcome, "note": note, "preview": preview, "scores": scores,
            "caption": caption}


def _measures(records: dict[str, data.Records], units: dict[str, str],
              thresholds: dict[str, dict[str, list[data.Threshold]]], chart: _Charts) -> list[dict]:
    blocks = []
    for stage, stage_records in records.items():
        found = data.measures(stage_records, thresholds[stage])
        content = data.content_type_counts(stage_records)
        if not found and not content:
            continue
        blocks.append({
            "stage": stage, "unit": units[stage],
            "charts": [{"uri": chart("histogram", measure, units[stage]), "column": measure.column,
                        "thresholds": measure.thresholds} for measure in found],
            "content_types": chart("content_types", stage, content) if content else None,
        })
    return blocks


def _collection(records: dict[str, data.Records], chart: _Charts) -> dict:
    """The keywords (a few hundred: read whole), downloads and caption lengths, for the stages that ran."""
    ran = {stage for stage, found in records.items() if found.num_rows}
    lengths = data.caption_lengths(records["caption"]) if "caption" in ran else None
    return {
        "keywords": collect.keyword_summary(records["keywords"].table()) if "keywords" in ran else None,
        "downloads": data.download_outcomes(records["download"]) if "download" in ran else None,
        "captions": {**lengths, "chart": chart("caption_lengths", lengths["groups"])}
        if lengths and lengths["captions"] else lengths,
    }


def _motion_eval(ledger: Ledger) -> dict | None:
    """`<run_dir>/motion_eval.json` (written by `humove demo` / `humove eval-motion --out`): its rows, or why it
    cannot be shown."""
    url = ledger.storage.join("motion_eval.json")
    if not ledger.storage.exists(url):
        return None
    try:
        results = json.loads(ledger.storage.read_bytes(url))
        rows = [*results.get("clips", []), *([results["overall"]] if results.get("overall") else [])]
        if not all(isinstance(row, dict) for row in rows):
            raise ValueError("its rows are not objects")
    except (ValueError, AttributeError) as exc:
        return {"problem": f"{url} cannot be read: {exc}", "rows": []}
    columns = ("frames", "mpjpe_mm", "pa_mpjpe_mm", "accel_error_mm", "foot_sliding_mps", "depth_drift_m")
    return {"problem": None, "rows": [{"key": str(row.get("key", "")),
                                       "values": [row.get(column) for column in columns]} for row in rows]}


def _dataset(ledger: Ledger, stages: list[str]) -> dict:
    """Counts per split from the `dataset.json` of a shards stage, or why there are none."""
    from humove.schemas.shard import DEFAULT_OUTPUT_DIR, MANIFEST_FILE, ShardSampleError, read_manifest

    if "shards" not in stages:
        return {"note": "No shards stage in this run."}
    state = ledger.stage_state("shards") or {}
    output = (state.get("config") or {}).get("output") or ledger.storage.join(DEFAULT_OUTPUT_DIR)
    try:
        manifest = read_manifest(Storage(output).read_bytes(Storage(output).join(MANIFEST_FILE)))
    except (FileNotFoundError, ShardSampleError) as exc:
        return {"note": f"No dataset written yet ({type(exc).__name__})."}
    return {"note": None, "output": output, "samples": manifest.total_samples, "shards": len(manifest.shards),
            "splits": [{"split": split, "samples": c.samples, "videos": c.videos, "shards": c.shards,
                        "megabytes": f"{c.bytes / 1e6:.1f}", "with_motion": c.with_motion}
                       for split, c in manifest.splits.items()]}


def _errors(records: dict[str, data.Records]) -> list[dict]:
    counts = {stage: data.count(found, "error") for stage, found in records.items()}
    return [{"stage": stage, "count": counts[stage],
             "examples": data.first_rows(found, "error", ["id", "error_type", "error_message", "attempt"],
                                         data.MAX_EXAMPLES)}
            for stage, found in records.items() if counts[stage]]
