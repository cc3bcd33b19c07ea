"""What a model is made of, read from its config alone: layers, widths, linear layers, image tiling.

    from vlmpref.models.shapes import describe_model, image_tokens
    shape = describe_model("smolvlm-2.2b")                  # a replica name, a local folder or a Hub id
    image_tokens(shape, 640, 480)                           # ImageTokens(tiles=13, tokens=1093, ...)

The model is instantiated on the meta device (no weights, no memory), so parameter counts and the list of
linear layers are exact for any architecture transformers knows. The image tiling follows the Idefics3
(SmolVLM) image processor; LLaVA-style models take one fixed-size tile.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vlmpref.errors import VlmprefError

MAX_IMAGE_SIZE = 4096  # Idefics3's absolute cap on the resized image


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool
    part: str  # "text", "vision", "connector" or "lm_head"

    @property
    def numel(self) -> int:
        return self.in_features * self.out_features


@dataclass(frozen=True)
class Tower:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


@dataclass
class ModelShape:
    """The sizes `estimate` needs, for one image-text-to-text model."""

    name: str
    architecture: str  # idefics3 or llava
    params: int
    linears: list[Linear]
    text: Tower
    vision: Tower
    vocab: int
    patches_per_tile: int  # vision-tower tokens per tile
    image_seq_len: int  # language-model tokens per tile, after the connector
    tile: int  # tile edge in pixels
    longest_edge: int  # the processor resizes the longest image edge to this before tiling
    image_splitting: bool = True
    language_prefix: str = ""
    buffer_bytes: int = 0  # rotary tables and other buffers
    norm: str = field(default="layernorm")  # the vision tower's norm: layernorm runs in fp32 under CUDA autocast

    @property
    def non_linear_params(self) -> int:
        return self.params - sum(lin.numel + (lin.out_features if lin.bias else 0) for lin in self.linears)

    def part_params(self, part: str) -> int:
        return sum(lin.numel for lin in self.linears if lin.part == part)


@dataclass(frozen=True)
class ImageTokens:
    tiles: int  # images the vision tower encodes (split tiles + the global one)
    rows: int
    cols: int
    tokens: int  # language-model tokens the image becomes, markup included
    width: int  # image size after resizing
    height: int


# ---- reading a config


def _load_config(model: str, trust_remote_code: bool):
    """(config, processor settings, display name) for a replica name, a local folder or a Hub id."""
    from transformers import AutoConfig

    from vlmpref.models.replicas import ALIASES, REPLICAS, replica_config, replica_spec

    key = ALIASES.get(model, model).lower()
    path = Path(model).expanduser()
    if key in REPLICAS and not path.exists():
        spec = replica_spec(key)
        return replica_config(key), {"longest_edge": spec["longest_edge"], "tile": spec["tile"]}, model
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VlmprefError(f"Folder {model} holds no config.json, so it is not a saved model; point --model at "
                               "a folder written by save_pretrained, a Hub id or a replica name (smolvlm-2.2b).")
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        return config, _processor_settings(path), path.name
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise VlmprefError(f"Model path {model} does not exist; give a local folder, a Hub id or a replica name "
                           "(smolvlm-256m, smolvlm-500m, smolvlm-2.2b).")
    from vlmpref.models.loading import hub_errors

    with hub_errors(model):
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    settings = {}
    if key in REPLICAS:  # a known checkpoint: its processor settings are known too
        spec = replica_spec(key)
        settings = {"longest_edge": spec["longest_edge"], "tile": spec["tile"]}
    return config, settings, model


def _processor_settings(path: Path) -> dict:
    """Image resizing and tiling from a saved processor, when the folder has one."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = path / name
        if not file.is_file():
            continue
        data = json.loads(file.read_text())
        data = data.get("image_processor", data)
        out = {}
        if isinstance(data.get("size"), dict) and "longest_edge" in data["size"]:
            out["longest_edge"] = int(data["size"]["longest_edge"])
        if isinstance(data.get("max_image_size"), dict) and "longest_edge" in data["max_image_size"]:
            out["tile"] = int(data["max_image_size"]["longest_edge"])
        if "do_image_splitting" in data:
            out["splitting"] = bool(data["do_image_splitting"])
        if out:
            return out
    return {}


def _tower(cfg) -> Tower:
    heads = getattr(cfg, "num_attention_heads", 1)
    return Tower(hidden=cfg.hidden_size, intermediate=getattr(cfg, "intermediate_size", 4 * cfg.hidden_size),
                 layers=cfg.num_hidden_layers, heads=heads,
                 kv_heads=getattr(cfg, "num_key_value_heads", None) or heads)


def processor_image_settings(processor) -> dict:
    """Image resizing and tiling of a loaded processor (what `_processor_settings` reads from its file)."""
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is None:
        return {}
    data = {key: getattr(image_processor, key, None) for key in ("size", "max_image_size", "do_image_splitting")}
    out = {}
    for key, name in (("size", "longest_edge"), ("max_image_size", "tile")):
        value = data[key]  # a dict, or transformers' SizeDict
        edge = value.get("longest_edge") if isinstance(value, dict) else getattr(value, "longest_edge", None)
        if edge:
            out[name] = int(edge)
    if data["do_image_splitting"] is not None:
        out["splitting"] = bool(data["do_image_splitting"])
    return out


def describe_model(model, trust_remote_code: bool = False, processor=None) -> ModelShape:
    """Sizes of `model` (replica name, local folder or Hub id; or a loaded model's config, with its processor
    for the image settings), from its config only."""
    from transformers import AutoModelForImageTextToText, PretrainedConfig

    from vlmpref.models.adapters import language_model_prefix

    if isinstance(model, PretrainedConfig):
        config, settings = model, processor_image_settings(processor)
        name = Path(getattr(model, "_name_or_path", "") or model.model_type).name
    else:
        config, settings, name = _load_config(model, trust_remote_code)
    model_type = getattr(config, "model_type", "")
    if model_type not in ("idefics3", "smolvlm", "llava"):
        raise VlmprefError(f"estimate knows Idefics3 / SmolVLM and LLaVA-style models, not '{model_type}'; "
                           "measure this model with a short `vlmpref train --max-steps 5` run instead.")
    with torch.device("meta"):
        meta = AutoModelForImageTextToText.from_config(config, trust_remote_code=trust_remote_code)
    prefix = language_model_prefix(meta)
    lm_head = meta.get_output_embeddings()
    linears = []
    for module_name, module in meta.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if module is lm_head:
            part = "lm_head"
        elif module_name.startswith(prefix + "."):
            part = "text"
        elif any(word in module_name for word in ("connector", "projector", "merger")):
            part = "connector"
        else:
            part = "vision"
        linears.append(Linear(module_name, module.in_features, module.out_features, module.bias is not None, part))
    params = sum(p.numel() for p in meta.parameters())
    # buffers are created in the default dtype on meta; rotary tables stay fp32 when the model moves to bf16
    buffer_bytes = sum(b.numel() * (4 if b.is_floating_point() else b.element_size()) for b in meta.buffers())
    text_cfg, vision_cfg = config.get_text_config(), config.vision_config
    tile = settings.get("tile", vision_cfg.image_size)
    patches = (vision_cfg.image_size // vision_cfg.patch_size) ** 2
    if model_type == "llava":
        image_seq_len = patches  # the "default" feature strategy drops CLS and keeps every patch
        longest_edge, splitting = tile, False
    else:
        image_seq_len = patches // config.scale_factor**2
        longest_edge, splitting = settings.get("longest_edge", 4 * tile), settings.get("splitting", True)
    return ModelShape(name=name, architecture="llava" if model_type == "llava" else "idefics3", params=params,
                      linears=linears, text=_tower(text_cfg), vision=_tower(vision_cfg), vocab=text_cfg.vocab_size,
                      patches_per_tile=patches, image_seq_len=image_seq_len, tile=tile, longest_edge=longest_edge,
                      image_splitting=splitting, language_prefix=prefix, buffer_bytes=buffer_bytes)


# ---- image tokens


def _rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    """Idefics3's resize: the longest edge becomes max_len (up or down), the other keeps the aspect, made even."""
    aspect = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect)
        height += height % 2
    else:
        height = max_len
        width = int(height * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _scale_below(height: int, width: int, max_len: int) -> tuple[int, int]:
    aspect = width / height
    if width >= height and width > max_len:
        width, height = max_len, int(max_len / aspect)
    elif height > width and height > max_len:
        height, width = max_len, int(max_len * aspect)
    return max(height, 1), max(width, 1)


def image_tokens(shape: ModelShape, width: int, height: int, longest_edge: int | None = None) -> ImageTokens:
    """Tiles and language-model tokens for one `width` x `height` image, as the model's processor makes them."""
    if shape.architecture == "llava":
        return ImageTokens(tiles=1, rows=0, cols=0, tokens=shape.image_seq_len, width=shape.tile, height=shape.tile)
    tile, seq = shape.tile, shape.image_seq_len
    height, width = _rescale_to_max_len(height, width, longest_edge or shape.longest_edge)
    height, width = _scale_below(height, width, MAX_IMAGE_SIZE)
    if not shape.image_splitting:
        return ImageTokens(tiles=1, rows=0, cols=0, tokens=seq + 3, width=tile, height=tile)
    # resize_for_vision_encoder: both edges up to multiples of the tile, the short one derived from the long one
    aspect = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = math.ceil(int(width / aspect) / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = math.ceil(int(height * aspect) / tile) * tile
    if height <= tile and width <= tile:
        return ImageTokens(tiles=1, rows=0, cols=0, tokens=seq + 3, width=width, height=height)
    rows, cols = (height - tile) // tile + 1, (width - tile) // tile + 1
    # per tile: <fake><row_i_col_j> + seq image tokens; "\n" after each row; then "\n<fake><global-img>" + seq + <fake>
    tokens = rows * (cols * (seq + 2) + 1) + seq + 3
    return ImageTokens(tiles=rows * cols + 1, rows=rows, cols=cols, tokens=tokens, width=width, height=height)


def set_image_longest_edge(processor, pixels: int) -> None:
    """Make an Idefics3 / SmolVLM processor resize images to `pixels` on their longest edge before tiling."""
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if longest is None:
        raise VlmprefError(f"--image-longest-edge applies to Idefics3 / SmolVLM processors, which resize by the "
                           f"longest edge; {type(processor).__name__} does not, so leave it unset.")
    processor.image_processor.size = {"longest_edge": int(pixels)}
