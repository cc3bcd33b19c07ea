"""Presets: one YAML per memory size, the layer under --config and flags, each checked to fit its card."""

import re
from pathlib import Path

import pytest
import yaml

from vlmpref import config as config_io
from vlmpref.cli import main
from vlmpref.errors import VlmprefError
from vlmpref.plan.estimate import RunSettings, estimate
from vlmpref.config import PRESETS, preset_path, preset_values
from vlmpref.train.config import TrainConfig
from vlmpref.plan.gpus import find_gpu
from vlmpref.plan.shapes import describe_model
from vlmpref.plan.presets import preset_settings
from vlmpref.plan.run import with_auto_packing


@pytest.mark.parametrize("name", PRESETS)
def test_preset_sets_its_values_on_train_config(name):
    cfg = config_io.resolve(TrainConfig, flags={"preset": name})
    for key, value in preset_values(name).items():
        assert getattr(cfg, key) == value, key
    assert {"quantization", "lora_scope", "image_longest_edge", "per_device_train_batch_size",
            "gradient_accumulation_steps", "gradient_checkpointing"} <= set(preset_values(name))


@pytest.mark.parametrize("name", PRESETS)
def test_preset_fits_its_budget_as_its_header_says(name):
    """The header states the estimate for SmolVLM-Instruct 2.2B with 256-token answers, for both engines; it must
    still hold."""
    header = " ".join(line.lstrip("# ") for line in preset_path(name).read_text().splitlines())
    fast, budget, pairs, packed, auto, trl = re.search(
        r"needs ([\d.]+) GiB of (\d+) GiB with the fast engine \(the default\) at (\d+) pairs? per forward, ([\d.]+) GiB "
        r"at the (\d+) its auto packing chooses there, ([\d.]+) GiB with --engine trl", header).groups()
    shape = describe_model("smolvlm-2.2b")
    for engine, needs in (("fast", float(fast)), ("trl", float(trl))):
        settings = preset_settings(name, RunSettings(answer_tokens=256, engine=engine))
        total = estimate(shape, settings, f"{budget}gb").memory.total_gib
        assert total == pytest.approx(needs, abs=0.05), engine
        assert total <= 0.9 * int(budget), engine
    assert settings.per_device_train_batch_size == int(pairs)
    auto_settings, _ = with_auto_packing(shape, preset_settings(name, RunSettings(answer_tokens=256, engine="fast")),
                                         find_gpu(f"{budget}gb"))
    assert auto_settings.pairs_per_forward == int(auto)
    assert estimate(shape, auto_settings, f"{budget}gb").memory.total_gib == pytest.approx(float(packed), abs=0.05)


def test_precedence_flags_over_yaml_over_preset_over_defaults(tmp_path):
    (tmp_path / "run.yaml").write_text("preset: 6gb\nper_device_train_batch_size: 2\nlearning_rate: 1.0e-5\n")
    cfg = config_io.resolve(TrainConfig, flags={"gradient_accumulation_steps": 4}, yaml_path=tmp_path / "run.yaml")
    assert cfg.quantization == "4bit" and cfg.image_longest_edge == 768  # from the preset
    assert cfg.per_device_train_batch_size == 2 and cfg.learning_rate == 1e-5  # the YAML beats the preset
    assert cfg.gradient_accumulation_steps == 4  # the flag beats both
    assert cfg.beta == 0.1  # untouched default
    cfg = config_io.resolve(TrainConfig, flags={"preset": "24gb", "quantization": "4bit"})
    assert cfg.quantization == "4bit" and cfg.per_device_train_batch_size == 4


def test_preset_from_a_file_and_unknown_presets(tmp_path):
    (tmp_path / "mine.yaml").write_text("quantization: 8bit\nper_device_train_batch_size: 3\n")
    cfg = config_io.resolve(TrainConfig, flags={"preset": str(tmp_path / "mine.yaml")})
    assert (cfg.quantization, cfg.per_device_train_batch_size) == ("8bit", 3)
    with pytest.raises(VlmprefError, match="Unknown preset '7gb'; choose from 6gb, 8gb"):
        config_io.resolve(TrainConfig, flags={"preset": "7gb"})
    (tmp_path / "bad.yaml").write_text("quantisation: 4bit\n")
    with pytest.raises(VlmprefError, match="Unknown option 'quantisation' in preset .*did you mean 'quantization'"):
        config_io.resolve(TrainConfig, flags={"preset": str(tmp_path / "bad.yaml")})


def test_train_prints_the_preset_values_and_a_summary_line(tiny_model_dir, shapes_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--preset", "6gb", "--model", str(tiny_model_dir), "--dataset", str(shapes_dir),
                 "--split", "train[:4]", "--max-steps", "1", "--gradient-accumulation-steps", "1",
                 "--report-to", "none", "--dataset-num-proc", "1", "--output-dir", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert ("preset 6gb: quantization=4bit, use_dora=false, lora_scope=language, image_longest_edge=768, "
            "per_device_train_batch_size=1, gradient_accumulation_steps=1, gradient_checkpointing=true") in printed
    assert re.search(r"Trained 1 steps \(1 pairs\) in \d+s, [\d.]+ pairs/s(, after a one-time pass of \d+s)? \(\d+s in all\); "
                         r"adapter, processor and config in "
                     + re.escape(str(out)), printed)
    saved = yaml.safe_load((out / "vlmpref_config.yaml").read_text())
    assert saved["preset"] == "6gb" and saved["image_longest_edge"] == 768
    # the processor saved with the adapter keeps the resolution it was trained at
    assert '"longest_edge": 768' in (out / "processor_config.json").read_text()


def test_presets_ship_inside_the_package():
    """A non-editable install has no configs/ folder: the presets must come from the package itself."""
    import vlmpref

    package = Path(vlmpref.__file__).resolve().parent
    for name in PRESETS:
        assert preset_path(name).resolve().is_relative_to(package)
    repo_link = Path(__file__).resolve().parents[1] / "configs" / "presets"
    assert sorted(p.name for p in repo_link.iterdir()) == sorted(f"{name}.yaml" for name in PRESETS)
