"""The private parts of transformers, TRL, PEFT and datasets the fast engine relies on, checked against
transformers 5.24.0, TRL 1.16.0, PEFT 0.21.2, datasets 4.8.5 (the versions pyproject.toml pins).

Each entry says where it is used and why no public hook does it; `check()` confirms that each one still
exists, and tests/test_upstream.py fails with the entry's message when an upgrade removes one.

transformers
- `Trainer._train_batch_size` (trainer.py): the micro-batch size Trainer.__init__ reads once from the
  arguments; auto packing decides it after the model is wrapped, so it is set again there.
- `Trainer._set_signature_columns_if_needed` / `_signature_columns` (trainer.py): keeps the pair-id column
  that `remove_unused_columns` would drop (the stored reference log-probs are found by it).
- `PretrainedConfig._attn_implementation` (trainer.py): which attention the model was loaded with (no
  public reader; FlexAttention gets block masks, FlashAttention-2 is switched to sdpa).
trl
- `DPOTrainer._metrics` and `DPOTrainer._total_train_tokens` (trainer.py): the per-mode metric lists that
  `DPOTrainer.log` averages and the token counter it reports; the fast engine fills them as TRL does.
- `DPOTrainer.loss_types`, `loss_weights`, `beta`, `label_smoothing` (trainer.py): the loss settings TRL
  resolves from DPOConfig in its __init__.
- `trl.trainer.utils.use_adapter` (trainer.py): the context that disables (or swaps) the adapter for the
  reference, as TRL's own reference pass does.
peft
- `peft.tuners.lora.dora.DoraLinearLayer.forward` (dora.py), replaced per instance: the weight norm is taken
  once per optimizer step instead of every forward; `DoraLinearLayer.weight` / `fan_in_fan_out` are read.
- `peft.utils.integrations.dequantize_module_weight`, `peft.utils.other.transpose` (dora.py): PEFT's own
  helpers for the norm, so the fast engine dequantizes exactly as PEFT does.
- `LoraLayer.lora_A` / `lora_dropout` as `ModuleDict`s keyed by adapter name (dora.py, plan/autopack.py): which
  modules carry adapters, and dropout modules with p == 0 replaced by Identity.
datasets
- `Dataset._fingerprint` (trainer.py): identifies the data whose reference log-probs are stored, so a resumed
  run reuses them only for the same data.
"""

from __future__ import annotations

import importlib
import inspect

# (module, object path, attribute or None, how to find it: "attr" on the class/module, or "source" = assigned in
# the named method's source, message shown when it is gone)
PRIVATE_API = [
    ("transformers", "Trainer.__init__", "self._train_batch_size", "source",
     "transformers.Trainer no longer sets _train_batch_size in __init__; auto packing cannot resize micro-batches"),
    ("transformers", "Trainer", "_set_signature_columns_if_needed", "attr",
     "transformers.Trainer._set_signature_columns_if_needed is gone; the pair-id column would be dropped"),
    ("transformers", "PretrainedConfig", "_attn_implementation", "attr",
     "transformers.PretrainedConfig._attn_implementation is gone; the attention kind cannot be read"),
    ("trl", "DPOTrainer.__init__", "self._metrics", "source",
     "trl.DPOTrainer no longer keeps _metrics; the fast engine's metrics would not be logged"),
    ("trl", "DPOTrainer.__init__", "self._total_train_tokens", "source",
     "trl.DPOTrainer no longer counts _total_train_tokens"),
    ("trl", "DPOTrainer.__init__", "self.loss_types", "source", "trl.DPOTrainer no longer resolves loss_types"),
    ("trl", "DPOTrainer.__init__", "self.loss_weights", "source", "trl.DPOTrainer no longer resolves loss_weights"),
    ("trl.trainer.utils", "use_adapter", None, "attr",
     "trl.trainer.utils.use_adapter is gone; the reference (adapter disabled) cannot be computed"),
    ("peft.tuners.lora.dora", "DoraLinearLayer", "forward", "attr",
     "peft's DoraLinearLayer.forward is gone; the per-step weight-norm cache cannot replace it"),
    ("peft.utils.integrations", "dequantize_module_weight", None, "attr",
     "peft.utils.integrations.dequantize_module_weight is gone"),
    ("peft.utils.other", "transpose", None, "attr", "peft.utils.other.transpose is gone"),
    ("peft.tuners.lora.layer", "LoraLayer.update_layer", "self.lora_dropout", "source",
     "peft's LoraLayer no longer keeps lora_dropout per adapter; zero dropout cannot be skipped"),
    ("datasets", "Dataset.__init__", "self._fingerprint", "source",
     "datasets.Dataset no longer keeps _fingerprint; stored reference log-probs cannot be matched to the data"),
]


def _resolve(module: str, path: str):
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def check() -> list[str]:
    """Messages for every private API above that is gone (empty when all are there)."""
    missing = []
    for module, path, name, how, message in PRIVATE_API:
        try:
            obj = _resolve(module, path)
            if how == "attr" and name is not None and not hasattr(obj, name):
                missing.append(message)
            elif how == "source" and name not in inspect.getsource(obj):
                missing.append(message)
        except (ImportError, AttributeError, OSError, TypeError):
            missing.append(message)
    return missing
