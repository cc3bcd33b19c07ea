"""What a run reports counts what this process did: after a resume, its own steps, pairs and rate; the one-time
pass in the line; and, before any work, which held-out set is used and what --max-steps leaves out of that pass."""

import shutil

import pytest

from vlmpref import config as config_io
from vlmpref.train import TrainConfig, train
from vlmpref.train.reporting import summary_line


@pytest.mark.parametrize("engine", ["fast", "trl"])
def test_resume_counts_this_process_and_honours_new_logging_steps(engine, tiny_model_dir, shapes_dir, tmp_path,
                                                                   capsys):
    whole = tmp_path / "whole"
    train(TrainConfig(model=str(tiny_model_dir), dataset=str(shapes_dir), split="train[:16]", output_dir=str(whole),
                      engine=engine, max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=1, learning_rate=1e-2,
                      report_to=["none"], dataset_num_proc=1, save_steps=2, save_total_limit=2, logging_steps=10,
                      quantization="none", gradient_checkpointing=False))
    first = capsys.readouterr().out
    assert "Held-out set: none" in first
    # 4 steps of 2 pairs need 8 of the 16 pairs the fast engine's one-time pass scores: said before training
    said = "reference log-probs of all 16 training pairs once" in first and "--max-steps 4 trains on 8" in first
    assert said == (engine == "fast")
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    for later in ("checkpoint-4", "adapter_model.safetensors", "adapter_config.json", "train_summary.json"):
        target = cut / later
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    result = train(config_io.resolve(TrainConfig, resume=str(cut), logging_steps=1))
    summary = result.summary
    assert (summary["steps"], summary["steps_this_run"], summary["pairs_trained"]) == (4, 2, 4)
    assert [h["step"] for h in summary["log_history"] if "loss" in h] == [3, 4]  # every step, not every 10
    line = summary_line(summary, cut)
    assert line.startswith("Trained 2 steps (4 pairs; steps 3-4, after resuming) in ")
    assert ("reference log-probs reused from the run" in line) == (engine == "fast")
    rate = 4 / summary["train_seconds"]
    assert f"{rate:.2f} pairs/s" in line
    assert "one-time" not in capsys.readouterr().out  # the stored reference is reused: no pass to announce


def test_summary_line_includes_the_one_time_pass():
    summary = {"steps": 5, "steps_this_run": 5, "pairs_trained": 160, "train_seconds": 11.0, "seconds": 140.0,
               "one_time_seconds": 123.0, "report_to": []}
    line = summary_line(summary, "runs/dpo")
    assert line.startswith("Trained 5 steps (160 pairs) in 11s, 14.55 pairs/s, after a one-time pass of 2m 03s "
                           "(2m 20s in all)")
