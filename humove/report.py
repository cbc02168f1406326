"""What a run did, for people: the `humove status` table and the self-contained `humove report` HTML file.

The HTML report is one file with everything inline (CSS, charts and thumbnails as base64 PNG), so it can be
mailed or opened from an object store without a server: a funnel of counts per stage, rejection reasons with
examples, histograms of the numeric measures of kept records, first/middle frame thumbnails of some kept
clips, and examples of errors.
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

import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure
from rich.table import Table

from humove.schemas.records import COMMON_NAMES
from humove.storage import Storage, is_local, open_url

if TYPE_CHECKING:
    from humove.ledger import Ledger, StageSummary

MAX_HISTOGRAMS_PER_STAGE = 9
MAX_THUMBNAIL_CLIPS = 6
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

    sections = [
        _section("Funnel", _funnel_chart(summary) + _summary_html(summary)),
        _section("Rejection reasons", _rejections_html(tables)),
        _section("Measures of kept records", _histograms_html(tables)),
        _section("Sample clips", _thumbnails_html(tables)),
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


def _rejections_html(tables: dict[str, pa.Table]) -> str:
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
            + rows + "</table>"
        )
    return "\n".join(blocks) or "<p>No rejections.</p>"


def _plottable_columns(table: pa.Table) -> dict[str, list[float]]:
    """Numeric measures worth a histogram: floating-point stage columns of ok records (durations, frame rates,
    scores) and frame counts, positions in the source video left out, plus the clip length when start and end
    are known."""
    ok = table.filter(pc.equal(table["status"], "ok")) if table.num_rows else table
    columns: dict[str, list[float]] = {}
    if {"start_s", "end_s"} <= set(ok.column_names):
        columns["clip length (end_s - start_s)"] = _finite(
            (e - s) if e is not None and s is not None else None
            for s, e in zip(ok["start_s"].to_pylist(), ok["end_s"].to_pylist(), strict=True)
        )
    for field in ok.schema:
        wanted = pa.types.is_floating(field.type) or (
            pa.types.is_integer(field.type) and field.name.endswith("num_frames"))
        if field.name in COMMON_NAMES or not wanted:
            continue
        if field.name in ("start_s", "end_s"):
            continue
        columns[field.name] = _finite(ok[field.name].to_pylist())
    # A histogram of one value (or none) says nothing.
    return {name: values for name, values in columns.items() if len(set(values)) > 1}


def _histograms_html(tables: dict[str, pa.Table]) -> str:
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
            axes.hist(values, bins=min(30, max(5, len(values) // 3)), color="#1565c0")
            axes.set_title(name, fontsize=9)
            axes.tick_params(labelsize=8)
        figure.suptitle(f"{stage}: ok records", fontsize=10)
        figure.tight_layout()
        blocks.append(f"<h3>{html.escape(stage)}</h3>" + _image(figure, f"{stage} histograms"))
    return "\n".join(blocks) or "<p>No numeric measures with more than one value yet.</p>"


def _thumbnails_html(tables: dict[str, pa.Table]) -> str:
    """First and middle frame of a few kept clips, preferring clips kept by the last stage that ran."""
    order = list(tables)
    clip_stage = next((s for s in order if "clip_path" in tables[s].column_names), None)
    if clip_stage is None:
        return "<p>No clips yet.</p>"
    table = tables[clip_stage]
    clips = _rows(table, "ok", ["id", "clip_path"]
                  + [c for c in ("clip_num_frames", "clip_fps") if c in table.column_names])
    later = [s for s in order[order.index(clip_stage) + 1:] if tables[s].num_rows]
    if later:
        kept = _ids(tables[later[-1]], "ok")
        if kept & {c["id"] for c in clips}:
            clips = [c for c in clips if c["id"] in kept]
    clips.sort(key=lambda c: c["id"])
    step = max(1, len(clips) // MAX_THUMBNAIL_CLIPS)
    cards = []
    for clip in clips[::step][:MAX_THUMBNAIL_CLIPS]:
        try:
            frames = _first_and_middle_frames(clip["clip_path"], clip.get("clip_num_frames"))
        except Exception as exc:  # noqa: BLE001 - one unreadable clip must not break the report
            cards.append(f"<div class='card'><p>{html.escape(clip['id'])}</p>"
                         f"<p class='err'>cannot decode: {html.escape(_short(str(exc)))}</p></div>")
            continue
        images = "".join(
            f"<img alt='{html.escape(label)} frame' src='data:image/png;base64,{data}'>" for label, data in frames
        )
        info = f"{clip['clip_num_frames']} frames" if clip.get("clip_num_frames") else ""
        if clip.get("clip_fps"):
            info += f" at {clip['clip_fps']:.3g} fps"
        cards.append(f"<div class='card'>{images}<p>{html.escape(clip['id'])}<br>{html.escape(info)}</p></div>")
    return "<div class='cards'>" + "".join(cards) + "</div>" if cards else "<p>No kept clips yet.</p>"


def _first_and_middle_frames(url: str, num_frames: int | None) -> list[tuple[str, str]]:
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
                image.thumbnail((THUMBNAIL_WIDTH, THUMBNAIL_WIDTH * 4))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                found.append((wanted[index], base64.b64encode(buffer.getvalue()).decode()))
            if index >= max(wanted):
                break
    if not found:
        raise ValueError(f"{url}: no video frames")
    return found


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
