"""The fast engine's private dependencies on transformers, TRL, PEFT and datasets are all still there; an
upgrade that removes one fails here, with the entry's own message, instead of deep inside a training step."""

import torch
from trl import DPOConfig

from vlmpref.data import load_preference_data
from vlmpref.models import load_model, load_processor, lora_config
from vlmpref.train.fast import FastDPOTrainer, upstream


def test_every_private_api_the_fast_engine_uses_is_still_there():
    assert upstream.check() == []


def test_a_missing_one_is_reported_by_its_message(monkeypatch):
    monkeypatch.setattr(upstream, "PRIVATE_API", upstream.PRIVATE_API + [
        ("transformers", "Trainer", "_a_method_that_never_existed", "attr", "Trainer lost a method"),
        ("trl", "DPOTrainer.__init__", "self._never_assigned", "source", "DPOTrainer lost an attribute"),
        ("no_such_module", "x", None, "attr", "a module is gone")])
    assert upstream.check() == ["Trainer lost a method", "DPOTrainer lost an attribute", "a module is gone"]


def test_the_module_docstring_lists_every_entry():
    for module, path, name, _, _ in upstream.PRIVATE_API:
        shown = (name or path).replace("self.", "").split(".")[-1]
        assert shown in upstream.__doc__, f"{module}.{path} {name} is used but not listed in the docstring"


def test_flash_attention_2_is_switched_to_sdpa_with_a_notice(tiny_model_dir, shapes_dir, tmp_path, capsys):
    """FlashAttention-2 would read the 4-D shared-prefix mask as a padding mask; the engine says so and uses sdpa.
    (flash-attn does not run on a CPU, so the model reports flash_attention_2 without loading its kernels.)"""
    model = load_model(str(tiny_model_dir))
    for config in (model.config, model.config.get_text_config()):
        config._attn_implementation_internal = "flash_attention_2"
    switched = []
    model.set_attn_implementation = lambda impl: switched.append(impl) or [
        setattr(c, "_attn_implementation_internal", impl) for c in (model.config, model.config.get_text_config())]
    dataset = load_preference_data(str(shapes_dir), "train[:2]", num_proc=1).dataset
    trainer = FastDPOTrainer(model=model, args=DPOConfig(str(tmp_path), use_cpu=True, report_to=[], bf16=False),
                             train_dataset=dataset, processing_class=load_processor(str(tiny_model_dir)),
                             peft_config=lora_config(model))
    assert "switching this model to sdpa" in capsys.readouterr().out
    assert switched == ["sdpa"] and trainer.attention == "dense"
    assert torch.isfinite(torch.tensor(list(trainer.reference.chosen.values()))).all()
