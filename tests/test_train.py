"""A few DPO steps through the reference (TRL) engine: adapters change, base weights do not."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vlmpref.errors import VlmprefError
from vlmpref.train import TrainConfig, train


def _config(model_dir, data_dir, out, **kw):
    base = dict(model=str(model_dir), dataset=str(data_dir), split="train[:16]", output_dir=str(out),
                max_steps=3, per_device_train_batch_size=4, gradient_accumulation_steps=1, learning_rate=5e-3,
                logging_steps=1, save_steps=3, report_to=["none"], dataset_num_proc=1, seed=0,
                gradient_checkpointing=False, quantization="none")
    base.update(kw)
    return TrainConfig(**base)


def _snapshot(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def _check_changes(before, model):
    changed, frozen_changed = [], []
    for name, param in model.named_parameters():
        key = name.replace("base_model.model.", "", 1)
        key = key if key in before else name
        if key not in before:
            continue
        moved = not torch.equal(before[key], param.detach().float())
        if param.requires_grad:
            changed.append((name, moved))
        elif moved:
            frozen_changed.append(name)
    assert changed, "no trainable parameters"
    assert all(m for _, m in changed), [n for n, m in changed if not m]
    assert not frozen_changed, frozen_changed


@pytest.mark.parametrize("quantization,use_dora", [("none", True), ("none", False), ("4bit", True)])
def test_training_changes_adapters_and_not_base(tiny_model_dir, shapes_dir, tmp_path, quantization, use_dora):
    from vlmpref.models import load_model

    # as `train` loads it: quantized models are bf16 outside the 4-bit layers
    dtype = torch.bfloat16 if quantization == "4bit" else torch.float32
    reference = load_model(str(tiny_model_dir), quantization=quantization, dtype=dtype)
    base_before = {n: p.detach().float().clone() for n, p in reference.named_parameters()}
    result = train(_config(tiny_model_dir, shapes_dir, tmp_path / "out", quantization=quantization,
                           use_dora=use_dora))
    model = result.model
    # adapter parameters: all changed
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert trainable and len(saved) == len(trainable)
    for name, param in trainable.items():
        assert param.abs().sum() > 0, name
    adapter_init = _adapter_init(tiny_model_dir, quantization, use_dora)
    for name, param in trainable.items():
        assert not torch.equal(adapter_init[name], param.detach().float()), f"{name} did not change"
    # base parameters: bit for bit as loaded (4-bit: the packed weights and quantization state)
    for name, param in model.named_parameters():
        if param.requires_grad:
            continue
        key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(base_before[key], param.detach().float()), f"frozen {name} changed"


def _adapter_init(model_dir, quantization, use_dora):
    """The adapter as TRL initializes it (same seed), to compare the trained values against."""
    from peft import get_peft_model
    from transformers import set_seed

    from vlmpref.models import load_model, lora_config

    set_seed(0)
    dtype = torch.bfloat16 if quantization == "4bit" else torch.float32
    model = load_model(str(model_dir), quantization=quantization, dtype=dtype)
    peft_model = get_peft_model(model, lora_config(model, use_dora=use_dora))
    return {n: p.detach().float().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def test_output_folder_holds_adapter_processor_config_and_logs(tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "run"
    train(_config(tiny_model_dir, shapes_dir, out, report_to=["tensorboard"], max_steps=2, save_steps=1))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "vlmpref_config.yaml", "train_summary.json",
            "processor_config.json", "tokenizer.json", "chat_template.jinja"} <= names
    assert any(out.glob("runs/*/events.out.tfevents.*")), "no TensorBoard log"
    assert any(out.glob("checkpoint-*/adapter_model.safetensors"))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["rows_used"] == 16 and summary["rows_set_aside"] == 0
    # every log also went to train_log.jsonl as it was written: the same lines as the summary's history
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 2]  # two training logs, then the end-of-run line
    assert [r["loss"] for r in logged[:2]] == [h["loss"] for h in summary["log_history"][:2]]


def test_llava_family_trains_too(tiny_llava_dir, shapes_dir, tmp_path):
    result = train(_config(tiny_llava_dir, shapes_dir, tmp_path / "llava", max_steps=2, lora_scope="language"))
    assert result.summary["steps"] == 2
    assert all("language_model" in n for n, p in result.model.named_parameters() if p.requires_grad)


def test_non_empty_output_dir_needs_overwrite(tiny_model_dir, shapes_dir, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(VlmprefError, match="not empty.*--overwrite"):
        train(_config(tiny_model_dir, shapes_dir, out))
