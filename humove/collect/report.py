"""What the report shows of the collection and caption stages (`humove.report` draws it): keywords per category,
downloads by outcome, caption lengths, and the captions of given clips. Each takes the stage's current records
(`Ledger.current()[stage]`)."""

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


def download_outcomes(table: pa.Table) -> dict:
    """Videos per outcome ("ok", "rejected: duplicate", "error: HTTPError"), overall and per category, and the
    megabytes downloaded."""
    rows = table.to_pylist()
    outcomes = Counter(_outcome(r) for r in rows)
    per_category: dict[str, Counter] = {}
    for row in rows:
        per_category.setdefault(row.get("download_category") or "(none)", Counter())[_outcome(row)] += 1
    names = [name for name, _ in outcomes.most_common()]
    return {
        "outcomes": [{"outcome": name, "status": name.split(":")[0], "videos": n}
                     for name, n in outcomes.most_common()],
        "names": names,
        "categories": [{"category": category, "counts": [counts.get(name, 0) for name in names]}
                       for category, counts in sorted(per_category.items())],
        "megabytes": sum(int(r.get("download_bytes") or 0) for r in rows if r["status"] == "ok") / 1e6,
    }


def _outcome(row: dict) -> str:
    if row["status"] == "ok":
        return "ok"
    if row["status"] == "rejected":
        return f"rejected: {row.get('reason') or 'unspecified'}"
    return f"error: {row.get('error_type') or 'unknown'}"


def caption_lengths(table: pa.Table) -> dict:
    """Words per kept caption, template and model captions apart; their count and median; malformed twice."""
    rows = [r for r in table.select(["status", "reason", "caption_words", "caption_is_template"]).to_pylist()]
    kept = [r for r in rows if r["status"] == "ok" and r["caption_words"] is not None]
    words = sorted(r["caption_words"] for r in kept)
    return {
        "groups": {"template": [r["caption_words"] for r in kept if r["caption_is_template"]],
                   "model": [r["caption_words"] for r in kept if not r["caption_is_template"]]},
        "captions": len(kept),
        "median": words[len(words) // 2] if words else None,
        "malformed": sum(1 for r in rows if r["reason"] == "caption_malformed"),
    }


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
