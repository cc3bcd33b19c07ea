"""Tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Gemma 3 and InternVL models with their real processor classes.

    vlmpref tiny-model --output-dir runs/tiny-qwen2vl --architecture qwen2_vl
    vlmpref tiny-model --output-dir runs/tiny-gemma3 --architecture gemma3

Each family keeps what makes it different at a size that runs in seconds on a CPU: Qwen's dynamic resolution
(patches per image follow the image size) and 3-D rotary positions (and Qwen3-VL's deepstack features),
Gemma 3's pooled SigLIP tokens, bidirectional attention over image tokens and sliding-window layers, and
InternVL's tiles. The tokenizer is vlmpref's small byte-level BPE one with each family's special tokens, and
the chat template is the family's published one (sources beside each template), so prompts render as they do
for the real checkpoints. Qwen and InternVL processors hold a video processor, which needs torchvision.
"""

from __future__ import annotations

from transformers import (
    Gemma3Config,
    Gemma3Processor,
    InternVLConfig,
    InternVLProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLProcessor,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlmpref.errors import VlmprefError

# ---- chat templates, as published with the checkpoints

# Qwen2-VL-7B-Instruct's chat_template.json (Qwen2.5-VL ships the same one): a default system turn, then
# <|vision_start|><|image_pad|><|vision_end|> for each image part
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)

# Qwen3-VL-2B-Instruct's layout: no default system turn, the same vision markup (rendered by a macro), answers
# as plain text; the tool-call and reasoning branches of the published template are left out
QWEN3_VL_TEMPLATE = (
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- macro render_content(content, do_vision_count) %}{%- if content is string %}{{- content }}{%- else %}"
    "{%- for item in content %}{%- if 'image' in item or 'image_url' in item or item.type == 'image' %}"
    "{%- if do_vision_count %}{%- set image_count.value = image_count.value + 1 %}{%- endif %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'video' in item or item.type == 'video' %}{%- if do_vision_count %}"
    "{%- set video_count.value = video_count.value + 1 %}{%- endif %}{%- if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif -%}<|vision_start|><|video_pad|><|vision_end|>{%- elif 'text' in item %}"
    "{{- item.text }}{%- endif %}{%- endfor %}{%- endif %}{%- endmacro %}"
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\n' + render_content(messages[0].content, false) "
    "+ '<|im_end|>\n' }}{%- endif %}"
    "{%- for message in messages %}{%- set content = render_content(message.content, True) %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# gemma-3-4b-it's tokenizer_config.json: <start_of_image> per image part, "model" for the assistant role
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- else -%}{{ raise_exception(\"Invalid content type\") }}"
    "{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}"
    "{%- endif -%}"
)

# InternVL3-*-hf (transformers' convert_internvl_weights_to_hf.py): ChatML with <IMG_CONTEXT> per image part
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "{{ '<IMG_CONTEXT>\n' }}{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)

QWEN_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>"]
GEMMA3_TOKENS = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                 "<image_soft_token>"]
INTERNVL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]


def _torchvision_needed(family: str) -> None:
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise VlmprefError(f"The {family} processor needs torchvision (its video processor uses it); install it with "
                           "`pip install torchvision==0.28.0` (the version that pairs with torch 2.13).")


# ---- processors: the family's classes at given image settings (tiny models and replicas share them)

QWEN_PROCESSORS = {"qwen2_vl": ("Qwen2-VL", Qwen2VLProcessor, QWEN2_VL_TEMPLATE),
                   "qwen2_5_vl": ("Qwen2.5-VL", Qwen2_5_VLProcessor, QWEN2_VL_TEMPLATE),
                   "qwen3_vl": ("Qwen3-VL", Qwen3VLProcessor, QWEN3_VL_TEMPLATE)}


def family_tokenizer(model_type: str, vocab_size: int = 1024):
    """vlmpref's small BPE tokenizer with the family's special tokens and chat template."""
    from vlmpref.models.tiny import train_tokenizer

    if model_type in QWEN_PROCESSORS:
        return train_tokenizer(vocab_size, QWEN_TOKENS, QWEN_PROCESSORS[model_type][2], eos="<|im_end|>",
                               pad="<|endoftext|>")
    if model_type == "gemma3":
        return train_tokenizer(vocab_size, GEMMA3_TOKENS, GEMMA3_TEMPLATE, bos="<bos>", eos="<end_of_turn>",
                               pad="<pad>", extra_special_tokens={"boi_token": "<start_of_image>",
                                                                  "eoi_token": "<end_of_image>",
                                                                  "image_token": "<image_soft_token>"})
    return train_tokenizer(vocab_size, INTERNVL_TOKENS, INTERNVL_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>",
                           extra_special_tokens={"start_image_token": "<img>", "end_image_token": "</img>",
                                                 "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})


def qwen_processor(model_type: str, patch_size: int, min_pixels: int, max_pixels: int, vocab_size: int = 1024):
    """Dynamic resolution: an image keeps its aspect within [min_pixels, max_pixels] and becomes (H / patch) x
    (W / patch) patches, merged 2 x 2 into language-model tokens."""
    name, processor_class, template = QWEN_PROCESSORS[model_type]
    _torchvision_needed(name)
    if model_type == "qwen3_vl":
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor as Video
    else:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor as Video
    tokenizer = family_tokenizer(model_type, vocab_size)
    image = Qwen2VLImageProcessorPil(patch_size=patch_size, merge_size=2, temporal_patch_size=2,
                                     min_pixels=min_pixels, max_pixels=max_pixels)
    video = Video(patch_size=patch_size, merge_size=2, temporal_patch_size=2)
    return processor_class(image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=template)


def qwen_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def gemma3_processor(image_size: int, tokens_per_image: int, vocab_size: int = 1024) -> Gemma3Processor:
    tokenizer = family_tokenizer("gemma3", vocab_size)
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_TEMPLATE,
                           image_seq_length=tokens_per_image)


def gemma3_token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(boi_token_index=ids("<start_of_image>"), eoi_token_index=ids("<end_of_image>"),
                image_token_index=ids("<image_soft_token>"))


def internvl_processor(tile: int, max_tiles: int, tokens_per_tile: int, vocab_size: int = 1024) -> InternVLProcessor:
    """Tiles of `tile` pixels in the grid closest to the image's aspect, up to `max_tiles`, plus a thumbnail."""
    _torchvision_needed("InternVL")
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    tokenizer = family_tokenizer("internvl", vocab_size)
    image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_tiles)
    video = InternVLVideoProcessor(size={"height": tile, "width": tile})
    return InternVLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video,
                             image_seq_length=tokens_per_tile, chat_template=INTERNVL_TEMPLATE)


# ---- tiny models


def _text(cfg, tokenizer, **extra) -> dict:
    return dict(hidden_size=cfg.text_hidden_size, intermediate_size=2 * cfg.text_hidden_size,
                num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                num_key_value_heads=cfg.text_kv_heads, vocab_size=len(tokenizer), max_position_embeddings=2048,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, **extra)


def _mrope_section(cfg) -> list[int]:
    """Rotary frequencies per axis (temporal, height, width): they add up to half a head, as in the real configs
    ([16, 24, 24] for 128-wide heads)."""
    half = cfg.text_hidden_size // cfg.text_heads // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


def _tiny_qwen_processor(cfg, model_type: str):
    factor = cfg.patch_size * 2  # an image at most image_size^2 pixels, at least one merged token
    return qwen_processor(model_type, cfg.patch_size, factor * factor, cfg.image_size * cfg.image_size, cfg.vocab_size)


def qwen2_vl(cfg):
    processor = _tiny_qwen_processor(cfg, "qwen2_vl")
    tokenizer = processor.tokenizer
    config = Qwen2VLConfig(
        vision_config=dict(depth=cfg.vision_layers, embed_dim=cfg.vision_hidden_size, hidden_size=cfg.text_hidden_size,
                           mlp_ratio=2, num_heads=2, patch_size=cfg.patch_size, spatial_merge_size=2,
                           temporal_patch_size=2),
        text_config=_text(cfg, tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                          "mrope_section": _mrope_section(cfg)}),
        **qwen_token_ids(tokenizer))
    return config, processor


def qwen2_5_vl(cfg):
    processor = _tiny_qwen_processor(cfg, "qwen2_5_vl")
    tokenizer = processor.tokenizer
    # window attention in the vision tower, with full attention in the last block (as 3B's 7/15/23/31)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=cfg.vision_layers, hidden_size=cfg.vision_hidden_size,
                           intermediate_size=2 * cfg.vision_hidden_size, num_heads=2,
                           out_hidden_size=cfg.text_hidden_size, patch_size=cfg.patch_size, spatial_merge_size=2,
                           temporal_patch_size=2, window_size=2 * 2 * cfg.patch_size,
                           fullatt_block_indexes=[cfg.vision_layers - 1]),
        text_config=_text(cfg, tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                          "mrope_section": _mrope_section(cfg)}),
        **qwen_token_ids(tokenizer))
    return config, processor


def qwen3_vl(cfg):
    processor = _tiny_qwen_processor(cfg, "qwen3_vl")
    tokenizer = processor.tokenizer
    side = cfg.image_size // cfg.patch_size
    # deepstack: features of the first vision blocks are added to the first decoder layers' image positions
    config = Qwen3VLConfig(
        vision_config=dict(depth=cfg.vision_layers, hidden_size=cfg.vision_hidden_size,
                           intermediate_size=2 * cfg.vision_hidden_size, num_heads=2,
                           out_hidden_size=cfg.text_hidden_size, patch_size=cfg.patch_size, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=side * side,
                           deepstack_visual_indexes=list(range(min(2, cfg.vision_layers)))),
        text_config=_text(cfg, tokenizer, head_dim=cfg.text_hidden_size // cfg.text_heads,
                          rope_parameters={"rope_type": "default", "rope_theta": 5e6, "mrope_interleaved": True,
                                           "mrope_section": _mrope_section(cfg)}),
        **qwen_token_ids(tokenizer))
    return config, processor


def gemma3(cfg):
    patches_per_side = cfg.image_size // cfg.patch_size
    tokens_per_image = (patches_per_side // 2) ** 2  # average-pooled 2 x 2 (4 x 4 on the real 896 px, 14 px patches)
    processor = gemma3_processor(cfg.image_size, tokens_per_image, cfg.vocab_size)
    tokenizer = processor.tokenizer
    head_dim = cfg.text_hidden_size // cfg.text_heads
    # sliding-window and global layers alternate (5 : 1 on the real models); a window shorter than a prompt, so that
    # it cuts into the image tokens
    layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(cfg.text_layers)]
    config = Gemma3Config(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=cfg.vision_hidden_size,
                           intermediate_size=2 * cfg.vision_hidden_size, num_hidden_layers=cfg.vision_layers,
                           num_attention_heads=2, image_size=cfg.image_size, patch_size=cfg.patch_size,
                           vision_use_head=False),
        text_config=_text(cfg, tokenizer, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=16,
                          layer_types=layer_types,
                          rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                           "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}),
        mm_tokens_per_image=tokens_per_image, **gemma3_token_ids(tokenizer))
    return config, processor


def internvl(cfg):
    # tiles of half the image side: a 64 x 64 image becomes 2 x 2 tiles plus a thumbnail (448 px tiles, up to 12,
    # on InternVL3); each tile is (tile / patch)^2 patches, pixel-shuffled by 0.5 into a quarter as many tokens
    tile = cfg.image_size // 2
    tokens_per_tile = (tile // cfg.patch_size) ** 2 // 4
    processor = internvl_processor(tile, 4, tokens_per_tile, cfg.vocab_size)
    tokenizer = processor.tokenizer
    config = InternVLConfig(
        vision_config=dict(hidden_size=cfg.vision_hidden_size, intermediate_size=2 * cfg.vision_hidden_size,
                           num_hidden_layers=cfg.vision_layers, num_attention_heads=2, image_size=[tile, tile],
                           patch_size=[cfg.patch_size, cfg.patch_size]),
        text_config=_text(cfg, tokenizer, model_type="qwen2"),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=tokens_per_tile,
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default")
    return config, processor


BUILDERS = {"qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "qwen3_vl": qwen3_vl, "gemma3": gemma3,
            "internvl": internvl}
