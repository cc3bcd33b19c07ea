"""Load any image-text-to-text checkpoint (Hub id or local folder), optionally quantized with bitsandbytes.

    from vlmpref.models import load_model, load_processor
    processor = load_processor("HuggingFaceTB/SmolVLM-Instruct")
    model = load_model("HuggingFaceTB/SmolVLM-Instruct", quantization="4bit")
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vlmpref.config import Quantization
from vlmpref.errors import VlmprefError

if TYPE_CHECKING:  # torch and transformers load when a model does, so `--help` stays quick
    import torch
    from transformers import BitsAndBytesConfig

ALLOC_CONF = "PYTORCH_CUDA_ALLOC_CONF"


def prefer_expandable_segments() -> str | None:
    """Ask PyTorch's CUDA allocator for expandable segments, unless the user configured the allocator.

    With fixed-size segments, sequences of changing length fragment the cache and the peak grows with the run:
    the 2.2B replica at one pair per forward reached 5.10 GiB after 64 pairs, 4.34 GiB with expandable segments
    at the same speed (benchmarks/RESULTS.md, run 6). The allocator reads the setting when CUDA starts, so this
    must run first. Returns the setting in effect.
    """
    import torch

    if ALLOC_CONF not in os.environ and "PYTORCH_ALLOC_CONF" not in os.environ and not torch.cuda.is_initialized():
        os.environ[ALLOC_CONF] = "expandable_segments:True"
    return os.environ.get(ALLOC_CONF, os.environ.get("PYTORCH_ALLOC_CONF"))


def default_device() -> torch.device:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def supports_bf16(device: torch.device) -> bool:
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def default_attention(device: torch.device) -> str:
    """FlashAttention 2 when installed on a GPU (the guide's choice), else PyTorch's sdpa."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def quantization_config(quantization: Quantization, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """The guide's 4-bit: NF4 with double quantization; 8-bit is LLM.int8()."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def _check_source(model_id: str) -> None:
    path = Path(model_id).expanduser()
    looks_local = model_id.startswith((".", "/", "~")) or model_id.count("/") > 1
    if looks_local and not path.exists():
        raise VlmprefError(f"Model path {model_id} does not exist; check the path given to --model.")
    if path.is_dir() and not (path / "config.json").is_file():
        raise VlmprefError(f"Folder {model_id} holds no config.json, so it is not a saved model; "
                           "point --model at the folder written by save_pretrained (or `vlmpref tiny-model`).")


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _pickle_only_error(model_id: str) -> VlmprefError:
    return VlmprefError(f"Model {model_id} has only pickle (.bin) weights, which can run code when loaded; "
                        "pass --allow-pickle if you trust its source.")


def _check_weights(model_id: str, allow_pickle: bool) -> None:
    """A local folder without safetensors weights is refused before transformers is asked to load it."""
    path = Path(model_id).expanduser()
    if allow_pickle or not path.is_dir():
        return
    files = [p.name for p in path.iterdir() if p.is_file()]
    if not any(f.endswith(".safetensors") for f in files) and any(f.endswith(PICKLE_SUFFIXES) for f in files):
        raise _pickle_only_error(model_id)


def _explain_oserror(model_id: str, exc: OSError) -> VlmprefError:
    text = str(exc)
    if "safetensors" in text.lower() and (".bin" in text or "no file named" in text.lower()):
        return _pickle_only_error(model_id)
    if "not a valid model identifier" in text or "Repository Not Found" in text or "404" in text:
        return VlmprefError(f"Model '{model_id}' is neither a local folder nor a model on the Hugging Face Hub; "
                            "check the name, or log in with `hf auth login` if it is private.")
    if "connect" in text.lower() or "offline" in text.lower() or "resolve" in text.lower():
        return VlmprefError(f"Model '{model_id}' is not a local folder and the Hugging Face Hub cannot be reached; "
                            "check the path, or connect to the internet to download it.")
    return VlmprefError(f"Model '{model_id}' could not be loaded: {text.splitlines()[0]}")


@contextlib.contextmanager
def hub_errors(model_id: str):
    """Turn what `from_pretrained` raises for a user's mistake (no such model, no network, code that needs
    trust_remote_code, not a VLM) into one-line VlmprefErrors."""
    try:
        yield
    except OSError as exc:
        raise _explain_oserror(model_id, exc) from None
    except ValueError as exc:
        text = str(exc)
        if "trust_remote_code" in text:
            raise VlmprefError(f"Model '{model_id}' needs its own code to load; pass --trust-remote-code only if "
                               "you trust its source.") from None
        if "Unrecognized configuration class" in text or "does not support" in text:
            raise VlmprefError(f"Model '{model_id}' is not an image-text-to-text model that transformers can load "
                               "with AutoModelForImageTextToText.") from None
        raise


def load_processor(model_id: str, trust_remote_code: bool = False):
    """The model's processor (tokenizer + image processor), with left padding for batched generation."""
    from transformers import AutoProcessor

    _check_source(model_id)
    with hub_errors(model_id):
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=trust_remote_code)
    return prepare_processor(processor, model_id)


def prepare_processor(processor, model_id: str):
    """Check that `processor` has a tokenizer, give it a pad token and left padding (batched generation)."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        raise VlmprefError(f"'{model_id}' has no tokenizer in its processor, so it is not an image-text model.")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return processor


def load_model(model_id: str, quantization: Quantization = "none", dtype: torch.dtype | None = None,
               attn_implementation: str | None = None, device: torch.device | str | None = None,
               trust_remote_code: bool = False, allow_pickle: bool = False):
    """Load an `AutoModelForImageTextToText` checkpoint on `device` (CUDA when present, else CPU).

    `dtype` defaults to bf16 on GPUs that support it and float32 on the CPU; quantized models compute in bf16
    on the GPU (the guide's setting). bitsandbytes 4-bit also runs on the CPU.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    _check_source(model_id)
    _check_weights(model_id, allow_pickle)
    device = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dtype = torch.bfloat16 if supports_bf16(device) else torch.float32
    if quantization not in ("none", "8bit", "4bit"):
        raise VlmprefError(f"Quantization '{quantization}' is not one of none, 8bit, 4bit.")
    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise VlmprefError(f"--quantization {quantization} needs bitsandbytes; install it with "
                           "`pip install bitsandbytes==0.50.2`, or use --quantization none.")
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation or default_attention(device),
                  trust_remote_code=trust_remote_code, use_safetensors=None if allow_pickle else True)
    qconfig = quantization_config(quantization, dtype if dtype != torch.float32 else torch.bfloat16)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    with hub_errors(model_id):
        model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs)
    if qconfig is None:
        model.to(device)
    elif device.type == "cpu":
        keep_cpu_4bit_layout(model)
    return model


def keep_cpu_4bit_layout(model) -> None:
    """Stop bitsandbytes from repacking 4-bit weights on AVX512-bf16 CPUs at the first eval-mode forward.

    The repacked layout is only understood by bitsandbytes' own CPU matmul: PEFT's DoRA dequantizes the
    weight itself and gets garbage, and training after an evaluation fails in `matmul_4bit` (DESIGN,
    pitfalls). Keeping the standard layout costs some CPU inference speed and keeps both correct.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
