"""`vlmpref demo`: the whole pipeline offline on a CPU in a few minutes.

    vlmpref demo                           # writes runs/demo
    vlmpref demo --output-dir /tmp/demo --max-steps 100

1. data:  the shapes world, train and held-out splits with disjoint layouts;
2. model: a tiny SmolVLM-architecture base that was pre-trained on the shapes world (shipped in the
          package, built by scripts/build_demo_base.py), loaded in 4-bit;
3. train: DPO + DoRA, with a likelihood term on chosen answers (`--loss-type sigmoid sft`);
4. eval:  held-out answer accuracy, hallucination (CHAIR, POPE), relevance and preference before and
          after, with 95% intervals; the table, and report.html / report.md in OUTPUT_DIR/report.

`--ablation` also trains SFT only, DPO only and DPO + SFT on the same budget and tabulates them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vlmpref import config as config_io
from vlmpref.config import Quantization
from vlmpref.errors import VlmprefError
from vlmpref.runs import prepare_output_dir
from vlmpref.terminal import make_console
from vlmpref.train.config import TrainConfig


def demo_base_path() -> Path:
    return Path(str(resources.files("vlmpref") / "assets" / "demo_base"))


@dataclass
class DemoConfig:
    """Options of `vlmpref demo`."""

    output_dir: str = field(default="runs/demo", metadata={"path": "out", "help": "Folder for everything the demo makes."})
    config: Optional[str] = field(default=None, metadata={"help": "YAML file with these options; flags override it."})
    model: Optional[str] = field(default=None, metadata={
        "help": "Base model; auto uses the tiny shapes-world model shipped with vlmpref."})
    train_scenes: int = field(default=600, metadata={"help": "Training images (5 preference pairs each)."})
    test_scenes: int = field(default=100, metadata={"help": "Held-out images (5 questions each), unseen layouts."})
    quantization: Quantization = field(default="4bit", metadata={"help": "Base weights as none, 8bit or 4bit."})
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps of DPO training."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Preference pairs per step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate of the DoRA adapter."})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature."})
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid", "sft"], metadata={
        "help": "Training objective(s); the default adds a likelihood term on chosen answers to DPO."})
    loss_weights: Optional[list[float]] = field(default=None, metadata={"help": "Weight of each --loss-type."})
    examples: int = field(default=6, metadata={"help": "Held-out examples shown side by side."})
    seed: int = field(default=0, metadata={"help": "Seed of the synthetic data and of training."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --output-dir."})
    report_examples: int = field(default=24, metadata={"help": "Held-out examples in report.html, base vs tuned."})
    ablation: bool = field(default=False, metadata={
        "help": "Also train SFT only, DPO only and DPO + SFT on the same budget and tabulate them (3x the time)."})


def ui_command(out: Path) -> str:
    """The command that opens `vlmpref ui` on a demo's folder (the UI needs the `ui` extra)."""
    return f"vlmpref ui --run {out}  (pip install 'vlmpref[ui]' first)"


def train_config(cfg: DemoConfig, base: str, data_dir: Path, out: Path) -> TrainConfig:
    return TrainConfig(
        model=base, dataset=str(data_dir), split="train", output_dir=str(out / "adapter"), overwrite=True,
        quantization=cfg.quantization, use_dora=True, learning_rate=cfg.learning_rate, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size, gradient_accumulation_steps=1,
        beta=cfg.beta, loss_type=list(cfg.loss_type), loss_weights=cfg.loss_weights, warmup_steps=0.1,
        gradient_checkpointing=False, logging_steps=10, save_steps=cfg.max_steps, seed=cfg.seed,
        dataset_num_proc=1)


def _examples_table(before: list[dict], after: list[dict], n: int) -> Table:
    table = Table(title="Held-out examples (base vs tuned)", show_lines=True)
    for column in ("question", "reference", "base", "tuned"):
        table.add_column(column)
    # Show the questions whose answers changed first: that is where tuning did something
    changed = [i for i, (b, a) in enumerate(zip(before, after)) if b["correct"] != a["correct"]]
    chosen = (changed + [i for i in range(len(before)) if i not in changed])[:n]
    for i in chosen:
        mark = lambda s: f"{'[green]✓' if s['correct'] else '[red]✗'}[/] {escape(s['generated'])}"
        table.add_row(escape(before[i]["question"]), escape(before[i]["chosen"]), mark(before[i]), mark(after[i]))
    return table


def _eval_info(cfg: DemoConfig, base: str, adapter, held_out) -> dict:
    """What metrics.json records about the model and data of a demo evaluation."""
    return {"model": {"base": base, "adapter": str(adapter) if adapter else None, "quantization": cfg.quantization},
            "dataset": {"source": held_out.source, "split": held_out.split, "rows": len(held_out.dataset),
                        "set_aside": len(held_out.set_aside)}}


def run_demo(cfg: DemoConfig, console: Console | None = None) -> dict:
    # the stages load here, not at import, so `vlmpref demo --help` does not wait for torch and TRL
    import torch

    from vlmpref.data import load_preference_data
    from vlmpref.data.synthetic import make_splits
    from vlmpref.eval.evaluate import evaluate, write_eval
    from vlmpref.models import load_model, load_processor
    from vlmpref.report.run import compare_folders
    from vlmpref.report.table import markdown_rows
    from vlmpref.train.run import train

    console = console or make_console()
    started = time.time()
    out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    config_io.save(cfg, out / "demo_config.yaml")
    base = cfg.model or str(demo_base_path())
    if not (Path(base) / "config.json").is_file() and cfg.model is None:
        raise VlmprefError(f"The demo base model is missing from {base}; rebuild it with "
                           "`python scripts/build_demo_base.py` or pass --model.")
    torch.manual_seed(cfg.seed)

    # ---- data
    console.rule("1/4 data: shapes world")
    data_dir = out / "data"
    make_splits(cfg.train_scenes, cfg.test_scenes, seed=cfg.seed).save_to_disk(str(data_dir))
    held_out = load_preference_data(str(data_dir), "test", num_proc=1)
    console.print(f"train: {cfg.train_scenes * 5} pairs; held-out: {held_out.summary()}", markup=False)

    # ---- before: the 4-bit base
    console.rule("2/4 base model, before tuning")
    processor = load_processor(base)
    base_model = load_model(base, quantization=cfg.quantization)
    before = evaluate(base_model, processor, held_out.dataset, beta=cfg.beta, desc="base")
    write_eval(before, out / "eval_before", rows=held_out.dataset, info=_eval_info(cfg, base, None, held_out))
    del base_model

    # ---- train
    console.rule(f"3/4 DPO + DoRA ({' + '.join(cfg.loss_type)}), {cfg.max_steps} steps")
    result = train(train_config(cfg, base, data_dir, out))

    # ---- after
    console.rule("4/4 tuned model, after")
    after = evaluate(result.model, processor, held_out.dataset, beta=cfg.beta, desc="tuned")
    write_eval(after, out / "eval_after", rows=held_out.dataset, info=_eval_info(cfg, base, out / "adapter", held_out))

    rows, _ = compare_folders(out / "eval_before", out / "eval_after", out / "report", run_dir=out / "adapter",
                              examples=cfg.report_examples, title="vlmpref demo: held-out shapes, before vs after",
                              console=console)
    console.print(_examples_table(before["samples"], after["samples"], cfg.examples))
    seconds = time.time() - started
    summary = {"seconds": round(seconds, 1), "train_seconds": result.summary["seconds"],
               "before": before["metrics"], "after": after["metrics"], "output_dir": str(out)}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    (out / "demo_summary.md").write_text(f"# vlmpref demo\n\n{markdown_rows(rows, headline_only=True)}\n"
                                         f"\nTotal time {seconds:.0f} s. Report: report/report.html\n")
    console.print(f"Demo finished in {seconds:.0f} s; outputs in {out}", markup=False)
    console.print(f"See base and tuned answer side by side, browse the evaluation, or train again in the web UI: "
                  f"{ui_command(out)}", soft_wrap=True, markup=False)  # markup would eat "[ui]"

    # ---- ablation (optional, after the timed demo): the same budget with each objective
    if cfg.ablation:
        from dataclasses import replace

        from vlmpref.ablation import run_ablation

        def train_variant(losses, folder):
            return train(train_config(replace(cfg, loss_type=losses, loss_weights=None), base, data_dir, folder))

        def evaluate_variant(trained, folder, name):
            variant = evaluate(trained.model, processor, held_out.dataset, beta=cfg.beta, desc=name)
            return write_eval(variant, folder, rows=held_out.dataset,
                              info=_eval_info(cfg, base, trained.output_dir, held_out))

        run_ablation(cfg.loss_type, train_variant, evaluate_variant, out, console)
    return summary
