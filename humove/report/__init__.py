"""What a run did, for people: the `humove status` table and the `humove report` page.

`humove report RUN_DIR` (also run at the end of every `humove run`) writes `<run_dir>/report.html` and, beside
it, its media folder `<run_dir>/report/`. The page shows the funnel of counts per stage (keywords, then videos,
then clips: it says where the unit changes), rejection reasons per stage with refused examples, a histogram of
every numeric measure (kept and rejected stacked, each decided measure with its threshold line from the stage's
stored config), the kept clips with their captions, the collection stages, the motion error against known
motion, the dataset and the errors. Every clip card (a sample of kept clips, a few refused clips per reason)
plays a short preview: the clip with the person box, the pose keypoints and the fitted SMPL joints drawn, above
a front and a side view of the fitted 3D joints; and plots validity and jitter over time.

Previews are rendered only for that bounded sample (`ReportOptions`). Previews and charts are files of the
media folder named by the hash of what they show: a report written again draws only what changed, and files
no longer shown are removed. The HTML comes from Jinja2 templates (`templates/`) with autoescaping on (record
fields are untrusted text), and a Content-Security-Policy that runs no script and loads nothing from outside
the report's folder.

The numbers come from duckdb queries over each stage's `<stage>/current.parquet` (`data.Records`): counts,
histogram bins and bounded samples, never the records whole, so memory stays flat as the run grows.

Modules: `status` (terminal table, outcome colours), `data` (what the page shows, from the ledger), `charts`
(matplotlib), `previews` (per-clip videos and plots), `page` (templates → HTML).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from humove.report.status import STATUS_COLOURS, status_table

if TYPE_CHECKING:
    from humove.ledger import Ledger

__all__ = ["STATUS_COLOURS", "ReportOptions", "status_table", "write_report"]


@dataclass(frozen=True)
class ReportOptions:
    """How much the report renders: previews for at most `kept_clips` kept clips and `examples_per_reason`
    refused clips per stage and reason; previews `preview_width` pixels wide (the clip; the 3D view below it has
    the same width) with at most `preview_frames` frames (longer clips are sampled evenly, playing at their real
    speed)."""

    kept_clips: int = 6
    examples_per_reason: int = 2
    preview_width: int = 320
    preview_frames: int = 48

    def __post_init__(self):
        for name in ("kept_clips", "examples_per_reason"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.preview_width < 32 or self.preview_frames < 1:
            raise ValueError(f"previews need a width of at least 32 px and at least one frame, got "
                             f"{self.preview_width} px and {self.preview_frames} frames")


def write_report(ledger: Ledger, out_path: str, options: ReportOptions | None = None) -> str:
    """Write the HTML report of a run to `out_path` (local path or URL) and its previews to the media folder
    beside it (`report.html` → `report/`), atomically; returns `out_path`."""
    from humove.report.page import write_page  # matplotlib, PyAV, Jinja2: imported only to write a report

    return write_page(ledger, out_path, options or ReportOptions())
