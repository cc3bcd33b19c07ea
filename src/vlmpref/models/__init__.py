"""Stage 2 of the pipeline: load, quantize and adapt a vision-language model.

    from vlmpref.models import load_model, load_processor, lora_config
    model = load_model("HuggingFaceTB/SmolVLM-Instruct", quantization="4bit")
    peft_config = lora_config(model)                     # the guide's DoRA on q/k/v/o/gate/up/down
    loaded = load_for_inference(adapter="runs/dpo")      # base + adapter for inference, as the run trained it
"""

from vlmpref.models.adapters import GUIDE_TARGET_MODULES, attach_adapter, language_model_prefix, lora_config
from vlmpref.models.inference import load_for_inference
from vlmpref.models.loading import default_device, load_model, load_processor, quantization_config

__all__ = ["GUIDE_TARGET_MODULES", "attach_adapter", "default_device", "language_model_prefix", "load_for_inference",
           "load_model", "load_processor", "lora_config", "quantization_config"]
