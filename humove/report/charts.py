"""The report's charts: matplotlib figures (no pyplot), made PNG files by `png`.

Conventions, the same in every chart: counts on an integer axis named by what is counted (videos, clips);
one colour per outcome (`STATUS_COLOURS`: kept = ok green, rejected orange, error red); a title that names the
measure and its unit; legends below the plot (never over the bars); at most five ticks on a value axis.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from humove.report.status import STATUS_COLOURS

if TYPE_CHECKING:
    from humove.report.data import Measure, Threshold

DPI = 90
VERSION = 2  # bump when a chart's drawing changes: cached chart files of the old drawing are drawn again
KEPT, REJECTED = STATUS_COLOURS["ok"], STATUS_COLOURS["rejected"]
THRESHOLD_COLOUR = "#212121"
THRESHOLD_STYLES = ("--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))  # two thresholds on one measure look different
INVALID_COLOUR = "#bdbdbd"
NEUTRAL_COLOURS = ("#546e7a", "#b0bec5")  # series that are not outcomes (template / model captions)


def png(figure: Figure, dpi: int = DPI) -> bytes:
    buffer = io.BytesIO()
    # No "Software" metadata: it would embed a web address in the file.
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _counts_axis(axis) -> None:
    axis.set_major_locator(MaxNLocator(integer=True, nbins=6))


def _title(axes, text: str, width: int = 40) -> None:
    axes.set_title("\n".join(textwrap.wrap(text, width)), fontsize=9)


def funnel(stages: list[dict]) -> Figure:
    """Stacked horizontal bars, first stage on top: each stage's records by status, labelled with what they count
    ("download (videos)"); a dashed line and a note where the unit changes (one video gives several clips).
    `stages`: dicts with stage, unit and the counts per status."""
    names = [f"{s['stage']} ({s['unit']})" for s in stages]
    figure = Figure(figsize=(8, 0.45 * len(stages) + 1.5), layout="constrained")
    axes = figure.subplots()
    positions = np.arange(len(stages))[::-1]
    left = np.zeros(len(stages))
    for status in ("ok", "rejected", "error", "quarantined", "pending"):
        counts = np.array([s[status] for s in stages], float)
        if counts.any():
            axes.barh(positions, counts, left=left, color=STATUS_COLOURS[status], label=status, height=0.7)
            left += counts
    right = max(float(left.max()), 1.0)
    for position, stage in zip(positions, stages, strict=True):
        axes.text(stage["total"], position, f" {stage['ok']}/{stage['total']} ok", va="center", fontsize=8)
    for index in range(1, len(stages)):
        if stages[index]["unit"] != stages[index - 1]["unit"]:
            boundary = positions[index] + 0.5
            axes.axhline(boundary, color="#757575", linestyle="--", linewidth=0.8)
            axes.text(right * 1.28, boundary, f"{stages[index - 1]['unit']} → {stages[index]['unit']}",
                      ha="right", va="center", fontsize=8, color="#424242",
                      bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    axes.set_yticks(positions, names, fontsize=9)
    axes.set_xlim(0, right * 1.3)
    _counts_axis(axes.xaxis)
    axes.set_xlabel("records (what a record is: in brackets)", fontsize=9)
    axes.set_title("records per stage by outcome", fontsize=10)
    if left.any():
        figure.legend(loc="outside lower center", ncol=5, fontsize=8, frameon=False)
    return figure


def reasons(stage: str, counts: list[tuple[str, int]], unit: str) -> Figure:
    """Rejected records of one stage per reason (most frequent on top)."""
    figure = Figure(figsize=(6, 0.32 * len(counts) + 1.1), layout="constrained")
    axes = figure.subplots()
    ordered = counts[::-1]
    axes.barh([reason for reason, _ in ordered], [n for _, n in ordered], color=REJECTED)
    _counts_axis(axes.xaxis)
    axes.set_xlabel(f"rejected {unit}", fontsize=9)
    axes.tick_params(labelsize=8)
    _title(axes, f"{stage}: rejected {unit} by reason", 70)
    return figure


def histogram(measure: Measure, unit: str) -> Figure:
    """One measure: kept and rejected records stacked, each threshold a line of its own style. Bins span the
    values; the axis also reaches every threshold, so one far from all values shows as such. `unit`: what a
    record is (a list column counts values, several per record)."""
    figure = Figure(figsize=(3.4, 2.9))
    figure.subplots_adjust(left=0.17, right=0.95, top=0.85, bottom=0.31)  # fixed: a layout engine costs 2x
    axes = figure.subplots()
    bins = np.asarray(measure.edges)
    centres = (bins[:-1] + bins[1:]) / 2
    series = [(label, counts, colour) for label, counts, colour in
              (("kept", measure.kept, KEPT), ("rejected", measure.rejected, REJECTED)) if any(counts)]
    # The counts are binned already (`data.measures`): one weighted value per bin draws them as `hist` would.
    axes.hist([centres] * len(series), bins=bins, weights=[counts for _, counts, _ in series], stacked=True,
              color=[c for *_, c in series], label=[label for label, *_ in series])
    for threshold, style in zip(measure.thresholds, THRESHOLD_STYLES, strict=False):
        axes.axvline(threshold.value, color=THRESHOLD_COLOUR, linestyle=style, linewidth=1.3, label=threshold.label)
    shown = [bins[0], bins[-1], *(t.value for t in measure.thresholds)]
    margin = 0.03 * (max(shown) - min(shown))
    axes.set_xlim(min(shown) - margin, max(shown) + margin)
    _title(axes, f"{measure.title} ({measure.unit})" if measure.unit else measure.title)
    axes.set_xlabel(measure.unit or "value", fontsize=8)
    axes.set_ylabel("values" if measure.is_list else unit, fontsize=8)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=measure.integer))
    _counts_axis(axes.yaxis)
    axes.tick_params(labelsize=7.5)
    axes.legend(loc="upper center", bbox_to_anchor=(0.45, -0.2), ncol=2, fontsize=6.5, frameon=False)
    return figure


def content_types(stage: str, counts: dict[str, dict[str, int]]) -> Figure:
    """Clips per most probable content type (zero-shot labels), kept and rejected stacked."""
    labels = list(counts)
    figure = Figure(figsize=(4.5, 0.9 + 0.3 * len(labels)), layout="constrained")
    axes = figure.subplots()
    kept = [counts[label]["kept"] for label in labels]
    axes.barh(labels, kept, color=KEPT, label="kept")
    axes.barh(labels, [counts[label]["rejected"] for label in labels], left=kept, color=REJECTED, label="rejected")
    axes.invert_yaxis()
    _counts_axis(axes.xaxis)
    axes.set_xlabel("clips", fontsize=8)
    axes.tick_params(labelsize=8)
    _title(axes, f"{stage}: clips by content type (zero-shot)", 60)
    figure.legend(loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    return figure


def caption_lengths(groups: dict[str, list[tuple[int, int]]]) -> Figure:
    """Words per kept caption, template and model captions stacked. `groups`: label → (words, captions)."""
    figure = Figure(figsize=(6, 2.8), layout="constrained")
    axes = figure.subplots()
    shown = {label: counts for label, counts in groups.items() if counts}
    axes.hist([[words for words, _ in counts] for counts in shown.values()],
              bins=_whole_number_bins([words for counts in shown.values() for words, _ in counts]),
              weights=[[n for _, n in counts] for counts in shown.values()], stacked=True,
              label=[f"{label} captions" for label in shown], color=list(NEUTRAL_COLOURS[:len(shown)]))
    _counts_axis(axes.yaxis)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))
    axes.set_xlabel("caption length (words)", fontsize=9)
    axes.set_ylabel("clips", fontsize=9)
    _title(axes, "kept captions by length (words)", 70)
    figure.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return figure


def clip_timeline(valid: np.ndarray, acceleration: np.ndarray, fps: float, threshold: Threshold | None,
                  width_px: int) -> Figure:
    """Validity and jitter of one clip's motion over time: the mean joint acceleration per frame (m/s²; NaN
    where a frame or its neighbours is invalid), invalid frames shaded, and the stage's jitter threshold (it
    applies to the clip's mean). valid (F,) bool, acceleration (F,) float."""
    figure = Figure(figsize=(width_px / DPI, 1.9), layout="constrained")
    axes = figure.subplots()
    times = np.arange(len(valid)) / fps
    axes.plot(times, acceleration, color="#37474f", linewidth=1.0, label="joint acceleration")
    for number, (start, end) in enumerate(_runs(~valid)):
        axes.axvspan((start - 0.5) / fps, (end - 0.5) / fps, color=INVALID_COLOUR, alpha=0.7, linewidth=0,
                     label=None if number else "invalid frames")
    top = float(np.nanmax(acceleration)) * 1.15 if np.isfinite(acceleration).any() else 1.0
    if threshold is not None:  # drawn where it does not flatten the curve, else named in the legend only
        label = f"{threshold.name} (clip mean) {threshold.value:g}"
        if threshold.value <= 2 * top:
            axes.axhline(threshold.value, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.0, label=label)
            top = max(top, threshold.value * 1.1)
        else:
            axes.plot([], [], color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.0, label=f"{label}, above")
    axes.set_xlim(-0.5 / fps, (len(valid) - 0.5) / fps)
    axes.set_ylim(0, top)
    axes.set_xlabel("time in the clip (s)", fontsize=7)
    axes.set_ylabel("m/s²", fontsize=7)
    axes.xaxis.set_major_locator(MaxNLocator(nbins=5))
    axes.yaxis.set_major_locator(MaxNLocator(nbins=4))
    axes.tick_params(labelsize=6.5)
    axes.set_title(f"validity and jitter: {valid.mean():.0%} of frames valid", fontsize=8)
    figure.legend(loc="outside lower center", ncol=3, fontsize=6, frameon=False)
    return figure


def _whole_number_bins(values: list[float], most: int = 15) -> np.ndarray:
    """Bin edges between whole numbers, a whole number of them wide, at most `most` bins."""
    low, high = math.floor(min(values)), math.ceil(max(values))
    width = max(1, math.ceil((high - low + 1) / most))
    return np.arange(low, high + width + 1, width) - 0.5


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end exclusive) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
