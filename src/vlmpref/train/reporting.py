"""Where training reports to, and the one line it ends with.

TensorBoard is the default logger; `--report-to wandb` or `--report-to trackio` need their package installed,
which is checked before any data or model is loaded.
"""

from __future__ import annotations

import importlib.util

from vlmpref.errors import VlmprefError

# logger name -> (module to import, pip package)
LOGGERS = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"),
           "trackio": ("trackio", "trackio"), "mlflow": ("mlflow", "mlflow")}


def check_report_to(names: list[str]) -> None:
    """One clear error for an unknown logger or one whose package is missing."""
    for name in names:
        if name not in LOGGERS:
            raise VlmprefError(f"Unknown --report-to '{name}'; choose from {', '.join(LOGGERS)} or none.")
        module, package = LOGGERS[name]
        if importlib.util.find_spec(module) is None:
            raise VlmprefError(f"--report-to {name} needs the {package} package; install it with "
                               f"`pip install {package}`, or use --report-to tensorboard.")


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def summary_line(summary: dict, output_dir) -> str:
    """`Trained 40 steps (1,280 pairs) in 14m 02s, 1.52 pairs/s, after a one-time pass of 1m 10s (15m 30s in all),
    peak GPU memory 7.1 GiB; adapter, processor and config in runs/dpo` — counting what this process did."""
    seconds = summary.get("train_seconds") or summary.get("seconds") or 0.0
    pairs = summary.get("pairs_trained", 0)
    steps, reached = summary.get("steps_this_run", 0), summary.get("steps", 0)
    rate = f", {pairs / seconds:.2f} pairs/s" if seconds and pairs else ""
    once = summary.get("one_time_seconds")
    extra = f", after a one-time pass of {duration(once)}" if once and once >= 0.5 else ""
    if summary.get("reference_logps") == "reused":  # a resumed run: the stored reference, no one-time pass
        extra += ", reference log-probs reused from the run"
    if summary.get("seconds"):
        extra += f" ({duration(summary['seconds'])} in all)"
    peak = summary.get("peak_memory_gib")
    memory = f", peak GPU memory {peak:.1f} GiB" if peak is not None else ""
    resumed = f"; steps {reached - steps + 1}-{reached}, after resuming" if steps != reached else ""
    line = (f"Trained {steps} steps ({pairs:,} pairs{resumed}) in {duration(seconds)}{rate}{extra}{memory}; "
            f"adapter, processor and config in {output_dir}")
    if "tensorboard" in summary.get("report_to", []):
        line += f" (logs: tensorboard --logdir {output_dir}/runs)"
    return line


def interrupted_line(summary: dict, output_dir, checkpoint) -> str:
    """`Stopped by SIGINT after step 12 of 40; checkpoint-12 saved. Continue with: vlmpref train --resume runs/dpo`."""
    saved = f"{checkpoint} saved" if checkpoint else "no checkpoint saved"
    return (f"Stopped by {summary['interrupted']} after step {summary['steps']} of {summary['max_steps']}; {saved}. "
            f"Continue with: vlmpref train --resume {output_dir}")
