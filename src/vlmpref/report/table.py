"""The before/after table the guide promises: metric | before | after | change, with 95% intervals."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

# (key in metrics.json, label, shown as a percentage)
ROWS = [
    ("answer_accuracy", "answer accuracy", True),
    ("answer_token_f1", "answer token-F1", True),
    ("length_normalized_accuracy", "prefers chosen (per-token log-prob)", True),
    ("reward_accuracy", "DPO reward accuracy (vs base)", True),
    ("reward_margin", "DPO reward margin (vs base)", False),
]


def _fmt(metric: dict | None, percent: bool) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    v, (lo, hi) = metric["value"], metric["ci95"]
    if percent:
        return f"{100 * v:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def _change(before: dict | None, after: dict | None, percent: bool) -> str:
    if not before or not after or before.get("value") is None or after.get("value") is None:
        return "-"
    delta = after["value"] - before["value"]
    return f"{100 * delta:+.1f} pts" if percent else f"{delta:+.3f}"


def comparison_rows(before: dict, after: dict, rows=ROWS) -> list[tuple[str, str, str, str]]:
    out = []
    for key, label, percent in rows:
        if key in before or key in after:
            out.append((label, _fmt(before.get(key), percent), _fmt(after.get(key), percent),
                        _change(before.get(key), after.get(key), percent)))
    for qtype in sorted(set(before.get("answer_accuracy_by_type", {})) | set(after.get("answer_accuracy_by_type", {}))):
        b = before.get("answer_accuracy_by_type", {}).get(qtype)
        a = after.get("answer_accuracy_by_type", {}).get(qtype)
        out.append((f"  accuracy: {qtype}", _fmt(b, True), _fmt(a, True), _change(b, a, True)))
    return out


def print_comparison(before: dict, after: dict, title: str = "Held-out evaluation", console: Console | None = None):
    table = Table(title=title)
    for column in ("metric", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for row in comparison_rows(before, after):
        table.add_row(*row)
    (console or Console()).print(table)


def markdown_comparison(before: dict, after: dict) -> str:
    lines = ["| metric | before | after | change |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in comparison_rows(before, after)]
    return "\n".join(lines)
