"""The before/after report: report.html (self-contained, opens offline), report.md, plots/*.png.

Everything report.html shows is inside the file: CSS inline, plots and example images as base64 data
URIs, no scripts, no links to fetch. Example answers mark hallucinated objects (CHAIR) in red.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

from vlmpref.eval.evaluate import EvalRun
from vlmpref.report.compare import ComparisonRow, warnings
from vlmpref.report.plots import before_after_bars, training_curves
from vlmpref.report.table import LEGEND, fmt_change, fmt_value, markdown_rows

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1d1f23;
padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9rem}.warn{background:#fff4d6;border:1px solid #e8c66b;padding:.5rem .8rem;margin:.6rem 0}
table{border-collapse:collapse;font-size:.9rem}th,td{padding:.3rem .6rem;border-bottom:1px solid #e5e5e5;
vertical-align:top}th{text-align:left;background:#f4f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}tr.group td{background:#fafafa;font-weight:600;color:#444}
.better{color:#1a7f37;font-weight:600}.worse{color:#c62828;font-weight:600}.legend{font-size:.8rem;color:#666}
img.plot{max-width:100%;border:1px solid #eee;margin:.5rem 0}
.ex{display:flex;gap:1rem;border:1px solid #e5e5e5;border-radius:6px;padding:.8rem;margin:.8rem 0}
.ex img{width:128px;height:128px;object-fit:contain;image-rendering:pixelated;border:1px solid #ddd;flex:none}
.ex .q{font-weight:600;margin:0 0 .3rem}.ex .ref{color:#555;margin:0 0 .4rem}.ex table{width:100%}.ex th{width:4.5rem}
mark.h{background:#ffd7d7;color:#b00020;font-weight:600;padding:0 .15rem;border-radius:3px}
.ok{color:#1a7f37}.no{color:#c62828}.tag{font-size:.8rem;color:#666}
"""


def _data_uri(path: Path | None) -> str | None:
    if path is None or not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def highlight(text: str, spans: list, wrap=lambda s: f'<mark class="h">{s}</mark>', escape=html.escape) -> str:
    """`text` escaped, with the character spans of hallucinated objects wrapped by `wrap`."""
    out, last = [], 0
    for start, end in sorted(spans or []):
        if start < last:
            continue
        out += [escape(text[last:start]), wrap(escape(text[start:end]))]
        last = end
    out.append(escape(text[last:]))
    return "".join(out)


def pick_examples(before: EvalRun, after: EvalRun, n: int) -> list[tuple[dict, dict]]:
    """Pairs of (before, after) samples: those whose correctness or hallucinations changed first."""
    after_by_key = {(s["row_id"], s["question"]): s for s in after.samples}
    pairs = [(b, after_by_key[b["row_id"], b["question"]]) for b in before.samples
             if (b["row_id"], b["question"]) in after_by_key]

    def priority(pair):
        b, a = pair
        if b.get("correct") != a.get("correct"):
            return 0
        if (b.get("hallucinated") or []) != (a.get("hallucinated") or []):
            return 1
        return 2

    return sorted(pairs, key=priority)[:n]


def _verdict_class(row: ComparisonRow) -> str:
    return {"better": "better", "worse": "worse"}.get(row.verdict, "")


def _comparison_table(rows: list[ComparisonRow], headline_only: bool) -> str:
    lines = ["<table><thead><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr></thead><tbody>"]
    group = None
    for row in rows:
        if headline_only and not row.spec.headline:
            continue
        if row.spec.group != group:
            group = row.spec.group
            lines.append(f'<tr class="group"><td colspan="4">{html.escape(group)}</td></tr>')
        lines.append(f"<tr><td>{html.escape(row.spec.label.strip())}</td>"
                     f'<td class="num">{html.escape(fmt_value(row.before, row.spec.percent))}</td>'
                     f'<td class="num">{html.escape(fmt_value(row.after, row.spec.percent))}</td>'
                     f'<td class="num {_verdict_class(row)}">{html.escape(fmt_change(row))}</td></tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _answer_cell(sample: dict) -> str:
    mark = {True: '<span class="ok">✓</span>', False: '<span class="no">✗</span>'}.get(sample.get("correct"), "")
    text = highlight(sample["generated"], sample.get("hallucinated_spans")) if sample["generated"] else "<i>(empty)</i>"
    extra = ""
    if sample.get("hallucinated"):
        extra = f'<br><span class="tag">hallucinated: {html.escape(", ".join(sample["hallucinated"]))}</span>'
    return f"{mark} {text}{extra}"


def _example_html(before: dict, after: dict, folders: list[Path]) -> str:
    image = next((_data_uri(f / before["image_file"]) for f in folders if before.get("image_file")
                  and (f / before["image_file"]).is_file()), None)
    picture = f'<img src="{image}" alt="example image">' if image else ""
    objects = f' <span class="tag">objects: {html.escape(", ".join(before["objects"]))}</span>' \
        if before.get("objects") is not None else ""
    return (f'<div class="ex">{picture}<div style="flex:1"><p class="q">{html.escape(before["question"])}</p>'
            f'<p class="ref">reference: {html.escape(before.get("chosen") or "-")}{objects}</p>'
            f"<table><tr><th>base</th><td>{_answer_cell(before)}</td></tr>"
            f"<tr><th>tuned</th><td>{_answer_cell(after)}</td></tr></table></div></div>")


def _describe(run: EvalRun) -> str:
    model = run.document.get("model", {})
    text = model.get("base", "?")
    if model.get("adapter"):
        text += f" + adapter {model['adapter']}"
    return text


DEFINITIONS = [
    ("answer accuracy", "key-answer match for short answers (color, number, yes/no, name), the object set for "
                        "shapes descriptions, token-F1 ≥ 0.5 for long answers"),
    ("CHAIR-sentence / -instance", "share of answers naming an object not in the image / share of named "
                                   "objects not in the image. vlmpref reading: synonyms, plurals, negation bounded "
                                   "by its phrase, verbs and word senses read in context, each object once per answer. "
                                   "chair_compat: the published scorer's reading (Rohrbach et al., 2018), every "
                                   "occurrence counted, no negation; quote this one next to papers"),
    ("POPE", "“Is there a X in the image?” for present and absent objects (random, popular, adversarial "
             "absent objects, sampled as the paper does); F1 with yes as positive, and the share of yes answers. "
             "vlmpref reading: a leading yes/no, else the first sentence about the object decides. pope_compat: "
             "POPE's evaluate.py rule (first sentence holds the word No/no/not); quote this one next to papers"),
    ("relevance", "the answer addresses the question: an answer of the asked kind for short-answer "
                  "questions, else similarity to the reference or question (embedding) or shared content "
                  "words (lexical)"),
    ("preference", "held-out pairs where the model gives the chosen answer a higher per-token log-probability; "
                   "DPO reward accuracy and margin against the base (adapter off)"),
]


def write_report(before: EvalRun, after: EvalRun, rows: list[ComparisonRow], out_dir: str | Path,
                 run_dir: str | Path | None = None, examples: int = 12,
                 title: str = "vlmpref: before vs after tuning") -> dict[str, Path]:
    """Write report.html, report.md, comparison.json and plots/ into `out_dir`; returns their paths."""
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = {"bars": before_after_bars(rows, out / "plots" / "before_after.png")}
    if run_dir is not None:
        plots["curves"] = training_curves(run_dir, out / "plots" / "training_curves.png")
    notes = warnings(before, after)
    pairs = pick_examples(before, after, examples)
    data = after.document.get("dataset", {})
    meta = (f"before: {_describe(before)} · after: {_describe(after)} · data: {data.get('source', '?')} "
            f"[{data.get('split', '?')}], {data.get('rows', len(after.samples))} rows · "
            f"{time.strftime('%Y-%m-%d %H:%M')}")

    # ---- report.html
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f'<p class="meta">{html.escape(meta)}</p>']
    parts += [f'<div class="warn">{html.escape(n)}</div>' for n in notes]
    parts += ["<h2>Before / after</h2>", _comparison_table(rows, headline_only=True),
              f'<p class="legend">{html.escape(LEGEND)}</p>']
    for key, caption in (("bars", "Before and after, with 95% intervals"), ("curves", "Training curves")):
        uri = _data_uri(plots.get(key))
        if uri:
            parts.append(f"<h2>{caption}</h2><img class=\"plot\" src=\"{uri}\" alt=\"{caption}\">")
    parts += ["<h2>All metrics</h2>", _comparison_table(rows, headline_only=False)]
    parts.append(f"<h2>Examples: base vs tuned ({len(pairs)})</h2>"
                 "<p class=\"legend\">Changed answers first; hallucinated objects are marked "
                 "<mark class=\"h\">like this</mark>.</p>")
    parts += [_example_html(b, a, [after.folder, before.folder]) for b, a in pairs]
    parts.append("<h2>How the metrics are defined</h2><ul>" + "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>" for k, v in DEFINITIONS) + "</ul></body></html>")
    (out / "report.html").write_text("\n".join(parts))

    # ---- report.md
    md = [f"# {title}", "", meta, ""] + [f"> **Note:** {n}" for n in notes]
    md += ["", "## Before / after", "", markdown_rows(rows, headline_only=True), "", LEGEND, ""]
    for key, caption in (("bars", "Before and after, with 95% intervals"), ("curves", "Training curves")):
        if plots.get(key):
            md += [f"## {caption}", "", f"![{caption}](plots/{plots[key].name})", ""]
    md += ["## All metrics", "", markdown_rows(rows), "", f"## Examples: base vs tuned ({len(pairs)})", "",
           "| question | reference | base | tuned |", "|---|---|---|---|"]
    for b, a in pairs:
        cell = lambda s: ({True: "✓ ", False: "✗ "}.get(s.get("correct"), "") + highlight(
            s["generated"], s.get("hallucinated_spans"), wrap=lambda t: f"**{t}**", escape=_md_escape))
        md.append(f"| {_md_escape(b['question'])} | {_md_escape(b.get('chosen') or '-')} | {cell(b)} | {cell(a)} |")
    md += ["", "Hallucinated objects are in **bold**.", "", "## How the metrics are defined", ""]
    md += [f"- **{k}**: {v}" for k, v in DEFINITIONS]
    (out / "report.md").write_text("\n".join(md) + "\n")

    # ---- comparison.json, for scripts
    (out / "comparison.json").write_text(json.dumps({"warnings": notes, "rows": [
        {"metric": r.spec.path, "label": r.spec.label.strip(), "before": r.before, "after": r.after,
         "change": r.change, "verdict": r.verdict} for r in rows]}, indent=2))
    paths = {"html": out / "report.html", "markdown": out / "report.md", "json": out / "comparison.json"}
    paths.update({k: v for k, v in plots.items() if v is not None})
    return paths


def _md_escape(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("*", "\\*").replace("\n", " ")
