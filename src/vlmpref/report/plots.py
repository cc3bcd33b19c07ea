"""PNG plots for the report: training curves from a run's logs, before/after bars with 95% intervals."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window: reports are built on servers and in tests
import matplotlib.pyplot as plt  # noqa: E402

from vlmpref.report.compare import ComparisonRow  # noqa: E402

# (title, training-log key, evaluation-log key)
CURVES = [
    ("loss", "loss", "eval_loss"),
    ("reward margin (chosen - rejected)", "rewards/margins", "eval_rewards/margins"),
    ("reward accuracy", "rewards/accuracies", "eval_rewards/accuracies"),
]
BEFORE, AFTER = "#8a8f98", "#2a6fdb"


def read_log_history(run_dir: str | Path) -> list[dict]:
    """TRL's log history from a training folder's train_summary.json ([] when there is none)."""
    path = Path(run_dir) / "train_summary.json"
    if not path.is_file():
        return []
    return json.loads(path.read_text()).get("log_history", [])


def training_curves(run_dir: str | Path, out_path: str | Path) -> Path | None:
    """Loss, reward margin and reward accuracy over steps (training and held-out); None without logs."""
    from vlmpref.eval.during_training import read_eval_log

    history = read_log_history(run_dir)
    heldout = [r for r in read_eval_log(run_dir) if r.get("heldout")]
    panels = [c for c in CURVES if any(c[1] in h or c[2] in h for h in history)]
    if not panels and not heldout:
        return None
    count = len(panels) + bool(heldout)
    fig, axes = plt.subplots(1, count, figsize=(4.2 * count, 3.2), squeeze=False)
    for ax, (title, key, eval_key) in zip(axes[0], panels):
        for k, label, color in ((key, "train", AFTER), (eval_key, "held-out", "#d9822b")):
            points = [(h["step"], h[k]) for h in history if k in h and "step" in h]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, ms=3, label=label, color=color)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if heldout:
        ax = axes[0][-1]
        for name, color in (("length_normalized_accuracy", AFTER), ("reward_accuracy", "#d9822b")):
            points = [(r["step"], r["heldout"][name]["value"]) for r in heldout if name in r["heldout"]]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=name.replace("_", " "), color=color)
        ax.set_title("held-out preference accuracy", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)


def before_after_bars(rows: list[ComparisonRow], out_path: str | Path) -> Path | None:
    """Horizontal bars, before and after, with 95% intervals, for every percentage metric in the table."""
    shown = [r for r in rows if r.spec.percent and r.spec.headline and (r.before or r.after)]
    if not shown:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(shown) + 1.2))
    height = 0.38
    for offset, side, color, name in ((-height / 2, "before", BEFORE, "before"), (height / 2, "after", AFTER, "after")):
        ys, values, errors = [], [], [[], []]
        for i, row in enumerate(shown):
            metric = getattr(row, side)
            if not metric or metric.get("value") is None:
                continue
            v = 100 * metric["value"]
            low, high = [100 * x if x is not None else v for x in (metric.get("ci95") or [None, None])]
            ys.append(i + offset)
            values.append(v)
            errors[0].append(max(v - low, 0))
            errors[1].append(max(high - v, 0))
        ax.barh(ys, values, height=height, color=color, label=name, xerr=errors, capsize=2,
                error_kw={"elinewidth": 0.8, "ecolor": "#333"})
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([r.spec.label.strip() + ("  (lower is better)" if r.spec.higher_is_better is False else "")
                        for r in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("%  (bars: value, whiskers: 95% interval)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return Path(out_path)
