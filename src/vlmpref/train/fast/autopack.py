"""`pairs_per_forward="auto"`: as many pairs per forward as the memory budget holds, read off the loaded model.

The run's settings come from what was actually built (quantization, adapted modules, DoRA, the image cache,
the processor's tiling) and from a sample of the data (largest image, longest prompt and answer); the
estimate is `vlmpref estimate`'s (plan/estimate.py), and the choice `plan_packing`'s.
"""

from __future__ import annotations

import psutil
import torch

from vlmpref.plan.estimate import PackingPlan, RunSettings, plan_packing
from vlmpref.plan.memory import measured_settings, memory_budget
from vlmpref.plan.shapes import describe_model


def adapted_modules(model) -> tuple[tuple[str, ...], bool]:
    """(leaf names of the modules carrying LoRA adapters, whether any of them is outside the language model)."""
    decoder = model.get_decoder()
    language = {id(m) for m in decoder.modules()}
    names, vision = set(), False
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and isinstance(getattr(module, "lora_A"), torch.nn.ModuleDict):
            names.add(name.rsplit(".", 1)[-1])
            vision |= id(module) not in language
    return tuple(sorted(names)), vision


def model_settings(model, args, cached_images: bool) -> RunSettings:
    """RunSettings of a PEFT-wrapped model as the fast engine will train it, before the data is measured."""
    quant = getattr(model.config, "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else (quant or {})
    quantization = "4bit" if quant.get("load_in_4bit") else "8bit" if quant.get("load_in_8bit") else "none"
    targets, vision = adapted_modules(model)
    peft_config = next(iter(getattr(model, "peft_config", {}).values()), None)
    return RunSettings(
        quantization=quantization, use_dora=bool(getattr(peft_config, "use_dora", False)),
        lora_r=int(getattr(peft_config, "r", 8)), lora_target_modules=list(targets or ("q_proj",)),
        lora_scope="all" if vision else "language", per_device_train_batch_size=1,
        gradient_accumulation_steps=args.per_device_train_batch_size * args.gradient_accumulation_steps,
        gradient_checkpointing=bool(args.gradient_checkpointing), engine="fast",
        image_cache="on" if cached_images else "off", num_train_epochs=float(args.num_train_epochs))


CPU_SHARE = 0.5  # of the free system memory, on a CPU: the data, the loader's workers and the OS need the rest


def plan(model, processor, dataset, args, cached_images: bool, cap_gib: float | None = None) -> PackingPlan:
    """The packing for this model, data and device: see `plan_packing`. On a CPU the estimate (activations as
    on a GPU) is planned within half the free system memory."""
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps
    device = next(model.parameters()).device
    shape = describe_model(model.config, processor=processor)
    settings = measured_settings(model_settings(model, args, cached_images), dataset, processor, args.max_length,
                                 shape)
    if device.type == "cuda":
        budget, where = memory_budget(device, cap_gib)
    else:
        budget = psutil.virtual_memory().available / 2**30 * CPU_SHARE
        where = "the CPU (half the free system memory)"
        budget = min(budget, cap_gib) if cap_gib is not None else budget
    return plan_packing(shape, settings, effective, budget, where)
