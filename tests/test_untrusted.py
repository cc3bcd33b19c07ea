"""Untrusted files: no pickle weights, no model code, no image paths outside the dataset folder, unless asked."""

import json
import shutil

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmpref.data import load_preference_data
from vlmpref.errors import VlmprefError
from vlmpref.models import load_model


@pytest.fixture()
def pickle_only_model(tiny_model_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_pickle_weights_are_refused_unless_allowed(pickle_only_model):
    with pytest.raises(VlmprefError, match=r"has only pickle \(.bin\) weights, which can run code when loaded; pass "
                                           r"--allow-pickle if you trust its source"):
        load_model(str(pickle_only_model))
    model = load_model(str(pickle_only_model), allow_pickle=True)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_cli_refuses_pickle_weights_in_one_line(pickle_only_model, shapes_dir, tmp_path, capsys):
    from vlmpref.cli import main

    code = main(["train", "--model", str(pickle_only_model), "--dataset", str(shapes_dir), "--split", "train[:2]",
                 "--output-dir", str(tmp_path / "out"), "--quantization", "none", "--report-to", "none",
                 "--dataset-num-proc", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "error: Model" in err and "--allow-pickle" in err and "Traceback" not in err


@pytest.mark.parametrize("model_type", ["idefics3", "evil_vlm"])
def test_model_code_never_runs_without_trust_remote_code(tiny_model_dir, tmp_path, model_type):
    """A known architecture loads with transformers' own class; an unknown one is refused; neither runs the code."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    marker = tmp_path / "code-ran"
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForImageTextToText": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (folder / "configuration_evil.py").write_text(code + "from transformers import Idefics3Config as EvilConfig\n")
    (folder / "modeling_evil.py").write_text(code)
    if model_type == "idefics3":
        assert type(load_model(str(folder))).__module__.startswith("transformers.")
    else:
        with pytest.raises(VlmprefError, match="needs its own code to load; pass --trust-remote-code only if you"):
            load_model(str(folder))
    assert not marker.exists()


@pytest.fixture()
def folders(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    outside.mkdir()
    Image.new("RGB", (8, 8), (0, 200, 0)).save(data / "in.png")
    Image.new("RGB", (8, 8), (200, 0, 0)).save(outside / "out.png")
    (data / "link.png").symlink_to(outside / "out.png")  # inside by name, outside in fact
    rows = [{"image": "in.png", "question": "q?", "chosen": "a", "rejected": "b"},
            {"image": "../elsewhere/out.png", "question": "q?", "chosen": "a", "rejected": "c"},
            {"image": str(outside / "out.png"), "question": "q?", "chosen": "a", "rejected": "d"},
            {"image": "link.png", "question": "q?", "chosen": "a", "rejected": "e"}]
    (data / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return data / "d.jsonl"


def test_image_paths_must_stay_inside_the_dataset_folder(folders):
    data = load_preference_data(str(folders), num_proc=1)
    reasons = dict(zip(data.set_aside["row_id"], data.set_aside["problem"]))
    assert data.dataset["row_id"] == [0] and set(reasons) == {1, 2, 3}
    assert all("points outside the dataset folder (allow with --allow-outside-paths)" in r for r in reasons.values())
    allowed = load_preference_data(str(folders), num_proc=1, allow_outside_paths=True)
    assert allowed.dataset["row_id"] == [0, 1, 2, 3] and len(allowed.set_aside) == 0


def test_trust_remote_code_and_pickle_are_off_by_default():
    from vlmpref.train import TrainConfig

    cfg = TrainConfig()
    assert (cfg.trust_remote_code, cfg.allow_pickle, cfg.allow_outside_paths, cfg.overwrite) == (False,) * 4
