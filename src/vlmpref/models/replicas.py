"""Random-weight replicas of small published checkpoints, built from their published configs.

Speed and memory do not depend on weight values, so benchmarks and memory estimates run on replicas
instead of downloading the real checkpoints (DESIGN, "Published configs for replicas"):

    from vlmpref.models.replicas import save_replica
    save_replica("smolvlm-2.2b", "runs/replica-2.2b")      # config, random bf16 weights, processor
    save_replica("qwen2.5-vl-3b", "runs/replica-qwen")     # also qwen3-vl-2b, gemma-3-4b-it, internvl3-2b

The processor has the family's image processing at the real settings (tiles, patches, pixel budgets, image
tokens) and chat template; its tokenizer is vlmpref's small BPE one, so text token counts differ somewhat from
the real tokenizer's, but the model's vocabulary (and so the LM-head cost) is the real one.

The SmolVLM numbers are DESIGN's table. The others are the `config.json` and `preprocessor_config.json`
published with Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen3-VL-2B-Instruct, google/gemma-3-4b-it and
OpenGVLab/InternVL3-2B-hf on the Hugging Face Hub (written down here, since nothing is downloaded).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForImageTextToText,
    Gemma3Config,
    Idefics3Config,
    Idefics3Processor,
    InternVLConfig,
    Qwen2_5_VLConfig,
    Qwen3VLConfig,
)
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

from vlmpref.errors import VlmprefError
from vlmpref.models import tiny_families
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
for _spec in REPLICAS.values():
    _spec["family"] = "idefics3"

# Other families: "config" is the published config (text_config / vision_config as in config.json, token ids
# left to the replica's tokenizer), "image" the published image processor settings
REPLICAS.update({
    "qwen2.5-vl-3b": dict(
        family="qwen2_5_vl", source="Qwen/Qwen2.5-VL-3B-Instruct",
        config=dict(
            text_config=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                             num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000,
                             rms_norm_eps=1e-6, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu"),
            tie_word_embeddings=True),
        image=dict(patch_size=14, merge_size=2, min_pixels=56 * 56, max_pixels=28 * 28 * 16384)),
    "qwen3-vl-2b": dict(
        family="qwen3_vl", source="Qwen/Qwen3-VL-2B-Instruct",
        config=dict(
            text_config=dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                             rms_norm_eps=1e-6, tie_word_embeddings=True,
                             rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
                                              "mrope_section": [24, 20, 20]}),
            vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                               patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                               num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17],
                               hidden_act="gelu_pytorch_tanh"),
            tie_word_embeddings=True),
        image=dict(patch_size=16, merge_size=2, min_pixels=65536, max_pixels=16777216)),
    "gemma-3-4b-it": dict(
        family="gemma3", source="google/gemma-3-4b-it",
        config=dict(
            text_config=dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                             num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                             vocab_size=262208, max_position_embeddings=131072, rms_norm_eps=1e-6,
                             # every 6th layer global (sliding_window_pattern 6)
                             layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                          for i in range(34)],
                             rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                                 "rope_theta": 1e6},
                                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
            vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                               num_hidden_layers=27, num_attention_heads=16, image_size=896, patch_size=14,
                               vision_use_head=False),
            mm_tokens_per_image=256, tie_word_embeddings=True),
        image=dict(size={"height": 896, "width": 896})),
    "internvl3-2b": dict(
        family="internvl", source="OpenGVLab/InternVL3-2B-hf",
        config=dict(
            text_config=dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                             num_attention_heads=12, num_key_value_heads=2, vocab_size=151674,
                             max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=False,
                             rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=[448, 448], patch_size=[14, 14], layer_scale_init_value=0.1),
            image_seq_length=256, downsample_ratio=0.5, vision_feature_layer=-1,
            vision_feature_select_strategy="default", tie_word_embeddings=False),
        image=dict(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1, max_patches=12)),
})
# Names users may know the checkpoints by
ALIASES = {"HuggingFaceTB/SmolVLM-256M-Instruct": "smolvlm-256m", "HuggingFaceTB/SmolVLM-500M-Instruct": "smolvlm-500m",
           "HuggingFaceTB/SmolVLM-Instruct": "smolvlm-2.2b", "smolvlm-instruct": "smolvlm-2.2b",
           **{spec["source"]: name for name, spec in REPLICAS.items() if "source" in spec}}


def replica_spec(name: str) -> dict:
    key = ALIASES.get(name, name).lower()
    if key not in REPLICAS:
        raise VlmprefError(f"Unknown replica '{name}'; choose from {', '.join(REPLICAS)}.")
    return REPLICAS[key]


def replica_image_settings(name: str) -> dict:
    """The replica's image processor settings, as `plan.shapes` reads them from a saved processor."""
    spec = replica_spec(name)
    if spec["family"] == "idefics3":
        return {"size": {"longest_edge": spec["longest_edge"]}, "max_image_size": {"longest_edge": spec["tile"]},
                "do_image_splitting": True}
    return dict(spec["image"])


def replica_processor(name: str, vocab_size: int = 4096):
    spec = replica_spec(name)
    family, image = spec["family"], spec.get("image", {})
    if family in tiny_families.QWEN_PROCESSORS:
        return tiny_families.qwen_processor(family, image["patch_size"], image["min_pixels"], image["max_pixels"],
                                            vocab_size)
    if family == "gemma3":
        return tiny_families.gemma3_processor(image["size"]["height"], spec["config"]["mm_tokens_per_image"],
                                              vocab_size)
    if family == "internvl":
        return tiny_families.internvl_processor(image["size"]["height"], image["max_patches"],
                                                spec["config"]["image_seq_length"], vocab_size)
    tokenizer = build_tokenizer(vocab_size)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": spec["longest_edge"]},
        max_image_size={"longest_edge": spec["tile"]})
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                             image_seq_len=spec["image_seq_len"], chat_template=tokenizer.chat_template)


_CONFIGS = {"qwen2_5_vl": Qwen2_5_VLConfig, "qwen3_vl": Qwen3VLConfig, "gemma3": Gemma3Config,
            "internvl": InternVLConfig}


def _family_config(spec: dict, tokenizer):
    """The published config, with special-token ids from the replica's tokenizer."""
    config = {key: dict(value) if isinstance(value, dict) else value for key, value in spec["config"].items()}
    config["text_config"].update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
    family = spec["family"]
    if family in tiny_families.QWEN_PROCESSORS:
        config.update(tiny_families.qwen_token_ids(tokenizer))
    elif family == "gemma3":
        config.update(tiny_families.gemma3_token_ids(tokenizer))
    else:
        config["image_token_id"] = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    return _CONFIGS[family](**config)


def replica_config(name: str, processor=None):
    spec = replica_spec(name)
    if spec["family"] != "idefics3":  # the tokenizer alone: reading a config needs no image processing (torchvision)
        tokenizer = processor.tokenizer if processor is not None else tiny_families.family_tokenizer(spec["family"])
        return _family_config(spec, tokenizer)
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
