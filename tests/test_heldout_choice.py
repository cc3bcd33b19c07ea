"""A shipped config names the guide's held-out set; when --dataset replaces the config's dataset, the held-out set
follows the new data (its held-out split, or none) instead of reaching for the guide's dataset on the Hub."""

import json
from pathlib import Path

from vlmpref import config as config_io
from vlmpref.train.config import TrainConfig
from vlmpref.train.run import held_out_line

GUIDE = Path(__file__).parents[1] / "configs" / "smolvlm-instruct" / "dpo-guide.yaml"


def test_the_config_keeps_its_own_dataset_and_held_out_set():
    cfg = config_io.resolve(TrainConfig, yaml_path=GUIDE)
    assert (cfg.eval_dataset, cfg.eval_split, cfg.split) == ("HuggingFaceH4/rlaif-v_formatted", "test[:1%]",
                                                            "train[:6%]")
    assert held_out_line(cfg) == "Held-out set: HuggingFaceH4/rlaif-v_formatted [test[:1%]], every 10 steps."


def test_a_new_dataset_brings_its_own_held_out_split(shapes_dir):
    cfg = config_io.resolve(TrainConfig, flags={"dataset": str(shapes_dir)}, yaml_path=GUIDE)
    assert (cfg.dataset, cfg.split, cfg.eval_dataset, cfg.eval_split) == (str(shapes_dir), "train", str(shapes_dir),
                                                                          "test")
    assert held_out_line(cfg) == f"Held-out set: {shapes_dir} [test], every 10 steps."


def test_a_single_file_has_no_held_out_split_so_evaluation_is_off_and_said(tmp_path):
    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"image": "a.png", "question": "q", "chosen": "a", "rejected": "b"}) + "\n")
    cfg = config_io.resolve(TrainConfig, flags={"dataset": str(data)}, yaml_path=GUIDE)
    assert (cfg.split, cfg.eval_dataset, cfg.eval_split, cfg.eval_steps) == ("train", None, None, None)
    assert held_out_line(cfg).startswith("Held-out set: none, so no evaluation during training")


def test_flags_given_with_the_dataset_win(shapes_dir):
    cfg = config_io.resolve(TrainConfig, flags={"dataset": str(shapes_dir), "split": "train[:8]",
                                                "eval_split": "test[:4]"}, yaml_path=GUIDE)
    assert (cfg.split, cfg.eval_dataset, cfg.eval_split) == ("train[:8]", str(shapes_dir), "test[:4]")
