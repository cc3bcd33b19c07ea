"""Random-weight replicas of the SmolVLM checkpoints, built from their published configs.

Speed and memory do not depend on weight values, so benchmarks and memory estimates run on replicas
instead of downloading the real checkpoints (DESIGN, "Published configs for replicas"):

    from vlmpref.models.replicas import save_replica
    save_replica("smolvlm-2.2b", "runs/replica-2.2b")      # config, random bf16 weights, processor

The processor has SmolVLM's image processing (tiles of the real size, the real image_seq_len) and chat
layout; its tokenizer is vlmpref's small BPE one, so text token counts differ somewhat from the real
tokenizer's, but the model's vocabulary (and so the LM-head cost) is the real one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, Idefics3Config, Idefics3Processor
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from vlmpref.errors import VlmprefError
from vlmpref.models.tiny import build_tokenizer

_SMOLVLM_SMALL_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                             patch_size=16, image_size=512)

REPLICAS = {
    "smolvlm-256m": dict(
        vision=_SMOLVLM_SMALL_VISION,
        text=dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, vocab_size=49280, max_position_embeddings=8192, rope_theta=100000.0),
        scale_factor=4, image_seq_len=64, longest_edge=2048, tile=512),
    "smolvlm-500m": dict(
        vision=_SMOLVLM_SMALL_VISION,
        text=dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                  num_key_value_heads=5, vocab_size=49280, max_position_embeddings=8192, rope_theta=100000.0),
        scale_factor=4, image_seq_len=64, longest_edge=2048, tile=512),
    "smolvlm-2.2b": dict(
        vision=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                    patch_size=14, image_size=384),
        text=dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=49155, max_position_embeddings=16384, rope_theta=273768.0),
        scale_factor=3, image_seq_len=81, longest_edge=1536, tile=384),
}
# Names users may know the checkpoints by
ALIASES = {"HuggingFaceTB/SmolVLM-256M-Instruct": "smolvlm-256m", "HuggingFaceTB/SmolVLM-500M-Instruct": "smolvlm-500m",
           "HuggingFaceTB/SmolVLM-Instruct": "smolvlm-2.2b", "smolvlm-instruct": "smolvlm-2.2b"}


def replica_spec(name: str) -> dict:
    key = ALIASES.get(name, name).lower()
    if key not in REPLICAS:
        raise VlmprefError(f"Unknown replica '{name}'; choose from {', '.join(REPLICAS)}.")
    return REPLICAS[key]


def replica_processor(name: str, vocab_size: int = 4096) -> Idefics3Processor:
    spec = replica_spec(name)
    tokenizer = build_tokenizer(vocab_size)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": spec["longest_edge"]},
        max_image_size={"longest_edge": spec["tile"]})
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=spec["image_seq_len"], chat_template=tokenizer.chat_template)


def replica_config(name: str, processor: Idefics3Processor | None = None) -> Idefics3Config:
    spec = replica_spec(name)
    tokenizer = (processor or replica_processor(name)).tokenizer
    text = dict(spec["text"])
    rope_theta = text.pop("rope_theta")
    text.update(model_type="llama", rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, rms_norm_eps=1e-5)
    return Idefics3Config(vision_config=spec["vision"], text_config=text, scale_factor=spec["scale_factor"],
                          image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                          pad_token_id=tokenizer.pad_token_id)


def build_replica(name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"):
    """(model with random weights, processor) for a replica, created directly on `device`."""
    processor = replica_processor(name)
    config = replica_config(name, processor)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    tokenizer = processor.tokenizer
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    return model, processor


def save_replica(name: str, output_dir: str | Path, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu") -> Path:
    """Write a replica with save_pretrained, so it loads (and quantizes) like any checkpoint."""
    model, processor = build_replica(name, dtype=dtype, device=device)
    out = Path(output_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
