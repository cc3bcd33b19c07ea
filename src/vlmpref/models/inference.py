"""Load a model for inference: a base model, optionally with a trained adapter, the way its run trained it.

    loaded = load_for_inference(adapter="runs/dpo/checkpoint-40")       # base and quantization from the run
    loaded = load_for_inference(model="runs/tiny")                      # a base model alone
    loaded.model, loaded.processor, loaded.base, loaded.quantization

`vlmpref generate`, `chat`, `eval`, `merge` and the web UI all load through here, so `--adapter` means the same
everywhere: what is not given (`--model`, `--quantization`) comes from the run that made the adapter (its
`vlmpref_config.yaml`, in the adapter folder or the run folder above a checkpoint), and the processor is the one
the run saved (its image size included), else the base model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vlmpref.errors import VlmprefError
from vlmpref.runs import adapter_base, check_adapter_folder, run_config

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


@dataclass
class InferenceSettings:
    """What to load: the base model, the adapter (or None) and how the base is quantized."""

    base: str
    adapter: str | None
    quantization: str


@dataclass
class LoadedModel:
    model: object
    processor: object
    base: str
    adapter: str | None
    quantization: str


def inference_settings(model: str | None = None, adapter: str | None = None,
                       quantization: str | None = None) -> InferenceSettings:
    """Fill what is not given from the adapter's run: its base model and its quantization (else none)."""
    if adapter:
        check_adapter_folder(adapter)
    base = model or (adapter_base(adapter) if adapter else None)
    if not base:
        if adapter:
            raise VlmprefError(f"Adapter {adapter} does not say which base model it was trained on; pass --model.")
        raise VlmprefError("No model given; pass --model with a Hub id or a local folder, or --adapter with a folder "
                           "written by vlmpref train.")
    quantization = quantization or (run_config(adapter).get("quantization") if adapter else None) or "none"
    return InferenceSettings(base=str(base), adapter=str(adapter) if adapter else None, quantization=quantization)


def load_for_inference(model: str | None = None, adapter: str | None = None, quantization: str | None = None, *,
                       trust_remote_code: bool = False, allow_pickle: bool = False, device=None, dtype=None,
                       merge: bool = False) -> LoadedModel:
    """Load the base (quantized as its run trained it) and attach the adapter; see the module docstring.

    With `merge=True` the adapter is folded into the base on the CPU in float32: a quantized base is loaded
    quantized as in training and dequantized first, so the merged weights are the ones the adapter was trained
    against, plus the adapter (see `vlmpref merge`).
    """
    import torch

    from vlmpref.models.adapters import attach_adapter
    from vlmpref.models.loading import load_model

    settings = inference_settings(model, adapter, quantization)
    if merge:
        device = "cpu"
        dtype = torch.bfloat16 if settings.quantization != "none" else torch.float32
    loaded = load_model(settings.base, quantization=settings.quantization, dtype=dtype, device=device,
                        trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    if merge and settings.quantization != "none":
        loaded = loaded.dequantize(dtype=torch.float32)
    if merge:
        loaded = loaded.to(torch.float32)  # DoRA's norm and the sum rounded once, when the caller casts
    if settings.adapter:
        loaded = attach_adapter(loaded, settings.adapter)
        if merge:
            loaded = loaded.merge_and_unload()
    processor = load_run_processor(settings.adapter, settings.base, trust_remote_code)
    return LoadedModel(model=loaded, processor=processor, base=settings.base, adapter=settings.adapter,
                       quantization=settings.quantization)


def load_run_processor(adapter: str | None, base: str, trust_remote_code: bool = False):
    """The processor `vlmpref train` saved beside the adapter (or in its run folder), else the base model's."""
    from vlmpref.models.loading import load_processor, prepare_processor

    if adapter:
        folder = Path(adapter).expanduser()
        for place in (folder, folder.parent):
            if any((place / name).is_file() for name in PROCESSOR_FILES):
                from transformers import AutoProcessor

                return prepare_processor(AutoProcessor.from_pretrained(str(place), trust_remote_code=trust_remote_code),
                                         str(place))
    return load_processor(base, trust_remote_code=trust_remote_code)
