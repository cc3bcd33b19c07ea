"""`vlmpref compare`: the before/after table and report from two evaluations.

    vlmpref compare runs/eval_base runs/eval_dpo --run runs/dpo --output-dir runs/report
    vlmpref compare --adapter runs/dpo --dataset runs/shapes --split test --output-dir runs/report

The first form reads two folders written by `vlmpref eval`. The second evaluates the base model (adapter
off) and base + adapter itself, into OUTPUT_DIR/eval_before and OUTPUT_DIR/eval_after. Either way it
prints metric | before | after | change and writes report.html, report.md, comparison.json and plots/
into --output-dir. Training curves come from --run (default: the adapter folder, when it holds
train_summary.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape

from vlmpref.errors import VlmprefError
from vlmpref.eval.run import EvalOptions
from vlmpref.terminal import make_console


@dataclass
class CompareConfig(EvalOptions):
    """Options of `vlmpref compare`. With --adapter and --dataset it evaluates both models itself, with the
    options of `vlmpref eval` (EvalOptions)."""

    before: Optional[str] = field(default=None, metadata={"path": "in", 
        "positional": True, "help": "Evaluation folder of the model before tuning (from vlmpref eval)."})
    after: Optional[str] = field(default=None, metadata={"path": "in", 
        "positional": True, "help": "Evaluation folder of the model after tuning."})
    run: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Training folder whose train_summary.json (and eval_log.jsonl) give the training curves; "
                "auto: the adapter's folder."})
    output_dir: str = field(default="runs/compare", metadata={"path": "out", "help": "Folder for report.html, report.md, plots."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --output-dir."})
    examples: int = field(default=12, metadata={"help": "Examples shown side by side in the report."})
    title: str = field(default="vlmpref: before vs after tuning", metadata={"help": "Title of the report."})

    def __post_init__(self):
        folders = self.before is not None or self.after is not None
        if folders and (self.before is None or self.after is None):
            raise VlmprefError("Compare needs two evaluation folders, BEFORE and AFTER; give both.")
        if folders and self.adapter:
            raise VlmprefError("Give either two evaluation folders or --adapter with --dataset, not both.")
        if not folders and not (self.adapter and self.dataset):
            raise VlmprefError("Nothing to compare; give two folders from `vlmpref eval`, or --adapter and "
                               "--dataset to evaluate the base model and the adapter.")
        if not folders:
            self.check_eval_options()
        if self.examples < 0:
            raise VlmprefError(f"--examples must be 0 or more, not {self.examples}.")


def _evaluate_both(cfg: CompareConfig, out: Path) -> tuple[Path, Path]:
    from vlmpref.eval.run import EvalConfig, resolve_model, run_eval

    shared = {**cfg.eval_options(), "overwrite": True}
    base, quantization, beta = resolve_model(EvalConfig(**shared))
    shared.update(model=base, quantization=quantization, beta=beta)
    before = run_eval(EvalConfig(**{**shared, "adapter": None}, output_dir=str(out / "eval_before")))
    after = run_eval(EvalConfig(**shared, output_dir=str(out / "eval_after")))
    return before, after


def _training_folder(cfg: CompareConfig, after_document: dict) -> Path | None:
    if cfg.run:
        if not Path(cfg.run).is_dir():
            raise VlmprefError(f"--run {cfg.run} is not a folder; point it at the output folder of vlmpref train.")
        return Path(cfg.run)
    adapter = cfg.adapter or (after_document.get("model") or {}).get("adapter")
    if adapter and (Path(adapter) / "train_summary.json").is_file():
        return Path(adapter)
    return None


def compare_folders(before_dir: str | Path, after_dir: str | Path, out_dir: str | Path,
                    run_dir: str | Path | None = None, examples: int = 12,
                    title: str = "vlmpref: before vs after tuning", console: Console | None = None):
    """Read two evaluation folders, print the table and write the report into `out_dir`.

    Returns (comparison rows, written files). `out_dir` must exist.
    """
    from vlmpref.eval.evaluate import read_eval
    from vlmpref.report.compare import compare_runs, warnings
    from vlmpref.report.html import write_report
    from vlmpref.report.table import print_rows

    console = console or make_console()
    before, after = read_eval(before_dir), read_eval(after_dir)
    rows = compare_runs(before, after)
    print_rows(rows, title=title, console=console)
    paths = write_report(before, after, rows, out_dir, run_dir=run_dir, examples=examples, title=title)
    for note in warnings(before, after):
        console.print(f"[yellow]note:[/] {escape(note)}")  # a note names splits, "[test]", which rich would eat
    console.print(f"Report written to {paths['html']} (and report.md, plots/ beside it)", markup=False)
    return rows, paths


def run_compare(cfg: CompareConfig, console: Console | None = None) -> dict[str, Path]:
    """Compare as `cfg` says, print the table and write the report; returns the written files."""
    from vlmpref.eval.evaluate import read_eval
    from vlmpref.runs import prepare_output_dir

    if cfg.before is not None:
        before_dir, after_dir = Path(cfg.before), Path(cfg.after)
        read_eval(before_dir), read_eval(after_dir)  # fail on a wrong folder before touching the output folder
        out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    else:
        out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
        before_dir, after_dir = _evaluate_both(cfg, out)
    after_document = read_eval(after_dir).document
    _, paths = compare_folders(before_dir, after_dir, out, run_dir=_training_folder(cfg, after_document),
                               examples=cfg.examples, title=cfg.title, console=console)
    return paths
