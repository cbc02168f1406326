"""Report sections for the collection and caption stages, for `humove.report.write_report`:

    from humove.collect.report import report_sections
    for title, content in report_sections(tables, clips, clip_card):
        sections.append(_section(title, content))

`tables`: stage name → current records (`Ledger.current()`); `clips`: clip_id → joined row (`clip_rows`);
`clip_card(row, note)`: the report's thumbnail card of a clip. Sections appear only for stages that ran:
keywords per category, downloads by outcome, caption length histogram, captions beside thumbnails.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Callable

import pyarrow as pa

MAX_CAPTION_CARDS = 8


def report_sections(tables: dict[str, pa.Table], clips: dict[str, dict] | None = None,
                    clip_card: Callable[[dict, str], str] | None = None) -> list[tuple[str, str]]:
    sections = []
    if _has(tables, "keywords"):
        sections.append(("Keywords per category", keywords_html(tables["keywords"])))
    if _has(tables, "download"):
        sections.append(("Downloads by outcome", downloads_html(tables["download"])))
    if _has(tables, "caption"):
        sections.append(("Caption lengths", caption_lengths_html(tables["caption"])))
        sections.append(("Captions", captions_html(tables["caption"], clips or {}, clip_card)))
    return sections


def _has(tables: dict[str, pa.Table], stage: str) -> bool:
    return stage in tables and tables[stage].num_rows > 0


def keywords_html(table: pa.Table) -> str:
    """Per major category: keywords kept, per fine category, backend and model, three examples."""
    rows = [r for r in table.to_pylist() if r["status"] == "ok"]
    by_category: dict[str, list[dict]] = {}
    for row in rows:
        by_category.setdefault(row["keyword_category"], []).append(row)
    lines = []
    for category, found in by_category.items():
        fine = Counter(r["keyword_fine_category"] or "(none)" for r in found)
        sources = sorted({f"{r['backend']} / {r['keyword_model']}" for r in found})
        examples = [r["keyword_text"] for r in sorted(found, key=lambda r: r["keyword_rank"])[:3]]
        lines.append(f"<tr><td>{_e(category)}</td><td>{len(found)}</td>"
                     f"<td>{_e(', '.join(f'{k} {v}' for k, v in sorted(fine.items())))}</td>"
                     f"<td>{_e('; '.join(sources))}</td><td>{_e(' · '.join(examples))}</td></tr>")
    errors = sum(1 for r in table.to_pylist() if r["status"] == "error")
    note = f"<p class='err'>{errors} categories failed (see Errors).</p>" if errors else ""
    return ("<table><tr><th>category</th><th>keywords</th><th>per fine category</th><th>backend / model</th>"
            "<th>first keywords</th></tr>" + "".join(lines) + "</table>" + note)


def downloads_html(table: pa.Table) -> str:
    """Outcomes (ok, rejected by reason, error by type) overall and per category."""
    rows = table.to_pylist()
    outcome = Counter(_outcome(r) for r in rows)
    per_category: dict[str, Counter] = {}
    for row in rows:
        per_category.setdefault(row.get("download_category") or "(none)", Counter())[_outcome(row)] += 1
    total = "".join(f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in outcome.most_common())
    names = [k for k, _ in outcome.most_common()]
    header = "".join(f"<th>{_e(n)}</th>" for n in names)
    body = "".join(f"<tr><td>{_e(c)}</td>" + "".join(f"<td>{counts.get(n, 0)}</td>" for n in names) + "</tr>"
                   for c, counts in sorted(per_category.items()))
    size = sum(int(r.get("download_bytes") or 0) for r in rows if r["status"] == "ok")
    return (f"<table><tr><th>outcome</th><th>videos</th></tr>{total}</table>"
            f"<p>{size / 1e6:.1f} MB downloaded.</p>"
            f"<table><tr><th>category</th>{header}</tr>{body}</table>")


def _outcome(row: dict) -> str:
    if row["status"] == "ok":
        return "ok"
    if row["status"] == "rejected":
        return f"rejected: {row.get('reason') or 'unspecified'}"
    return f"error: {row.get('error_type') or 'unknown'}"


def caption_lengths_html(table: pa.Table) -> str:
    """Histogram of caption lengths (words) of kept captions, template and model captions apart."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = [r for r in table.to_pylist() if r["status"] == "ok" and r.get("caption_words") is not None]
    if not rows:
        return "<p>No captions yet.</p>"
    groups = {"template": [r["caption_words"] for r in rows if r.get("caption_is_template")],
              "model": [r["caption_words"] for r in rows if not r.get("caption_is_template")]}
    figure = Figure(figsize=(6, 2.6))
    axes = figure.subplots()
    axes.hist([v for v in groups.values() if v], bins=20, stacked=True,
              label=[k for k, v in groups.items() if v])
    axes.set_xlabel("caption length (words)")
    axes.set_ylabel("clips")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    words = sorted(r["caption_words"] for r in rows)
    malformed = sum(1 for r in table.to_pylist() if r.get("reason") == "caption_malformed")
    return (f"<img class='chart' alt='caption length histogram' "
            f"src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"
            f"<p>{len(rows)} captions, median {words[len(words) // 2]} words; {malformed} malformed twice.</p>")


def captions_html(table: pa.Table, clips: dict[str, dict], clip_card: Callable[[dict, str], str] | None) -> str:
    """A few captioned clips: the thumbnail card beside the caption and its three parts."""
    rows = sorted((r for r in table.to_pylist() if r["status"] == "ok"), key=lambda r: r["id"])
    step = max(1, len(rows) // MAX_CAPTION_CARDS)
    blocks = []
    for row in rows[::step][:MAX_CAPTION_CARDS]:
        card = clip_card(clips[row["id"]], "captioned") if clip_card and row["id"] in clips else ""
        parts = "".join(f"<li><b>{name}</b>: {_e(row.get(f'caption_{name}') or '')}</li>"
                        for name in ("appearance", "background", "action"))
        source = f"{row.get('backend')} / {row.get('caption_model')}"
        blocks.append(f"<div style='display:flex;gap:1em;margin:.6em 0'>{card}<div><p>{_e(row['caption'])}</p>"
                      f"<ul>{parts}</ul><p class='meta'>{_e(source)}, {row.get('caption_words')} words</p>"
                      "</div></div>")
    return "".join(blocks) or "<p>No captions yet.</p>"


def _e(text) -> str:
    return html.escape(str(text))
