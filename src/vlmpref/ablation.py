"""What each training objective contributes: SFT only, DPO only and DPO + SFT on the same budget.

    vlmpref demo --ablation

Every variant trains with the demo's settings (steps, batch, learning rate, adapter) and differs only in
`loss_type`; each is evaluated on the same held-out rows as the base, and one table puts them side by
side with their changes against the base (`ablation.md`, `ablation.json` in the demo's folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from rich.console import Console

from vlmpref.terminal import make_console

VARIANTS = (("SFT only", ["sft"]), ("DPO only", ["sigmoid"]), ("DPO + SFT", ["sigmoid", "sft"]))


def run_ablation(loss_type: list[str], train_variant: Callable[[list[str], Path], object],
                 evaluate_variant: Callable[[object, Path, str], Path], out: Path,
                 console: Console | None = None) -> Path:
    """Train and evaluate each variant into OUT/ablation/<variant>/, then tabulate against OUT/eval_before.

    `train_variant(loss_type, folder)` trains one variant into `folder` and returns what
    `evaluate_variant(trained, eval_folder, name)` needs to write its evaluation folder. The variant whose
    losses equal `loss_type` reuses the demo's own run (OUT/eval_after).
    """
    from vlmpref.eval.evaluate import read_eval
    from vlmpref.report.ablation import markdown_ablation, print_ablation

    console = console or make_console()
    folders = {}
    for name, losses in VARIANTS:
        if list(loss_type) == losses and (out / "eval_after" / "metrics.json").is_file():
            folders[name] = out / "eval_after"
            continue
        folder = out / "ablation" / name.lower().replace(" + ", "_").replace(" ", "_")
        console.rule(f"ablation: {name} ({' + '.join(losses)})")
        trained = train_variant(losses, folder)
        folders[name] = evaluate_variant(trained, folder / "eval", name)
        del trained
    base = read_eval(out / "eval_before")
    variants = {name: read_eval(folders[name]) for name, _ in VARIANTS}
    print_ablation(base, variants, console=console)
    (out / "ablation.md").write_text("# Ablation: the same budget, three objectives\n\n"
                                     + markdown_ablation(base, variants) + "\n")
    (out / "ablation.json").write_text(json.dumps(
        {"base": str(out / "eval_before"), "variants": {name: {"loss_type": losses, "eval": str(folders[name]),
                                                               "metrics": variants[name].metrics}
                                                        for name, losses in VARIANTS}}, indent=2))
    return out / "ablation.md"
