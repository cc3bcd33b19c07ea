"""`vlmpref eval`, `vlmpref train` with held-out evaluation, and `vlmpref compare --adapter`, on tiny models."""

import json

import pytest

from vlmpref.cli import main
from vlmpref.eval.during_training import read_eval_log

FAST = ["--max-new-tokens", "6", "--relevance", "lexical", "--batch-size", "8"]


def test_eval_writes_the_documented_folder(tiny_model_dir, shapes_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--dataset", str(shapes_dir), "--split", "test[:5]",
                 "--output-dir", str(out), "--pope-per-image", "1", *FAST]) == 0
    assert "answer accuracy" in capsys.readouterr().out
    document = json.loads((out / "metrics.json").read_text())
    assert document["schema_version"] == 2
    assert document["model"] == {"base": str(tiny_model_dir), "adapter": None, "quantization": "none"}
    assert document["dataset"]["rows"] == 5 and document["settings"]["vocabulary"] == "shapes"
    metrics = document["metrics"]
    assert metrics["answer_accuracy"]["n"] == 5 and metrics["chair_sentence"]["n"] == 5
    assert set(metrics["pope"]) == {"random", "popular", "adversarial"}
    assert "reward_accuracy" not in metrics  # a base model has no reference to compare against
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [s["row_id"] for s in samples] == [0, 1, 2, 3, 4]
    # the 5 rows show one image: one present and one absent object per strategy
    assert len((out / "pope.jsonl").read_text().splitlines()) == 3 * 2
    assert (out / "eval_config.yaml").is_file()


def test_eval_user_errors(tmp_path, capsys):
    assert main(["eval", "--model", "x"]) == 2
    assert "No dataset given" in capsys.readouterr().err
    assert main(["eval", "--dataset", "x"]) == 2
    assert "No model given" in capsys.readouterr().err
    assert main(["eval", "--model", "x", "--dataset", "y", "--pope-strategies", "hard"]) == 2
    assert "Unknown --pope-strategies hard" in capsys.readouterr().err


def test_training_logs_heldout_metrics_then_compare_evaluates_the_adapter(tiny_model_dir, shapes_dir, tmp_path,
                                                                          capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dir), "--dataset", str(shapes_dir), "--split", "train[:4]",
                 "--eval-split", "test[:3]", "--eval-steps", "1", "--max-steps", "1", "--output-dir", str(run),
                 "--per-device-train-batch-size", "4", "--per-device-eval-batch-size", "4",
                 "--gradient-accumulation-steps", "1", "--learning-rate", "5e-3", "--logging-steps", "1",
                 "--save-steps", "1", "--dataset-num-proc", "1", "--no-gradient-checkpointing",
                 "--quantization", "none"]) == 0
    (record,) = read_eval_log(run)
    assert record["step"] == 1
    assert {"eval_loss", "eval_rewards/accuracies", "eval_rewards/margins"} <= set(record["trainer"])  # TRL's
    heldout = record["heldout"]
    assert heldout["reward_accuracy"]["n"] == 3 and heldout["length_normalized_accuracy"]["n"] == 3
    assert list((run / "runs" / "heldout").glob("events.out.tfevents.*")), "no TensorBoard log of held-out metrics"
    summary = json.loads((run / "train_summary.json").read_text())
    assert any("eval_loss" in entry for entry in summary["log_history"])

    out = tmp_path / "compare"
    assert main(["compare", "--adapter", str(run), "--dataset", str(shapes_dir), "--split", "test[:5]",
                 "--output-dir", str(out), "--no-pope", *FAST]) == 0
    after = json.loads((out / "eval_after" / "metrics.json").read_text())
    before = json.loads((out / "eval_before" / "metrics.json").read_text())
    assert after["model"]["adapter"] == str(run) and before["model"]["adapter"] is None
    assert after["model"]["base"] == before["model"]["base"] == str(tiny_model_dir)  # from the adapter's config
    assert "reward_accuracy" in after["metrics"] and "pope" not in after["metrics"]
    assert (out / "plots" / "training_curves.png").is_file()  # --run defaults to the adapter's folder
    assert (out / "report.html").is_file() and "DPO reward accuracy" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_ends_with_the_report_and_an_ablation(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(tiny_model_dir), "--quantization", "none", "--train-scenes", "4",
                 "--test-scenes", "2", "--max-steps", "1", "--per-device-train-batch-size", "4", "--ablation",
                 "--output-dir", str(out)]) == 0
    assert (out / "report" / "report.html").is_file() and (out / "report" / "plots" / "training_curves.png").is_file()
    header = (out / "ablation.md").read_text().splitlines()[2]
    assert header == "| metric | base | SFT only | DPO only | DPO + SFT |"
    ablation = json.loads((out / "ablation.json").read_text())
    assert ablation["variants"]["DPO + SFT"]["eval"] == str(out / "eval_after")  # the demo's own run, reused
    assert ablation["variants"]["SFT only"]["loss_type"] == ["sft"]
    assert (out / "ablation" / "sft_only" / "eval" / "metrics.json").is_file()
    assert f"in the web UI: vlmpref ui --run {out}" in capsys.readouterr().out
