"""Config precedence (flags > YAML > defaults), YAML errors, unknown keys, round trips."""

import dataclasses

import pytest

from vlmpref import config
from vlmpref.errors import VlmprefError
from vlmpref.train.config import TrainConfig


def test_defaults_are_the_guides_recipe():
    cfg = TrainConfig()
    assert (cfg.model, cfg.dataset, cfg.split) == ("HuggingFaceTB/SmolVLM-Instruct",
                                                   "HuggingFaceH4/rlaif-v_formatted", "train[:6%]")
    assert (cfg.quantization, cfg.use_dora, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == ("4bit", True, 8, 8, 0.1)
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.num_train_epochs) == (1, 32, 5)
    assert (cfg.logging_steps, cfg.save_steps, cfg.gradient_checkpointing) == (10, 10, True)
    assert cfg.lora_target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_flags_override_yaml_override_defaults(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("learning_rate: 1e-4\nbeta: 0.5\nloss_type: [sigmoid, sft]\nmax-steps: 7\n")
    cfg = config.resolve(TrainConfig, flags={"beta": 0.2}, yaml_path=path)
    assert cfg.learning_rate == 1e-4  # YAML 1.1 reads 1e-4 as a string; it is coerced to float
    assert cfg.beta == 0.2
    assert cfg.loss_type == ["sigmoid", "sft"]
    assert cfg.max_steps == 7
    assert cfg.lora_r == 8
    assert cfg.config == str(path)


def test_unknown_yaml_key_suggests_nearest(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("lerning_rate: 1e-4\n")
    with pytest.raises(VlmprefError, match="Unknown option 'lerning_rate'.*did you mean 'learning_rate'"):
        config.resolve(TrainConfig, yaml_path=path)


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("beta: 0.1\nloss_type: [sigmoid\n")
    with pytest.raises(VlmprefError, match="not valid YAML at line"):
        config.resolve(TrainConfig, yaml_path=path)


def test_missing_yaml_file():
    with pytest.raises(VlmprefError, match="does not exist"):
        config.resolve(TrainConfig, yaml_path="nope.yaml")


def test_wrong_type_in_yaml(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("per_device_train_batch_size: many\n")
    with pytest.raises(VlmprefError, match="must be of type int"):
        config.resolve(TrainConfig, yaml_path=path)


@pytest.mark.parametrize("field,value", [("learning_rate", 0.0), ("learning_rate", -1e-5),
                                         ("per_device_train_batch_size", 0), ("num_train_epochs", -1),
                                         ("gradient_accumulation_steps", 0)])
def test_non_positive_values_are_refused(field, value):
    with pytest.raises(VlmprefError, match="must be positive"):
        TrainConfig(**{field: value})


def test_loss_weights_must_match_loss_types():
    with pytest.raises(VlmprefError, match="one weight per --loss-type"):
        TrainConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0])


def test_saved_config_reads_back_identically(tmp_path):
    cfg = TrainConfig(learning_rate=3e-4, loss_type=["sigmoid", "sft"], eval_split="test[:1%]")
    path = config.save(cfg, tmp_path / "out" / "cfg.yaml")
    again = config.resolve(TrainConfig, yaml_path=path)
    # read back as given, but with the output folder made absolute (resolve does that for every path option)
    assert dataclasses.replace(again, config=None) == config.with_absolute_paths(cfg)


# ---- one declaration per concept


def test_every_quantization_and_scope_option_lists_its_choices_in_help():
    import argparse

    from vlmpref.cli import COMMANDS

    seen = set()
    for name, command in COMMANDS.items():
        parser = argparse.ArgumentParser()
        config.add_arguments(parser, command.config())
        for action in parser._actions:
            flag = next((o for o in action.option_strings if o.endswith(("quantization", "lora-scope"))), None)
            if flag:
                expected = ["all", "language"] if flag == "--lora-scope" else ["none", "8bit", "4bit"]
                assert action.choices == expected, f"vlmpref {name} {flag}"
                seen.add(name)
    # every command that loads or plans a model has the option
    assert {"train", "estimate", "generate", "chat", "eval", "compare", "merge", "demo"} <= seen


def test_estimate_and_train_share_the_run_options_and_declare_no_other_alike():
    from vlmpref.plan.options import RunOptions
    from vlmpref.plan.run import EstimateConfig

    shared = {f.name for f in dataclasses.fields(RunOptions)}
    train, estimate = TrainConfig(), EstimateConfig()
    assert {name: getattr(estimate, name) for name in shared} == {name: getattr(train, name) for name in shared}
    both = {f.name for f in dataclasses.fields(EstimateConfig)} & {f.name for f in dataclasses.fields(TrainConfig)}
    # beyond the run options, only what every command has: the model, a YAML file, a preset, remote code
    assert both - shared == {"model", "config", "preset", "trust_remote_code"}


def test_compare_takes_every_option_of_eval():
    from vlmpref.eval.run import EvalConfig
    from vlmpref.report.run import CompareConfig

    eval_fields = {f.name: f for f in dataclasses.fields(EvalConfig)}
    compare_fields = {f.name: f for f in dataclasses.fields(CompareConfig)}
    assert set(eval_fields) <= set(compare_fields)
    # the same declaration (help and default), except where the output goes
    for name in set(eval_fields) - {"output_dir"}:
        assert compare_fields[name].metadata == eval_fields[name].metadata, name
