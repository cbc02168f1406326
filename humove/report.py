"""What a run did, for people: the `humove status` table and the self-contained `humove report` HTML file.

The HTML report is one file with everything inline (CSS, charts and thumbnails as base64 PNG), so it can be
mailed or opened from an object store without a server: a funnel of counts per stage, rejection reasons per
stage with examples and thumbnails of a few refused clips per reason, histograms of the numeric measures and
scores (kept and rejected records stacked), first/middle frame thumbnails of some kept clips, and examples of
errors. Thumbnails read the clip through `current_clip` (the person stage's trimmed span when there is one) and
draw the main-person box (green), the other detections (grey) and the pose keypoints (person and pose artifacts,
when those stages ran; a run without them gets plain frames).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
import posixpath
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from rich.table import Table

from humove.artifacts import read_npz
from humove.collect.report import report_sections
from humove.schemas.motion import SMPL_PARENTS
from humove.schemas.records import COMMON_NAMES
from humove.storage import Storage, is_local, open_url

if TYPE_CHECKING:
    from humove.ledger import Ledger, StageSummary

MAX_HISTOGRAMS_PER_STAGE = 9
MAX_THUMBNAIL_CLIPS = 6
MAX_REFUSED_PER_REASON = 2
MAX_EXAMPLES = 5
THUMBNAIL_WIDTH = 240
# Colours per status, shared by the terminal table and the charts.
STATUS_COLOURS = {"ok": "#2e7d32", "rejected": "#ef6c00", "error": "#c62828", "quarantined": "#6a1b9a",
                  "pending": "#9e9e9e"}


# Terminal ------------------------------------------------------------------------------------------------------

def status_table(summary: list[StageSummary]) -> Table:
    """Per stage: ok, rejected (total and by reason), error, quarantined, pending, total."""
    table = Table(title="humove run status", header_style="bold")
    table.add_column("stage")
    for name in ("ok", "rejected", "error", "quarantined", "pending", "total"):
        table.add_column(name, justify="right")
    table.add_column("rejected by reason")
    for stage in summary:
        table.add_row(
            stage.stage,
            f"[green]{stage.ok}[/green]",
            _count_cell(sum(stage.rejected.values()), "dark_orange"),
            _count_cell(stage.error, "red"),
            _count_cell(stage.quarantined, "magenta"),
            _count_cell(stage.pending, "grey50"),
            str(stage.total),
            ", ".join(f"{reason} {count}" for reason, count in _by_count(stage.rejected)) or "-",
        )
    return table


def _count_cell(count: int, colour: str) -> str:
    return f"[{colour}]{count}[/{colour}]" if count else "0"


def _by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


# HTML report ---------------------------------------------------------------------------------------------------

def write_report(ledger: Ledger, out_path: str) -> str:
    """Write the HTML report of a run to `out_path` (local path or URL), atomically; returns `out_path`."""
    stages = ledger.stage_names()
    summary = ledger.summary()
    tables = ledger.current()  # what is still an input of each stage, like the funnel
    run_dir = getattr(ledger, "run_dir", "")
    clips = clip_rows(tables)

    sections = [
        _section("Funnel", _funnel_chart(summary) + _summary_html(summary)),
        _section("Rejection reasons", _rejections_html(tables, clips)),
        _section("Measures and scores (kept and rejected)", _histograms_html(tables)),
        _section("Sample clips", _thumbnails_html(tables, clips)),
        *(_section(title, content) for title, content in report_sections(tables, clips, _clip_card)),
        _section("Extracted motion against known motion", _motion_eval_html(ledger)),
        _section("Dataset", _dataset_html(ledger, stages)),
        _section("Errors", _errors_html(tables)),
    ]
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    document = _PAGE.format(
        title=html.escape(f"humove report: {run_dir}"),
        css=_CSS,
        heading=html.escape(f"humove run {run_dir}"),
        meta=html.escape(f"stages: {' → '.join(stages)} · generated {generated}"),
        body="\n".join(sections),
    )
    _write_text(out_path, document)
    return out_path


def _write_text(out_path: str, text: str) -> None:
    if is_local(out_path):
        path = Path(out_path.removeprefix("file://")).absolute()
        Storage(str(path.parent)).write_text(str(path), text)
    else:
        Storage(posixpath.dirname(out_path)).write_text(out_path, text)


def _section(title: str, content: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{content}\n</section>"


def _summary_html(summary: list[StageSummary]) -> str:
    rows = []
    for stage in summary:
        reasons = ", ".join(f"{html.escape(r)} {n}" for r, n in _by_count(stage.rejected)) or "-"
        rows.append(
            f"<tr><td>{html.escape(stage.stage)}</td><td>{stage.ok}</td><td>{sum(stage.rejected.values())}</td>"
            f"<td>{stage.error}</td><td>{stage.quarantined}</td><td>{stage.pending}</td><td>{stage.total}</td>"
            f"<td>{reasons}</td></tr>"
        )
    return ("<table><tr><th>stage</th><th>ok</th><th>rejected</th><th>error</th><th>quarantined</th>"
            "<th>pending</th><th>total</th><th>rejected by reason</th></tr>" + "".join(rows) + "</table>")


def _funnel_chart(summary: list[StageSummary]) -> str:
    """Stacked horizontal bars, first stage on top: how many items each stage kept, rejected, failed."""
    if not summary:
        return "<p>No stages have run yet.</p>"
    names = [s.stage for s in summary]
    parts = {
        "ok": [s.ok for s in summary],
        "rejected": [sum(s.rejected.values()) for s in summary],
        "error": [s.error for s in summary],
        "quarantined": [s.quarantined for s in summary],
        "pending": [s.pending for s in summary],
    }
    figure = Figure(figsize=(8, 0.6 * len(names) + 1.6), layout="constrained")
    axes = figure.subplots()
    left = [0] * len(names)
    positions = list(range(len(names)))[::-1]
    plotted = False
    for status, counts in parts.items():
        if any(counts):
            axes.barh(positions, counts, left=left, color=STATUS_COLOURS[status], label=status)
            left = [a + b for a, b in zip(left, counts, strict=True)]
            plotted = True
    for position, stage in zip(positions, summary, strict=True):
        axes.text(stage.total, position, f" {stage.ok}/{stage.total}", va="center", fontsize=9)
    axes.set_yticks(positions, names)
    axes.set_xlabel("items")
    axes.set_xlim(0, max(max(left), 1) * 1.15)
    if plotted:
        figure.legend(loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    axes.set_title("items per stage by status")
    return _image(figure, "funnel: counts per stage")


def _rejections_html(tables: dict[str, pa.Table], clips: dict[str, dict]) -> str:
    blocks = []
    for stage, table in tables.items():
        rejected = _rows(table, "rejected", ["id", "reason", "value", "detail"])
        if not rejected:
            continue
        counts = Counter(row["reason"] or "unspecified" for row in rejected)
        examples: dict[str, dict] = {}
        for row in rejected:
            examples.setdefault(row["reason"] or "unspecified", row)
        rows = "".join(
            f"<tr><td>{html.escape(reason)}</td><td>{count}</td><td>{html.escape(examples[reason]['id'])}</td>"
            f"<td>{_number(examples[reason]['value'])}</td>"
            f"<td>{html.escape(_short(examples[reason]['detail'] or ''))}</td></tr>"
            for reason, count in _by_count(dict(counts))
        )
        figure = Figure(figsize=(6, 0.4 * len(counts) + 1.2))
        axes = figure.subplots()
        ordered = _by_count(dict(counts))[::-1]
        axes.barh([r for r, _ in ordered], [n for _, n in ordered], color=STATUS_COLOURS["rejected"])
        axes.set_xlabel("records")
        axes.set_title(f"{stage}: rejections by reason")
        figure.tight_layout()
        blocks.append(
            f"<h3>{html.escape(stage)}</h3>" + _image(figure, f"{stage} rejection reasons")
            + "<table><tr><th>reason</th><th>count</th><th>example</th><th>value</th><th>detail</th></tr>"
            + rows + "</table>" + _refused_cards(stage, rejected, clips)
        )
    return "\n".join(blocks) or "<p>No rejections.</p>"


def _refused_cards(stage: str, rejected: list[dict], clips: dict[str, dict]) -> str:
    """Thumbnails of up to `MAX_REFUSED_PER_REASON` refused clips per reason (clips only, not videos)."""
    by_reason: dict[str, list[dict]] = {}
    for row in sorted(rejected, key=lambda r: r["id"]):
        clip = clips.get(row["id"])
        if clip is not None and clip.get("clip_path"):
            by_reason.setdefault(row["reason"] or "unspecified", []).append(row)
    cards = []
    for reason, rows in sorted(by_reason.items()):
        step = max(1, len(rows) // MAX_REFUSED_PER_REASON)
        for row in rows[::step][:MAX_REFUSED_PER_REASON]:
            # the stage's detail puts the measure beside its threshold ("close_up: 2 of 5 body parts … (needs …)")
            note = f"{stage}: " + (_short(row["detail"], 160) if row["detail"] else reason
                                   + (f" ({_number(row['value'])})" if row["value"] is not None else ""))
            cards.append(_clip_card(clips[row["id"]], note, alt_prefix="refused "))
    return "<div class='cards'>" + "".join(cards) + "</div>" if cards else ""


def _plottable_columns(table: pa.Table) -> dict[str, dict[str, list[float]]]:
    """Numeric measures worth a histogram, each as {"kept": values, "rejected": values}: floating-point stage
    columns (durations, frame rates, scores), lists of floats flattened (per-frame scores), frame counts,
    positions in the source video left out, plus the clip length when start and end are known."""
    parts = {status: table.filter(pc.equal(table["status"], status)) if table.num_rows else table
             for status in ("ok", "rejected")}
    columns: dict[str, dict[str, list[float]]] = {}
    if {"start_s", "end_s"} <= set(table.column_names):
        columns["clip length (end_s - start_s)"] = {
            label: _finite((e - s) if e is not None and s is not None else None
                           for s, e in zip(part["start_s"].to_pylist(), part["end_s"].to_pylist(), strict=True))
            for label, part in zip(("kept", "rejected"), parts.values(), strict=True)
        }
    for field in table.schema:
        if field.name in COMMON_NAMES or field.name in ("start_s", "end_s") or field.name in PER_LABEL_COLUMNS:
            continue
        is_list = pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type)
        wanted = is_list or pa.types.is_floating(field.type) or (
            pa.types.is_integer(field.type) and field.name.endswith("num_frames"))
        if not wanted:
            continue
        name = f"{field.name} (all values)" if is_list else field.name
        columns[name] = {
            label: _finite(_flatten(part[field.name].to_pylist()) if is_list else part[field.name].to_pylist())
            for label, part in zip(("kept", "rejected"), parts.values(), strict=True)
        }
    # A histogram of one value (or none) says nothing.
    return {name: values for name, values in columns.items() if len(set(values["kept"] + values["rejected"])) > 1}


def _flatten(lists: list[list | None]) -> list:
    return [value for values in lists if values for value in values]


def _histograms_html(tables: dict[str, pa.Table]) -> str:
    """Per stage, one histogram per measure: kept records (blue) and rejected ones (orange) stacked, so a
    threshold shows as the edge between them."""
    blocks = []
    for stage, table in tables.items():
        columns = list(_plottable_columns(table).items())[:MAX_HISTOGRAMS_PER_STAGE]
        if not columns:
            continue
        cols = min(3, len(columns))
        rows = math.ceil(len(columns) / cols)
        figure = Figure(figsize=(3.4 * cols, 2.6 * rows))
        for number, (name, values) in enumerate(columns, start=1):
            axes = figure.add_subplot(rows, cols, number)
            series = [(label, values[label]) for label in ("kept", "rejected") if values[label]]
            total = sum(len(v) for _, v in series)
            colours = {"kept": "#1565c0", "rejected": STATUS_COLOURS["rejected"]}
            axes.hist([v for _, v in series], bins=min(30, max(5, total // 3)), stacked=True,
                      color=[colours[label] for label, _ in series], label=[label for label, _ in series])
            axes.set_title(name, fontsize=9)
            axes.tick_params(labelsize=8)
            if len(series) > 1:
                axes.legend(fontsize=7, frameon=False)
        figure.suptitle(f"{stage}: kept and rejected records", fontsize=10)
        figure.tight_layout()
        blocks.append(f"<h3>{html.escape(stage)}</h3>" + _image(figure, f"{stage} histograms")
                      + _content_type_chart(stage, table))
    return "\n".join(blocks) or "<p>No numeric measures with more than one value yet.</p>"


# Per-label lists (scores in the order of a labels column): mixing their labels in one histogram says nothing.
PER_LABEL_COLUMNS = {"content_type_scores": "content_type_labels"}


def _content_type_counts(table: pa.Table) -> dict[str, dict[str, int]]:
    """label → {"kept": clips, "rejected": clips} whose most probable content type it is, most frequent first."""
    if "content_type" not in table.column_names:
        return {}
    counts = {label: Counter(value for value in table.filter(pc.equal(table["status"], status))["content_type"]
                             .to_pylist() if value) for label, status in (("kept", "ok"), ("rejected", "rejected"))}
    labels = sorted(set(counts["kept"]) | set(counts["rejected"]),
                    key=lambda label: (-counts["kept"][label] - counts["rejected"][label], label))
    return {label: {part: counts[part][label] for part in ("kept", "rejected")} for label in labels}


def _content_type_chart(stage: str, table: pa.Table) -> str:
    """Clips per most probable content type (the aesthetic encoder's zero-shot labels: photo, cartoon, …), kept
    and rejected stacked; `synthetic_score`, the decided measure, has its histogram with the others."""
    counts = _content_type_counts(table)
    if not counts:
        return ""
    labels = list(counts)
    figure = Figure(figsize=(4.5, 0.6 + 0.3 * len(labels)))
    axes = figure.add_subplot(1, 1, 1)
    kept = [counts[label]["kept"] for label in labels]
    axes.barh(labels, kept, color="#1565c0", label="kept")
    axes.barh(labels, [counts[label]["rejected"] for label in labels], left=kept,
              color=STATUS_COLOURS["rejected"], label="rejected")
    axes.invert_yaxis()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"{stage}: clips by content type (zero-shot)", fontsize=9)
    axes.tick_params(labelsize=8)
    axes.legend(fontsize=7, frameon=False)
    figure.tight_layout()
    return _image(figure, f"{stage} content types")


def clip_rows(tables: dict[str, pa.Table]) -> dict[str, dict]:
    """clip_id → the stage columns of every stage's record of that clip (any status): the shots clip, the
    person stage's trimmed clip and artifacts, the pose artifact, scores. Video-level records are left out."""
    rows: dict[str, dict] = {}
    for table in tables.values():
        own = [c for c in table.column_names if c not in COMMON_NAMES]
        for row in table.select(["id", *own]).to_pylist():
            record_id = row.pop("id")
            merged = rows.setdefault(record_id, {"clip_id": record_id})
            merged.update({key: value for key, value in row.items() if value is not None})
    return {clip_id: row for clip_id, row in rows.items() if row.get("clip_path")}


def _thumbnails_html(tables: dict[str, pa.Table], clips: dict[str, dict]) -> str:
    """First and middle frame of a few kept clips, preferring clips kept by the last stage that ran."""
    order = list(tables)
    clip_stage = next((s for s in order if "clip_path" in tables[s].column_names), None)
    if clip_stage is None:
        return "<p>No clips yet.</p>"
    kept_ids = sorted(_ids(tables[clip_stage], "ok"))
    later = [s for s in order[order.index(clip_stage) + 1:] if tables[s].num_rows]
    if later:
        kept = _ids(tables[later[-1]], "ok")
        if kept & set(kept_ids):
            kept_ids = [c for c in kept_ids if c in kept]
    step = max(1, len(kept_ids) // MAX_THUMBNAIL_CLIPS)
    cards = [_clip_card(clips[clip_id], "kept") for clip_id in kept_ids[::step][:MAX_THUMBNAIL_CLIPS]
             if clip_id in clips]
    return "<div class='cards'>" + "".join(cards) + "</div>" if cards else "<p>No kept clips yet.</p>"


def _clip_card(row: dict, note: str, alt_prefix: str = "") -> str:
    """A card: first and middle frame of the clip with boxes and keypoints drawn, its id, length and scores."""
    clip_id = row["clip_id"]
    try:
        frames, info = _clip_frames(row)
    except Exception as exc:  # noqa: BLE001 - one unreadable clip must not break the report
        return (f"<div class='card'><p>{html.escape(clip_id)}<br>{html.escape(note)}</p>"
                f"<p class='err'>cannot decode: {html.escape(_short(str(exc)))}</p></div>")
    images = "".join(f"<img alt='{html.escape(alt_prefix + label)} frame' src='data:image/png;base64,{data}'>"
                     for label, data in frames)
    scores = [f"{label} {row[name]:.3g}" for name, label in CARD_MEASURES if isinstance(row.get(name), float)]
    lines = [clip_id, info, note, *scores]
    return f"<div class='card'>{images}<p>{'<br>'.join(html.escape(line) for line in lines if line)}</p></div>"


def _clip_frames(row: dict) -> tuple[list[tuple[str, str]], str]:
    """The first and middle frame of the clip later stages read (`current_clip`), as base64 PNGs with the
    person box and keypoints drawn, `THUMBNAIL_WIDTH` wide; and a line saying which clip that is."""
    try:
        from humove.clips import current_clip

        clip = current_clip(row)
        path, num_frames, fps, trimmed = clip.path, clip.num_frames, clip.fps, clip.trimmed
    except (ImportError, KeyError, TypeError, ValueError):  # records without the full clip columns
        path, num_frames, fps, trimmed = row["clip_path"], row.get("clip_num_frames"), row.get("clip_fps"), False
    overlays = _Overlays.read(row)
    info = f"{num_frames} frames" if num_frames else ""
    if fps:
        info += f" at {fps:.3g} fps"
    if trimmed:
        info += f", person span {row['person_span_start_frame']}–{row['person_span_end_frame']}"
    return _first_and_middle_frames(path, num_frames, overlays), info


def _first_and_middle_frames(url: str, num_frames: int | None, overlays: _Overlays | None = None
                             ) -> list[tuple[str, str]]:
    """Decode the first and the middle frame of a clip with PyAV; base64 PNGs, `THUMBNAIL_WIDTH` wide."""
    import av

    with open_url(url, "rb") as handle, av.open(handle) as container:
        stream = container.streams.video[0]
        total = num_frames or stream.frames or 1
        wanted = {0: "first", max(0, total // 2): "middle"}
        found: list[tuple[str, str]] = []
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                image = frame.to_image()
                if overlays is not None:
                    overlays.draw(image, index)
                image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 4))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                found.append((wanted[index], base64.b64encode(buffer.getvalue()).decode()))
            if index >= max(wanted):
                break
    if not found:
        raise ValueError(f"{url}: no video frames")
    return found


# COCO-17 body skeleton (keypoint index pairs); COCO-WholeBody 133 starts with the same 17 points.
COCO17_EDGES = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
MAIN_BOX_COLOUR, OTHER_BOX_COLOUR = (0, 230, 118), (189, 189, 189)
BONE_COLOUR, POINT_COLOUR = (255, 214, 0), (255, 61, 0)


# Measures printed under a thumbnail (column, label).
CARD_MEASURES = (("aesthetic_mean", "aesthetic"), ("person_box_height", "person height"),
                 ("pose_visible_mean", "visible keypoints"), ("motion_agreement_pck", "fit PCK"),
                 ("motion_reprojection_rel", "reprojection/height"), ("motion_valid_fraction", "valid frames"))
SMPL_COLOUR, SMPL_INVALID_COLOUR = (0, 176, 255), (120, 120, 120)


def _motion_eval_html(ledger: Ledger) -> str:
    """`<run_dir>/motion_eval.json` (written by `humove demo` / `humove eval-motion --out`) as a table."""
    url = ledger.storage.join("motion_eval.json")
    if not ledger.storage.exists(url):
        return "<p>No evaluation against known motion in this run dir (the demo writes one).</p>"
    import json

    results = json.loads(ledger.storage.read_text(url))
    rows = [*results.get("clips", []), *([results["overall"]] if results.get("overall") else [])]
    body = "".join(f"<tr><td>{html.escape(r['key'])}</td><td>{r['frames']}</td><td>{_number(r['mpjpe_mm'])}</td>"
                   f"<td>{_number(r['pa_mpjpe_mm'])}</td><td>{_number(r['accel_error_mm'])}</td>"
                   f"<td>{_number(r.get('foot_sliding_mps'))}</td><td>{_number(r.get('depth_drift_m'))}</td></tr>"
                   for r in rows)
    return ("<table><tr><th>clip</th><th>frames</th><th>MPJPE mm</th><th>PA-MPJPE mm</th>"
            f"<th>accel. error mm/frame²</th><th>foot sliding m/s</th><th>depth drift m</th></tr>{body}</table>")


class _Overlays:
    """The person and pose artifacts of one clip, drawn on its frames (frame i of both is frame i of
    `current_clip`). Coordinates are scaled from the artifact's `frame_size` to the decoded frame."""

    def __init__(self, person: dict | None, pose: dict | None, motion: dict | None = None):
        self.person = person
        self.pose = pose
        self.motion = motion

    @classmethod
    def read(cls, row: dict) -> _Overlays | None:
        person = _read_artifact(row.get("person_boxes_path"))
        pose = _read_artifact(row.get("pose_keypoints_path"))
        motion = _read_artifact(row.get("motion_path") or row.get("smpl_motion_path"))
        return cls(person, pose, motion) if person or pose or motion else None

    def _draw_smpl(self, draw, index: int, scale: tuple[float, float], line: int) -> None:
        """The fitted SMPL joints projected through the motion file's camera: blue where the frame is valid,
        grey where it is not (the person is not seen there, or the fit does not explain what is seen)."""
        joints, focal = self.motion["joints"], self.motion["focal"]
        if index >= len(joints):
            return
        height, width = (float(v) for v in self.motion["image_size"])
        z = np.maximum(joints[index, :, 2:], 1e-3)
        xy = joints[index, :, :2] / z * focal[index] + np.array([width / 2, height / 2])
        size_scale = (scale[0] * self._frame_width() / width, scale[1] * self._frame_height() / height)
        points = [(float(x) * size_scale[0], float(y) * size_scale[1]) for x, y in xy]
        colour = SMPL_COLOUR if bool(self.motion["valid"][index]) else SMPL_INVALID_COLOUR
        for child, parent in enumerate(SMPL_PARENTS):
            if parent >= 0:
                draw.line([points[parent], points[child]], fill=colour, width=line)

    def _frame_width(self) -> float:
        return float(self.person["frame_size"][0]) if self.person is not None and "frame_size" in self.person else \
            float(self.motion["image_size"][1])

    def _frame_height(self) -> float:
        return float(self.person["frame_size"][1]) if self.person is not None and "frame_size" in self.person else \
            float(self.motion["image_size"][0])

    def draw(self, image, index: int) -> None:
        """Draw on a PIL image in place."""
        from PIL import ImageDraw

        draw = ImageDraw.Draw(image)
        line = max(1, round(max(image.size) / 200))
        scale = (1.0, 1.0)
        if self.person is not None and "frame_size" in self.person:
            width, height = (float(v) for v in self.person["frame_size"][:2])
            scale = (image.size[0] / width, image.size[1] / height)
        if self.person is not None:
            detections = self.person.get("detections")
            if detections is not None and len(detections):
                for row in detections[detections[:, 0] == index]:
                    draw.rectangle(_scaled(row[2:6], scale), outline=OTHER_BOX_COLOUR, width=line)
            boxes = self.person.get("main_box")
            if boxes is not None and index < len(boxes) and all(math.isfinite(v) for v in boxes[index]):
                draw.rectangle(_scaled(boxes[index], scale), outline=MAIN_BOX_COLOUR, width=2 * line)
        if self.motion is not None:
            self._draw_smpl(draw, index, scale, line)
        if self.pose is not None and index < len(self.pose["keypoints"]):
            points = self.pose["keypoints"][index]
            visible = self.pose.get("visible")
            seen = (visible[index] if visible is not None else self.pose["scores"][index] > 0.3)
            seen = seen & np.isfinite(points).all(axis=1)
            xy = [(float(x) * scale[0], float(y) * scale[1]) for x, y in points]
            for a, b in COCO17_EDGES:
                if b < len(xy) and seen[a] and seen[b]:
                    draw.line([xy[a], xy[b]], fill=BONE_COLOUR, width=line)
            for k in np.flatnonzero(seen):
                radius = (1.5 if k < 17 else 0.7) * line + 0.5  # face and hand points smaller
                x, y = xy[k]
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=POINT_COLOUR)


def _scaled(box, scale: tuple[float, float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    return [x1 * scale[0], y1 * scale[1], max(x1, x2) * scale[0], max(y1, y2) * scale[1]]


def _read_artifact(url: str | None) -> dict | None:
    """The arrays of a person / pose artifact, or None when there is none or it cannot be read."""
    if not url:
        return None
    try:
        return read_npz(url)
    except (OSError, ValueError, KeyError):
        return None


def _dataset_html(ledger: Ledger, stages: list[str]) -> str:
    """Counts per split from the `dataset.json` of a shards stage, when one was written."""
    from humove.schemas.shard import DEFAULT_OUTPUT_DIR, MANIFEST_FILE, ShardSampleError, read_manifest

    storage = getattr(ledger, "storage", None)
    if storage is None or "shards" not in stages:
        return "<p>No shards stage in this run.</p>"
    state = ledger.stage_state("shards") or {}
    output = (state.get("config") or {}).get("output") or storage.join(DEFAULT_OUTPUT_DIR)
    manifest_url = Storage(output).join(MANIFEST_FILE)
    try:
        manifest = read_manifest(Storage(output).read_bytes(manifest_url))
    except (FileNotFoundError, ShardSampleError) as exc:
        return f"<p>No dataset written yet ({html.escape(type(exc).__name__)}).</p>"
    rows = "".join(
        f"<tr><td>{html.escape(split)}</td><td>{c.samples}</td><td>{c.videos}</td><td>{c.shards}</td>"
        f"<td>{c.bytes / 1e6:.1f}</td><td>{c.with_motion}</td></tr>"
        for split, c in manifest.splits.items()
    )
    return (f"<p>{html.escape(output)}: {manifest.total_samples} samples in {len(manifest.shards)} shards</p>"
            "<table><tr><th>split</th><th>samples</th><th>videos</th><th>shards</th><th>MB</th>"
            "<th>with motion</th></tr>" + rows + "</table>")


def _errors_html(tables: dict[str, pa.Table]) -> str:
    blocks = []
    for stage, table in tables.items():
        errors = _rows(table, "error", ["id", "error_type", "error_message", "attempt"])
        if not errors:
            continue
        rows = "".join(
            f"<tr><td>{html.escape(e['id'])}</td><td>{html.escape(e['error_type'] or '')}</td>"
            f"<td>{e['attempt']}</td><td>{html.escape(_short(e['error_message'] or ''))}</td></tr>"
            for e in errors[:MAX_EXAMPLES]
        )
        blocks.append(f"<h3>{html.escape(stage)}: {len(errors)} errors</h3>"
                      "<table><tr><th>id</th><th>type</th><th>attempt</th><th>message</th></tr>"
                      + rows + "</table>")
    return "\n".join(blocks) or "<p>No errors.</p>"


# Helpers -------------------------------------------------------------------------------------------------------

def _rows(table: pa.Table, status: str, columns: list[str]) -> list[dict]:
    if table.num_rows == 0:
        return []
    return table.filter(pc.equal(table["status"], status)).select(columns).to_pylist()


def _ids(table: pa.Table, status: str) -> set[str]:
    return {row["id"] for row in _rows(table, status, ["id"])}


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _image(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    # No "Software" metadata: it would embed a web address in the file.
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    data = base64.b64encode(buffer.getvalue()).decode()
    return f"<img class='chart' alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #212121; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
.meta { color: #616161; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .3em .6em; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
img.chart { display: block; max-width: 100%; }
.cards { display: flex; flex-wrap: wrap; gap: 1em; }
.card { border: 1px solid #ddd; padding: .5em; font-size: .8em; }
.card img { margin-right: .3em; }
.err { color: #c62828; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{css}</style></head>
<body><h1>{heading}</h1><p class="meta">{meta}</p>
{body}
</body></html>
"""
