"""The before/after table the guide promises: metric | before | after | change, with 95% intervals.

    print_rows(compare_runs(read_eval("runs/eval_before"), read_eval("runs/eval_after")))

A change is marked ✓ (better) or ✗ (worse) when its 95% paired interval excludes zero; unmarked changes
are within noise. Hallucination changes also show the relative change ("-50% rel.").
"""

from __future__ import annotations


from rich.console import Console
from rich.table import Table

from vlmpref.report.compare import ComparisonRow
from vlmpref.terminal import make_console

LEGEND = ("✓ / ✗: better / worse beyond the 95% interval of the change (paired bootstrap over the same "
          "examples); unmarked: within noise. Intervals in brackets are 95%.")
MARKS = {"better": "✓", "worse": "✗"}


def fmt_value(metric: dict | None, percent: bool, interval: bool = True) -> str:
    if not metric or metric.get("value") is None:
        return "-"
    v = metric["value"]
    low, high = (metric.get("ci95") or [None, None])[:2]
    if percent:
        text = f"{100 * v:.1f}%"
        return f"{text} [{100 * low:.1f}, {100 * high:.1f}]" if interval and low is not None else text
    text = f"{v:.3f}"
    return f"{text} [{low:.3f}, {high:.3f}]" if interval and low is not None else text


def fmt_change(row: ComparisonRow, interval: bool = True) -> str:
    change = row.change
    if not change or change.get("value") is None:
        return "-"
    delta = change["value"]
    low, high = (change.get("ci95") or [None, None])[:2]
    if row.spec.percent:
        text = f"{100 * delta:+.1f} pts"
        if interval and low is not None:
            text += f" [{100 * low:+.1f}, {100 * high:+.1f}]"
    else:
        text = f"{delta:+.3f}"
        if interval and low is not None:
            text += f" [{low:+.3f}, {high:+.3f}]"
    before = (row.before or {}).get("value")
    if row.spec.percent and row.spec.higher_is_better is False and before:
        text += f" ({100 * delta / before:+.0f}% rel.)"
    mark = MARKS.get(row.verdict)
    return f"{text} {mark}" if mark else text


def table_cells(rows: list[ComparisonRow], headline_only: bool = False) -> list[tuple[str, str, str, str]]:
    return [(r.spec.label, fmt_value(r.before, r.spec.percent), fmt_value(r.after, r.spec.percent), fmt_change(r))
            for r in rows if r.spec.headline or not headline_only]


def print_rows(rows: list[ComparisonRow], title: str = "Held-out evaluation", console: Console | None = None,
               headline_only: bool = True):
    table = Table(title=title)
    for column in ("metric", "before", "after", "change"):
        table.add_column(column, justify="left" if column == "metric" else "right",
                         min_width=20 if column == "metric" else None)
    group = None
    for row, cells in zip([r for r in rows if r.spec.headline or not headline_only],
                          table_cells(rows, headline_only)):
        if group is not None and row.spec.group != group:
            table.add_section()
        group = row.spec.group
        table.add_row(*cells)
    console = console or make_console()
    console.print(table)
    console.print(LEGEND, style="dim")


def markdown_rows(rows: list[ComparisonRow], headline_only: bool = False) -> str:
    lines = ["| metric | before | after | change |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(c.strip() for c in cells)} |" for cells in table_cells(rows, headline_only)]
    return "\n".join(lines)


def _unpaired(before: dict, after: dict) -> list[ComparisonRow]:
    from vlmpref.eval.evaluate import EvalRun
    from vlmpref.report.compare import compare_runs

    return compare_runs(EvalRun(None, {"metrics": before}), EvalRun(None, {"metrics": after}))


def print_comparison(before: dict, after: dict, title: str = "Held-out evaluation", console: Console | None = None):
    """The table from two metrics dicts alone (no per-example records, so changes carry no interval)."""
    print_rows(_unpaired(before, after), title=title, console=console)


def markdown_comparison(before: dict, after: dict) -> str:
    return markdown_rows(_unpaired(before, after))


def print_metrics(metrics: dict, title: str = "Evaluation", console: Console | None = None):
    """One model's metrics: metric | value [95% interval] | n."""
    from vlmpref.report.compare import lookup, metric_specs

    table = Table(title=title)
    for column in ("metric", "value [95% interval]", "n"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for spec in metric_specs(metrics, {}):
        metric = lookup(metrics, spec.path)
        if spec.headline or spec.path.startswith("answer_accuracy_by_type"):
            table.add_row(spec.label, fmt_value(metric, spec.percent), str(metric.get("n", "")))
    (console or make_console()).print(table)
