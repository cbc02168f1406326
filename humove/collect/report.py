"""What the report shows of the keywords and caption stages (`humove.report` draws it): keywords per category and
the captions of given clips (downloads by outcome and caption lengths are counted by duckdb in
`humove.report.data`). Each takes the stage's current records (`Ledger.current()[stage]`)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from humove.ledger import is_in


def keyword_summary(table: pa.Table) -> dict:
    """Per major category: keywords kept, per fine category, backend and model, the first three; and how many
    categories failed."""
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["keyword_category"], []).append(row)
    categories = []
    for category, found in by_category.items():
        fine = Counter(r["keyword_fine_category"] or "(none)" for r in found)
        categories.append({
            "category": category, "keywords": len(found),
            "fine": ", ".join(f"{name} {n}" for name, n in sorted(fine.items())),
            "sources": "; ".join(sorted({f"{r['backend']} / {r['keyword_model']}" for r in found})),
            "first": " · ".join(r["keyword_text"] for r in sorted(found, key=lambda r: r["keyword_rank"])[:3]),
        })
    errors = sum(1 for status in table["status"].to_pylist() if status == "error")
    return {"categories": categories, "errors": errors}


def captions_of(table: pa.Table, ids: list[str]) -> dict[str, dict]:
    """clip_id → its kept caption: the text, its three parts, backend / model and length, for the given clips."""
    if not ids or table.num_rows == 0:
        return {}
    chosen = table.filter(pc.and_(is_in(table["id"], pa.array(ids, pa.string())), pc.equal(table["status"], "ok")))
    return {row["id"]: {"text": row["caption"],
                        "parts": [(name, row.get(f"caption_{name}") or "")
                                  for name in ("appearance", "background", "action")],
                        "source": f"{row.get('backend')} / {row.get('caption_model')}",
                        "words": row.get("caption_words")}
            for row in chosen.to_pylist()}
