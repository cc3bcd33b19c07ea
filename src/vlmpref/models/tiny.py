"""Tiny random vision-language models built from configs, never downloaded.

    vlmpref tiny-model --output-dir runs/tiny                       # Idefics3 (SmolVLM architecture)
    vlmpref tiny-model --output-dir runs/tiny-llava --architecture llava
    vlmpref tiny-model --output-dir runs/tiny-smolvlm2 --architecture smolvlm   # SmolVLM2's model class
    vlmpref tiny-model --output-dir runs/tiny-qwen2vl --architecture qwen2_vl   # also qwen2_5_vl, qwen3_vl, gemma3, internvl

Each model is saved with `save_pretrained` together with its processor (a small byte-level BPE tokenizer
with a SmolVLM-style chat template, or each family's own template and processor class, see tiny_families.py),
so tests and smoke runs load it through the ordinary `AutoProcessor` / `AutoModelForImageTextToText.from_pretrained`
path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from typing import TYPE_CHECKING

from vlmpref.errors import VlmprefError

if TYPE_CHECKING:  # transformers, tokenizers and torch load when a model is built, so `--help` stays quick
    from transformers import PreTrainedTokenizerFast

Architecture = Literal["idefics3", "smolvlm", "llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl"]

PAD, BOS, EOS = "<|endoftext|>", "<|im_start|>", "<end_of_utterance>"
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]

# SmolVLM's conversation layout ("User:<image>question<end_of_utterance>\nAssistant: answer"), accepting
# content as a string or as a list of typed parts. `image_markup` is what one image part renders to.
_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}: {{ message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}:{% else %}: {% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}IMAGE_MARKUP{% endif %}{% endfor %}{% endif %}"
    "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Options of `vlmpref tiny-model`."""

    output_dir: str = field(metadata={"path": "out", "help": "Folder to write the model, processor and tokenizer to."})
    architecture: Architecture = field(default="idefics3", metadata={
        "help": "Model family: idefics3 (SmolVLM), smolvlm (SmolVLM2's model class), llava, qwen2_vl, qwen2_5_vl, "
                "qwen3_vl, gemma3 or internvl (the last five with their real processor classes and chat templates)."})
    image_size: int = field(default=64, metadata={"help": "Square input resolution of the vision tower, pixels."})
    patch_size: int = field(default=8, metadata={"help": "Vision patch size, pixels."})
    vision_hidden_size: int = field(default=64, metadata={"help": "Vision tower width."})
    vision_layers: int = field(default=2, metadata={"help": "Vision tower depth."})
    text_hidden_size: int = field(default=128, metadata={"help": "Language model width."})
    text_layers: int = field(default=4, metadata={"help": "Language model depth."})
    text_heads: int = field(default=4, metadata={"help": "Language model attention heads."})
    text_kv_heads: int = field(default=2, metadata={"help": "Language model key/value heads (grouped-query attention)."})
    vocab_size: int = field(default=1024, metadata={"help": "Size of the byte-level BPE vocabulary to train."})
    seed: int = field(default=0, metadata={"help": "Seed of the random weights."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing, non-empty output folder."})


def train_tokenizer(vocab_size: int, special_tokens: list[str], chat_template: str, eos: str, pad: str,
                    bos: str | None = None, extra_special_tokens: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on the synthetic world's text: any string tokenizes, common words are one
    token, and each of `special_tokens` is one token (the first ones get the lowest ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from vlmpref.data.synthetic import text_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text_corpus(), trainer)
    named = {bos, eos, pad}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                        model_max_length=4096, padding_side="left", chat_template=chat_template,
                                        extra_special_tokens=extra_special_tokens or {})
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in special_tokens if t not in named]})
    return tokenizer


def build_tokenizer(vocab_size: int = 1024, image_markup: str = "<image>") -> PreTrainedTokenizerFast:
    """vlmpref's SmolVLM-style tokenizer (Idefics3's special tokens, SmolVLM's conversation layout)."""
    return train_tokenizer(vocab_size, [PAD, BOS, EOS] + IDEFICS3_TOKENS,
                           _CHAT_TEMPLATE.replace("IMAGE_MARKUP", image_markup), bos=BOS, eos=EOS, pad=PAD)


def _text_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast, model_type: str) -> dict:
    return dict(model_type=model_type, hidden_size=cfg.text_hidden_size, intermediate_size=2 * cfg.text_hidden_size,
                num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                num_key_value_heads=cfg.text_kv_heads, vocab_size=len(tokenizer), max_position_embeddings=2048,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def _idefics3(cfg: TinyModelConfig):
    from transformers import Idefics3Config, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tokenizer = build_tokenizer(cfg.vocab_size)
    scale_factor = 2
    # Idefics3 requires image_seq_len == (image_size / patch)^2 / scale_factor^2 (DESIGN, pitfalls)
    image_seq_len = (cfg.image_size // cfg.patch_size) ** 2 // scale_factor**2
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": cfg.image_size},
        max_image_size={"longest_edge": cfg.image_size})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=image_seq_len, chat_template=tokenizer.chat_template)
    config = Idefics3Config(
        vision_config=dict(hidden_size=cfg.vision_hidden_size, intermediate_size=2 * cfg.vision_hidden_size,
                           num_hidden_layers=cfg.vision_layers, num_attention_heads=2,
                           image_size=cfg.image_size, patch_size=cfg.patch_size),
        text_config=_text_config(cfg, tokenizer, "llama"), scale_factor=scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id)
    return config, processor


def _llava(cfg: TinyModelConfig):
    from transformers import LlavaConfig, LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    tokenizer = build_tokenizer(cfg.vocab_size)
    image_processor = LlavaImageProcessorPil(
        size={"height": cfg.image_size, "width": cfg.image_size}, crop_size={"height": cfg.image_size,
                                                                            "width": cfg.image_size},
        do_pad=False, do_center_crop=False)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=cfg.patch_size,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=tokenizer.chat_template)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=cfg.vision_hidden_size,
                           intermediate_size=2 * cfg.vision_hidden_size, num_hidden_layers=cfg.vision_layers,
                           num_attention_heads=2, image_size=cfg.image_size, patch_size=cfg.patch_size,
                           projection_dim=cfg.vision_hidden_size),
        text_config=_text_config(cfg, tokenizer, "llama"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default", projector_hidden_act="gelu")
    return config, processor


def _smolvlm(cfg: TinyModelConfig):
    # SmolVLM2's model class is Idefics3's under another name; the Idefics3 processor feeds it the same inputs
    # (SmolVLM2's own processor also handles video, which needs torchvision)
    from transformers import SmolVLMConfig

    config, processor = _idefics3(cfg)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "architectures",
                                                                      "transformers_version")}
    return SmolVLMConfig(**fields), processor


_BUILDERS = {"idefics3": _idefics3, "smolvlm": _smolvlm, "llava": _llava}


def _builder(architecture: str):
    if architecture in _BUILDERS:
        return _BUILDERS[architecture]
    from vlmpref.models import tiny_families

    if architecture not in tiny_families.BUILDERS:
        raise VlmprefError(f"Unknown architecture '{architecture}'; choose from "
                           f"{', '.join([*_BUILDERS, *tiny_families.BUILDERS])}.")
    return tiny_families.BUILDERS[architecture]


def build_tiny_model(cfg: TinyModelConfig):
    """Return a random tiny (model, processor) pair of the chosen architecture, in float32."""
    import torch
    from transformers import AutoModelForImageTextToText

    config, processor = _builder(cfg.architecture)(cfg)
    torch.manual_seed(cfg.seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # Gemma 3 starts its image projection at zero: every image feature would be zero
        for name, param in model.named_parameters():
            if name.endswith("mm_input_projection_weight"):
                param.normal_(std=param.shape[0] ** -0.5)
    tokenizer = processor.tokenizer
    # Without these, generate() realigns eos/pad/bos with a warning (DESIGN, pitfalls)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.generation_config.max_new_tokens = 64
    return model, processor


def save_tiny_model(cfg: TinyModelConfig) -> Path:
    """Build a tiny model and write it with its processor to `cfg.output_dir`."""
    out = Path(cfg.output_dir)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise VlmprefError(f"Output folder {out} is not empty; choose another --output-dir or pass --overwrite.")
    model, processor = build_tiny_model(cfg)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
