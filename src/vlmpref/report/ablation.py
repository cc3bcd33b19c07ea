"""Side-by-side table of several tuned models against one base: metric | base | variant 1 | variant 2 | ...

Each variant's cell holds its value and its change against the base with the paired-bootstrap verdict
(✓ better / ✗ worse beyond the 95% interval), the same numbers `vlmpref compare` gives pair by pair.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from vlmpref.eval.evaluate import EvalRun
from vlmpref.report.compare import compare_runs
from vlmpref.report.table import LEGEND, MARKS, fmt_value
from vlmpref.terminal import make_console


def ablation_cells(base: EvalRun, variants: dict[str, EvalRun], headline_only: bool = True) -> list[list[str]]:
    """Rows of [metric, base, variant...]; a variant cell is 'value (change mark)'."""
    compared = {name: {r.spec.path: r for r in compare_runs(base, run)} for name, run in variants.items()}
    order = {}  # path -> spec, in the order compare_runs gives
    for rows in compared.values():
        order.update({path: r.spec for path, r in rows.items()
                      if path not in order and (r.spec.headline or not headline_only)})
    out = []
    for spec in order.values():
        base_metric = next((rows[spec.path].before for rows in compared.values() if spec.path in rows), None)
        line = [spec.label, fmt_value(base_metric, spec.percent, interval=False)]
        for name in variants:
            row = compared[name].get(spec.path)
            if row is None or row.after is None:
                line.append("-")
                continue
            text = fmt_value(row.after, spec.percent, interval=False)
            if row.change and row.change.get("value") is not None:
                delta = row.change["value"]
                text += f" ({100 * delta:+.1f})" if spec.percent else f" ({delta:+.3f})"
                text += f" {MARKS[row.verdict]}" if row.verdict in MARKS else ""
            line.append(text)
        out.append(line)
    return out


def print_ablation(base: EvalRun, variants: dict[str, EvalRun], title: str = "Ablation on the same budget",
                   console: Console | None = None):
    table = Table(title=title)
    for i, column in enumerate(["metric", "base", *variants]):
        table.add_column(column, justify="left" if i == 0 else "right")
    for line in ablation_cells(base, variants):
        table.add_row(*line)
    console = console or make_console()
    console.print(table)
    console.print("In brackets: change against the base (points for percentages). " + LEGEND, style="dim")


def markdown_ablation(base: EvalRun, variants: dict[str, EvalRun]) -> str:
    header = ["metric", "base", *variants]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in ablation_cells(base, variants)]
    return "\n".join(lines) + "\n\nIn brackets: change against the base (points for percentages). " + LEGEND
