"""Run folders and paths: one module prepares output folders and reads a run's saved config (from an adapter or
the run above a checkpoint); one loader gives generate, chat, eval and merge the same base + adapter; paths are
made absolute once, where they enter, so a saved run works from any folder; a run that failed before its first
checkpoint is simply started again."""

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vlmpref import config as config_io
from vlmpref.cli import main
from vlmpref.errors import VlmprefError
from vlmpref.models.inference import inference_settings
from vlmpref.runs import adapter_base, prepare_output_dir, run_config
from vlmpref.train.config import TrainConfig
from vlmpref.train.run import prepare_run_dir

SRC = Path(__file__).parents[1] / "src" / "vlmpref"


def _train_args(model: str, dataset: str, out: str) -> list[str]:
    return ["train", "--model", model, "--dataset", dataset, "--split", "train[:4]", "--output-dir", out,
            "--max-steps", "1", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "1",
            "--learning-rate", "5e-3", "--save-steps", "1", "--report-to", "none", "--dataset-num-proc", "1",
            "--no-gradient-checkpointing", "--quantization", "none"]


@pytest.fixture(scope="module")
def relative_run(tiny_model_dir, shapes_dir, tmp_path_factory):
    """A 1-step run started with relative paths (model, dataset, output folder), after a first attempt that
    failed on a mistyped dataset in the same output folder."""
    work = tmp_path_factory.mktemp("work")
    shutil.copytree(tiny_model_dir, work / "tiny")
    shutil.copytree(shapes_dir, work / "shapes")
    before = os.getcwd()
    os.chdir(work)
    try:
        assert main(_train_args("tiny", "shapez", "runs/dpo")) == 2  # no such dataset: fails before training
        assert (work / "runs" / "dpo" / "vlmpref_config.yaml").is_file()  # ... leaving the run's config behind
        assert main(_train_args("tiny", "shapes", "runs/dpo")) == 0  # the retry needs no --overwrite
    finally:
        os.chdir(before)
    return work


def test_a_run_that_failed_before_its_first_checkpoint_is_retried_without_overwrite(relative_run):
    run = relative_run / "runs" / "dpo"
    assert (run / "adapter_model.safetensors").is_file() and (run / "checkpoint-1").is_dir()
    assert yaml.safe_load((run / "vlmpref_config.yaml").read_text())["dataset"] == str(relative_run / "shapes")


def test_only_a_folder_with_nothing_but_an_early_failure_is_taken_over(tmp_path):
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "vlmpref_config.yaml").write_text("model: x\n")
    (failed / "rejected_rows.jsonl").write_text("{}\n")
    (failed / "runs").mkdir()
    prepare_run_dir(failed, overwrite=False)
    assert list(failed.iterdir()) == []
    for extra in ("notes.txt", "checkpoint-2/trainer_state.json", "train_summary.json"):
        busy = tmp_path / extra.replace("/", "_")
        (busy / extra).parent.mkdir(parents=True)
        (busy / "vlmpref_config.yaml").write_text("model: x\n")
        (busy / extra).write_text("{}")
        with pytest.raises(VlmprefError, match="is not empty"):
            prepare_run_dir(busy, overwrite=False)


def test_saved_config_and_adapter_name_absolute_paths(relative_run):
    run = relative_run / "runs" / "dpo"
    saved = yaml.safe_load((run / "vlmpref_config.yaml").read_text())
    assert (saved["model"], saved["output_dir"]) == (str(relative_run / "tiny"), str(run))
    base = json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(relative_run / "tiny")
    # a Hub id is not a path: it stays an id
    cfg = config_io.resolve(TrainConfig, flags={"model": "HuggingFaceTB/SmolVLM-Instruct", "dataset": "user/data"})
    assert (cfg.model, cfg.dataset) == ("HuggingFaceTB/SmolVLM-Instruct", "user/data")


def test_eval_of_a_checkpoint_finds_the_base_from_another_folder(relative_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # neither the run's folder nor the one it was started from
    checkpoint = relative_run / "runs" / "dpo" / "checkpoint-1"
    assert main(["eval", "--adapter", str(checkpoint), "--dataset", str(relative_run / "shapes"), "--split",
                 "test[:2]", "--output-dir", "ev", "--no-pope", "--max-new-tokens", "4", "--relevance",
                 "lexical"]) == 0
    document = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert document["model"]["base"] == str(relative_run / "tiny")
    saved = yaml.safe_load((tmp_path / "ev" / "eval_config.yaml").read_text())
    assert (saved["model"], saved["quantization"], saved["adapter"]) == (str(relative_run / "tiny"), "none",
                                                                        str(checkpoint))


def test_generate_and_chat_take_the_model_from_the_run_and_images_from_the_current_folder(relative_run, tmp_path,
                                                                                          monkeypatch, capsys):
    from vlmpref.generate.chat import ChatConfig, run_chat

    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32), "red").save("img5.png")
    run = str(relative_run / "runs" / "dpo")
    assert main(["generate", "--adapter", run, "--image", "img5.png", "--prompt", "What color?",
                 "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.strip()
    stdout = io.StringIO()
    assert run_chat(ChatConfig(adapter=run, image=["./img5.png"], max_new_tokens=3),
                    stdin=io.StringIO("/image img5.png\nWhat color?\n"), stdout=stdout) == 1
    text = stdout.getvalue()
    assert text.startswith(f"Chatting with {relative_run / 'tiny'} + {run} about ./img5.png.")
    assert "(now talking about img5.png; new conversation)" in text and "error" not in text


def test_missing_image_is_refused_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "--model", "no-such-model-folder/x/y", "--image", "img5.png", "--prompt", "Hi"]) == 2
    err = capsys.readouterr().err
    assert err == "error: Cannot use --image: image file 'img5.png' does not exist.\n"


def test_settings_come_from_the_run_above_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-4").mkdir(parents=True)
    (run / "vlmpref_config.yaml").write_text("model: /models/base\nquantization: 4bit\nbeta: 0.3\n")
    (run / "checkpoint-4" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "other"}))
    checkpoint = str(run / "checkpoint-4")
    assert run_config(checkpoint)["beta"] == 0.3 and adapter_base(checkpoint) == "/models/base"
    settings = inference_settings(adapter=checkpoint)
    assert (settings.base, settings.quantization) == ("/models/base", "4bit")
    given = inference_settings(model="mine", adapter=checkpoint, quantization="none")
    assert (given.base, given.quantization) == ("mine", "none")
    # without the run's config, PEFT's record of the base still names it
    (run / "vlmpref_config.yaml").unlink()
    assert inference_settings(adapter=checkpoint).base == "other"
    with pytest.raises(VlmprefError, match="holds no adapter_config.json"):
        inference_settings(adapter=str(run))


def test_prepare_output_dir_refuses_and_clears_only_what_it_is_told(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.json").write_text("{}")
    (out / "mine.txt").write_text("keep")
    with pytest.raises(VlmprefError, match="not empty; choose another --output-dir or pass --overwrite"):
        prepare_output_dir(out, overwrite=False)
    prepare_output_dir(out, overwrite=True, clear=["old.json"])
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_later_stages_do_not_import_from_training():
    """eval, report and generate read run folders through vlmpref.runs, not through the training stage."""
    for stage in ("eval", "report", "generate"):
        for path in (SRC / stage).glob("*.py"):
            assert "vlmpref.train" not in path.read_text(), f"{path} imports from the training stage"
