"""The `humove status` table, and the colour of each outcome (the same in the terminal and in the HTML report)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from humove.ledger import StageSummary

# One colour per outcome, everywhere: the status table, the report's charts, tables and cards.
STATUS_COLOURS = {"ok": "#2e7d32", "rejected": "#ef6c00", "error": "#c62828", "quarantined": "#6a1b9a",
                  "pending": "#9e9e9e"}


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
            _count_cell(stage.ok, "ok"),
            _count_cell(sum(stage.rejected.values()), "rejected"),
            _count_cell(stage.error, "error"),
            _count_cell(stage.quarantined, "quarantined"),
            _count_cell(stage.pending, "pending"),
            str(stage.total),
            ", ".join(f"{reason} {count}" for reason, count in by_count(stage.rejected)) or "-",
        )
    return table


def _count_cell(count: int, status: str) -> str:
    colour = STATUS_COLOURS[status]
    return f"[{colour}]{count}[/{colour}]" if count else "0"


def by_count(counts: dict[str, int]) -> list[tuple[str, int]]:
    """Most frequent first, then by name."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))
