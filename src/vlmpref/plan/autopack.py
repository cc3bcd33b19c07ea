"""`pairs_per_forward="auto"`: as many pairs per forward as the memory budget holds.

`plan_packing` chooses for a model shape and settings (`vlmpref estimate` asks it per card); `plan` reads
them off the loaded model the fast engine trains (quantization, adapted modules, DoRA, the image cache, the
processor's tiling) and a sample of the data (largest image, longest prompt and answer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import psutil
import torch

from vlmpref.plan.estimate import RunSettings, estimate
from vlmpref.plan.gpus import generic_gpu
from vlmpref.plan.memory import measured_settings, memory_budget
from vlmpref.plan.shapes import ModelShape, describe_model


PACKING_MARGIN = 0.15  # the estimate's error band against measured peaks (benchmarks/ESTIMATE_VS_MEASURED.md)


@dataclass
class PackingPlan:
    """The fast engine's pairs per forward, chosen for a memory budget, and why."""

    pairs_per_forward: int
    budget_gib: float
    needed_gib: dict[int, float]  # estimated peak reserved GiB per candidate packing
    reason: str

    def as_dict(self) -> dict:
        return {"pairs_per_forward": self.pairs_per_forward, "budget_gib": self.budget_gib,
                "margin": PACKING_MARGIN, "estimated_gib": {str(k): round(v, 2) for k, v in self.needed_gib.items()},
                "reason": self.reason}


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def plan_packing(shape: ModelShape, settings: RunSettings, effective_batch: int, budget_gib: float,
                 where: str = "the GPU") -> PackingPlan:
    """The largest number of pairs per forward that divides `effective_batch` and whose estimated peak, plus
    PACKING_MARGIN, fits `budget_gib` of free memory on `where`."""
    candidates = divisors(effective_batch)
    needed = {d: estimate(shape, dataclasses.replace(settings, engine="fast", pairs_per_forward=d), generic_gpu(
        budget_gib)).memory.reserved_gib for d in candidates}
    fitting = [d for d in candidates if needed[d] * (1 + PACKING_MARGIN) <= budget_gib]
    chosen = max(fitting) if fitting else 1
    larger = [d for d in candidates if d > chosen]
    why = (f"estimated {needed[chosen]:.1f} GiB + {PACKING_MARGIN:.0%} margin fits the {budget_gib:.1f} GiB free on "
           f"{where}" if fitting else f"even 1 pair is estimated at {needed[1]:.1f} GiB of {budget_gib:.1f} GiB free "
           f"on {where}; trying it anyway")
    if fitting and larger:
        why += f"; {larger[0]} would need {needed[larger[0]]:.1f} GiB"
    return PackingPlan(chosen, budget_gib, needed, f"{chosen} pair(s) per forward (auto, out of "
                       f"{', '.join(map(str, candidates))}: {why})")


# ---- the loaded model


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
