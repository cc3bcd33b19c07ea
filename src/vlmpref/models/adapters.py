"""LoRA / DoRA adapters with the guide's defaults and two target scopes.

`all` is the guide's choice: every module named q/k/v/o/gate/up/down_proj, which also matches the SigLIP
vision attention, so the vision tower is adapted too. `language` puts the same adapters on the language
model only; the vision tower and connector stay frozen, which lets the fast engine cache image features.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from vlmpref.config import LoraScope
from vlmpref.errors import VlmprefError

if TYPE_CHECKING:  # peft loads when an adapter is made, so `--help` stays quick
    from peft import LoraConfig

GUIDE_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def language_model_prefix(model) -> str:
    """Module path of the language model inside a VLM (`model.text_model` for Idefics3, ...)."""
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise VlmprefError(f"Cannot find the language model inside {type(model).__name__}; "
                       "use --lora-scope all or list --lora-target-modules explicitly.")


def lora_config(model, use_dora: bool = True, r: int = 8, alpha: int = 8, dropout: float = 0.1,
                init_lora_weights: str | bool = "gaussian", target_modules: list[str] | None = None,
                scope: LoraScope = "all") -> LoraConfig:
    """A PEFT LoraConfig; defaults are the guide's (DoRA, r=8, alpha=8, dropout 0.1, gaussian init)."""
    from peft import LoraConfig

    names = list(target_modules or GUIDE_TARGET_MODULES)
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if not set(names) & present:
        raise VlmprefError(f"None of the target modules {', '.join(names)} exist in {type(model).__name__}; "
                           f"pick names from its linear layers, e.g. {', '.join(sorted(present)[:8])}.")
    if scope == "language":
        prefix = re.escape(language_model_prefix(model))
        targets: list[str] | str = rf"{prefix}\..*\.({'|'.join(map(re.escape, names))})"
    elif scope == "all":
        targets = names
    else:
        raise VlmprefError(f"LoRA scope '{scope}' is not one of all, language.")
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_dora=use_dora,
                      init_lora_weights=init_lora_weights, target_modules=targets)


def attach_adapter(model, adapter_dir: str, trainable: bool = False):
    """Load a saved PEFT adapter onto `model` (the folder `vlmpref train` writes)."""
    from pathlib import Path

    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise VlmprefError(f"{adapter_dir} holds no adapter_config.json; point --adapter at the output folder of "
                           "`vlmpref train` (or a checkpoint folder inside it).")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
