"""The evaluation browser's work: open `vlmpref eval` folders, the before/after table, plots, and examples.

    view = open_evaluation("runs/demo/eval_before", "runs/demo/eval_after")
    view.table()                                  # metric | before | after | change | verdict
    shown = view.filter(question_type="describe", outcome="got worse")
    examples_html(shown, view.folders)            # image, question, reference, both answers marked

An example "got better" when the tuned answer is right and the base answer was wrong, or both are equally
right and the tuned answer names fewer objects that are not in the image; "got worse" is the reverse.
"""

from __future__ import annotations

import base64
import html
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vlmpref.eval.evaluate import EvalRun, read_eval
from vlmpref.report.compare import ComparisonRow, compare_runs, lookup, metric_specs, warnings
from vlmpref.report.html import highlight
from vlmpref.report.table import fmt_change, fmt_value

OUTCOMES = ("all", "got better", "got worse", "unchanged", "hallucinated before", "hallucinated after")


def _hallucinated(sample: dict | None) -> int:
    return len((sample or {}).get("hallucinated") or [])


def outcome(before: dict | None, after: dict | None) -> str:
    """got better / got worse / unchanged (see the module docstring)."""
    if before is None or after is None:
        return "unchanged"
    if before["correct"] != after["correct"]:
        return "got better" if after["correct"] else "got worse"
    fewer = _hallucinated(before) - _hallucinated(after)
    return "got better" if fewer > 0 else "got worse" if fewer < 0 else "unchanged"


@dataclass
class Example:
    before: dict | None
    after: dict | None

    @property
    def sample(self) -> dict:
        return self.before or self.after

    @property
    def outcome(self) -> str:
        return outcome(self.before, self.after)

    def matches(self, question_type: str, wanted: str) -> bool:
        if question_type not in ("all", None, "") and (self.sample.get("question_type") or "all") != question_type:
            return False
        if wanted in ("all", None, ""):
            return True
        if wanted == "hallucinated before":
            return _hallucinated(self.before) > 0
        if wanted == "hallucinated after":
            return _hallucinated(self.after) > 0
        return self.outcome == wanted


@dataclass
class EvaluationView:
    before: EvalRun
    after: EvalRun | None
    rows: list[ComparisonRow] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)

    @property
    def folders(self) -> list[Path]:
        return [run.folder for run in (self.after, self.before) if run is not None]

    @property
    def question_types(self) -> list[str]:
        return sorted({e.sample.get("question_type") or "all" for e in self.examples})

    def table(self) -> list[list[str]]:
        """The before/after table (every metric, 95% intervals), or one model's metrics."""
        if self.after is None:
            metrics = self.before.metrics
            return [[s.label.strip(), fmt_value(lookup(metrics, s.path), s.percent), str(lookup(metrics, s.path)["n"])]
                    for s in metric_specs(metrics, {})]
        return [[r.spec.label.strip(), fmt_value(r.before, r.spec.percent), fmt_value(r.after, r.spec.percent),
                 fmt_change(r), r.verdict] for r in self.rows]

    def headers(self) -> list[str]:
        return ["metric", "value [95% interval]", "n"] if self.after is None else \
            ["metric", "before", "after", "change [95% interval]", "verdict"]

    def notes(self) -> list[str]:
        return warnings(self.before, self.after) if self.after is not None else []

    def filter(self, question_type: str = "all", outcome: str = "all") -> list[Example]:
        return [e for e in self.examples if e.matches(question_type, outcome)]

    def counts(self) -> dict[str, int]:
        return {name: len(self.filter("all", name)) for name in OUTCOMES}

    def plots(self, run: Path | None = None) -> list[tuple[Image.Image, str]]:
        """The before/after bars and, given the tuned model's run folder, its training curves."""
        from vlmpref.report.plots import before_after_bars, training_curves

        out = []
        with tempfile.TemporaryDirectory(prefix="vlmpref-ui-") as tmp:
            if self.after is not None and before_after_bars(self.rows, Path(tmp) / "bars.png"):
                out.append((Image.open(Path(tmp) / "bars.png").copy(), "before and after, 95% intervals"))
            if run is not None and training_curves(run, Path(tmp) / "curves.png"):
                out.append((Image.open(Path(tmp) / "curves.png").copy(), f"training curves of {run.name}"))
        return out

    def training_run(self) -> Path | None:
        """The run folder of the tuned model, from the adapter path its metrics.json records."""
        run = self.after or self.before
        adapter = (run.document.get("model") or {}).get("adapter")
        if not adapter:
            return None
        path = Path(adapter) if Path(adapter).is_absolute() else run.folder.parent / Path(adapter).name
        for place in (path, Path(adapter)):
            if (place / "train_summary.json").is_file():
                return place
        return None


def open_evaluation(before_dir: str | Path, after_dir: str | Path | None = None) -> EvaluationView:
    """Read one evaluation folder, or two to compare (rows paired by row id and question)."""
    before = read_eval(before_dir)
    after = read_eval(after_dir) if after_dir else None
    if after is None:
        return EvaluationView(before, None, [], [Example(s, None) for s in before.samples])
    by_key = {(s["row_id"], s["question"]): s for s in after.samples}
    examples = [Example(s, by_key.get((s["row_id"], s["question"]))) for s in before.samples]
    return EvaluationView(before, after, compare_runs(before, after), examples)


# ---- the example table, as HTML


def _image_uri(sample: dict, folders: list[Path]) -> str | None:
    name = sample.get("image_file")
    for folder in folders:
        if name and (folder / name).is_file():
            return "data:image/png;base64," + base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return None


def _answer(sample: dict | None) -> str:
    if sample is None:
        return "<td>-</td>"
    mark = '<span class="ok">✓</span>' if sample.get("correct") else '<span class="no">✗</span>'
    text = (highlight(sample["generated"], sample.get("hallucinated_spans")) if sample.get("generated")
            else "<i>(empty)</i>")
    extra = ""
    if sample.get("hallucinated"):
        extra = f'<br><span class="tag">not in the image: {html.escape(", ".join(sample["hallucinated"]))}</span>'
    return f"<td>{mark} {text}{extra}</td>"


def examples_html(examples: list[Example], folders: list[Path], page: int = 1, per_page: int = 20) -> str:
    """One page of examples: image, question and reference, base and tuned answers, and what changed."""
    pages = max(1, -(-len(examples) // per_page))
    page = min(max(1, int(page or 1)), pages)
    shown = examples[(page - 1) * per_page: page * per_page]
    two = any(e.after is not None for e in examples)
    head = "<th>base</th><th>tuned</th><th>change</th>" if two else "<th>answer</th>"
    lines = [f'<p class="count" data-count="{len(examples)}">{len(examples)} example(s); page {page} of {pages}</p>',
             f'<table class="examples"><thead><tr><th>image</th><th>question</th>{head}</tr></thead><tbody>']
    for e in shown:
        s = e.sample
        uri = _image_uri(s, folders)
        picture = f'<img src="{uri}" alt="image of row {s["row_id"]}">' if uri else ""
        objects = (f'<br><span class="tag">objects: {html.escape(", ".join(s["objects"]))}</span>'
                   if s.get("objects") is not None else "")
        kind = html.escape(s.get("question_type") or "")
        question = (f'<td><b>{html.escape(s["question"])}</b><br><span class="tag">{kind} · row {s["row_id"]}</span>'
                    f'<br>reference: {html.escape(s.get("chosen") or "")}{objects}</td>')
        cells = _answer(e.before) + (_answer(e.after) + f'<td class="outcome">{e.outcome}</td>' if two else "")
        lines.append(f'<tr class="example" data-outcome="{e.outcome}"><td>{picture}</td>{question}{cells}</tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)
