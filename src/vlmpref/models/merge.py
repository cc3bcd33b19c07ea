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

from vlmpref.config import Quantization
from vlmpref.errors import VlmprefError

Dtype = Literal["bfloat16", "float16", "float32"]


@dataclass
class MergeConfig:
    """Options of `vlmpref merge`."""

    adapter: str = field(default="", metadata={"path": "in", 
        "help": "Adapter folder: the output of `vlmpref train` or a checkpoint folder inside it."})
    output_dir: str = field(default="", metadata={"path": "out", "help": "Folder for the merged checkpoint and its processor."})
    model: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Base model; auto reads it from the adapter (base_model_name_or_path)."})
    base_quantization: Optional[Quantization] = field(default=None, metadata={
        "help": "How the base was loaded in training; auto reads the run's vlmpref_config.yaml (none if absent). "
                "A quantized base is loaded the same way, then dequantized before merging."})
    dtype: Dtype = field(default="bfloat16", metadata={"help": "Dtype of the merged weights."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    overwrite: bool = field(default=False, metadata={"help": "Allow writing into a non-empty --output-dir."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code to run."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights, which can run code."})

    def __post_init__(self):
        if not self.adapter:
            raise VlmprefError("No adapter given; pass --adapter with the output folder of `vlmpref train`.")
        if not self.output_dir:
            raise VlmprefError("No output folder given; pass --output-dir for the merged checkpoint.")


def merge_adapter(cfg: MergeConfig) -> Path:
    """Merge `cfg.adapter` into its base and save a standard checkpoint with its processor to `cfg.output_dir`."""
    import torch

    from vlmpref.models.inference import inference_settings, load_for_inference
    from vlmpref.runs import prepare_output_dir

    settings = inference_settings(cfg.model, cfg.adapter, cfg.base_quantization)  # one-line errors before loading
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise VlmprefError(f"Output folder {out} is not empty; choose another --output-dir or pass --overwrite.")
    loaded = load_for_inference(settings.base, settings.adapter, settings.quantization, merge=True,
                                trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle)
    model = loaded.model.to(getattr(torch, cfg.dtype))  # cast once, after merging in float32
    _clear_quantization(model)

    out = prepare_output_dir(out, overwrite=True)
    model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    (out / "vlmpref_merge.json").write_text(json.dumps(
        {"base": loaded.base, "adapter": str(Path(cfg.adapter).expanduser().resolve()),
         "base_quantization": loaded.quantization, "dtype": cfg.dtype}, indent=2))
    return out


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
