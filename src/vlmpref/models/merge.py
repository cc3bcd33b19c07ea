"""`vlmpref merge`: fold a trained adapter into its base and write a plain transformers checkpoint.

    vlmpref merge --adapter runs/dpo --output-dir runs/dpo-merged
    vlmpref merge --adapter runs/dpo/checkpoint-40 --model HuggingFaceTB/SmolVLM-Instruct --output-dir runs/merged

The result (safetensors weights, config, generation config and processor) loads with
`AutoModelForImageTextToText.from_pretrained` and `AutoProcessor.from_pretrained`, without PEFT or
bitsandbytes, and answers like base + adapter.

An adapter trained over a 4-bit (or 8-bit) base learned a correction to the *quantized* weights. So the base
is loaded quantized exactly as in training and dequantized before merging: the merged weights are then
dequantized base + adapter, the function training optimized, rather than the original weights + adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import yaml

from vlmpref.config import Quantization
from vlmpref.errors import VlmprefError

Dtype = Literal["bfloat16", "float16", "float32"]


@dataclass
class MergeConfig:
    """Options of `vlmpref merge`."""

    adapter: str = field(default="", metadata={
        "help": "Adapter folder: the output of `vlmpref train` or a checkpoint folder inside it."})
    output_dir: str = field(default="", metadata={"help": "Folder for the merged checkpoint and its processor."})
    model: Optional[str] = field(default=None, metadata={
        "help": "Base model; auto reads it from the adapter (base_model_name_or_path)."})
    base_quantization: Optional[Quantization] = field(default=None, metadata={
        "help": "How the base was loaded in training; auto reads the run's vlmpref_config.yaml (none if absent). "
                "A quantized base is loaded the same way, then dequantized before merging."})
    dtype: Dtype = field(default="bfloat16", metadata={"help": "Dtype of the merged weights."})
    config: Optional[str] = field(default=None, metadata={"help": "YAML file with these options; flags override it."})
    overwrite: bool = field(default=False, metadata={"help": "Allow writing into a non-empty --output-dir."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code to run."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights, which can run code."})

    def __post_init__(self):
        if not self.adapter:
            raise VlmprefError("No adapter given; pass --adapter with the output folder of `vlmpref train`.")
        if not self.output_dir:
            raise VlmprefError("No output folder given; pass --output-dir for the merged checkpoint.")


def _adapter_settings(adapter: Path) -> tuple[str | None, str | None]:
    """(base model, base quantization) recorded by PEFT and by `vlmpref train` (in the run or its parent)."""
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise VlmprefError(f"{adapter} holds no adapter_config.json; point --adapter at the output folder of "
                           "`vlmpref train` (or a checkpoint folder inside it).")
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    quantization = None
    for folder in (adapter, adapter.parent):
        run_config = folder / "vlmpref_config.yaml"
        if run_config.is_file():
            quantization = (yaml.safe_load(run_config.read_text()) or {}).get("quantization")
            break
    return base, quantization


def merge_adapter(cfg: MergeConfig) -> Path:
    """Merge `cfg.adapter` into its base and save a standard checkpoint with its processor to `cfg.output_dir`."""
    from vlmpref.models.adapters import attach_adapter
    from vlmpref.models.loading import load_model

    adapter = Path(cfg.adapter).expanduser()
    if not adapter.is_dir():
        raise VlmprefError(f"Adapter folder {cfg.adapter} does not exist; check the path given to --adapter.")
    recorded_base, recorded_quantization = _adapter_settings(adapter)
    base = cfg.model or recorded_base
    if not base:
        raise VlmprefError(f"{adapter}/adapter_config.json does not name its base model; pass --model.")
    quantization = cfg.base_quantization or recorded_quantization or "none"
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise VlmprefError(f"Output folder {out} is not empty; choose another --output-dir or pass --overwrite.")
    dtype = getattr(torch, cfg.dtype)

    # Merge in fp32 so that DoRA's norm and the sum are not rounded twice; cast once when saving.
    model = load_model(base, quantization=quantization, dtype=torch.bfloat16 if quantization != "none" else torch.float32,
                       device="cpu", trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    if quantization != "none":
        model = model.dequantize(dtype=torch.float32)
    model = model.to(torch.float32)
    model = attach_adapter(model, str(adapter)).merge_and_unload()
    model = model.to(dtype)
    _clear_quantization(model)

    processor = _processor(adapter, base, cfg.trust_remote_code)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "vlmpref_merge.json").write_text(json.dumps(
        {"base": base, "adapter": str(adapter), "base_quantization": quantization, "dtype": cfg.dtype}, indent=2))
    return out


def _processor(adapter: Path, base: str, trust_remote_code: bool):
    """The processor `vlmpref train` saved beside the adapter (its image size included), else the base's."""
    from transformers import AutoProcessor

    from vlmpref.models.loading import load_processor

    for folder in (adapter, adapter.parent):
        if (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file():
            return AutoProcessor.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    return load_processor(base, trust_remote_code=trust_remote_code)


def _clear_quantization(model) -> None:
    """A dequantized model must not claim to be quantized, or from_pretrained would try to load it as such."""
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            try:
                delattr(model, attr)
            except AttributeError:
                pass
    model.is_quantized = False
