"""Loggers are checked up front, the training progress bar is on, and a run ends with one summary line."""

import pytest

from vlmpref.errors import VlmprefError
from vlmpref.train import TrainConfig
from vlmpref.train.reporting import LOGGERS, duration, summary_line


def test_missing_logger_package_is_a_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(VlmprefError, match=r"--report-to wandb needs the wandb package; install it with `pip "
                                           r"install wandb`, or use --report-to tensorboard\."):
        TrainConfig(report_to=["wandb"])
    with pytest.raises(VlmprefError, match="Unknown --report-to 'tensorbord'"):
        TrainConfig(report_to=["tensorbord"])
    assert TrainConfig(report_to=["none"]).report_to == []
    assert {"tensorboard", "wandb", "trackio"} <= set(LOGGERS)


def test_progress_bar_is_on_even_with_quiet_transformers_logging():
    from transformers.utils import logging as hf_logging

    from vlmpref.train.engines import dpo_config

    hf_logging.set_verbosity_error()  # what the CLI does
    try:
        args = dpo_config(TrainConfig(output_dir="unused", report_to=["none"]), bf16=False, has_eval=False)
    finally:
        hf_logging.set_verbosity_warning()
    assert args.disable_tqdm is False


def test_summary_line():
    summary = {"steps": 40, "steps_this_run": 40, "pairs_trained": 1280, "train_seconds": 842.4,
               "peak_memory_gib": 7.12, "report_to": ["tensorboard"]}
    assert summary_line(summary, "runs/dpo") == (
        "Trained 40 steps (1,280 pairs) in 14m 02s, 1.52 pairs/s, peak GPU memory 7.1 GiB; adapter, processor and "
        "config in runs/dpo (logs: tensorboard --logdir runs/dpo/runs)")
    # a resumed run counts only what this process trained, and names the one-time pass and the whole time
    resumed = {"steps": 6, "steps_this_run": 3, "pairs_trained": 96, "train_seconds": 9.6, "one_time_seconds": 123.0,
               "seconds": 140.2, "report_to": []}
    assert summary_line(resumed, "runs/dpo") == (
        "Trained 3 steps (96 pairs; steps 4-6, after resuming) in 10s, 10.00 pairs/s, after a one-time pass of "
        "2m 03s (2m 20s in all); adapter, processor and config in runs/dpo")
    assert duration(3 * 3600 + 125) == "3h 02m" and duration(59.4) == "59s"
