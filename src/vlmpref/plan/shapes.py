"""What a model is made of, read from its config alone: layers, widths, linear layers, image tiling.

    from vlmpref.plan.shapes import describe_model, image_tokens
    shape = describe_model("smolvlm-2.2b")                  # a replica name, a local folder or a Hub id
    image_tokens(shape, 640, 480)                           # ImageTokens(tiles=13, tokens=1093, ...)

The model is instantiated on the meta device (no weights, no memory), so parameter counts and the list of
linear layers are exact for any architecture transformers knows. Image tokens follow each family's image
processor: Idefics3 (SmolVLM) tiles the resized image (the image processor's own
`get_number_of_image_patches`); LLaVA-style models and Gemma 3 take one fixed-size image; Qwen2-VL / Qwen2.5-VL / Qwen3-VL resize to a multiple of patch x merge within a pixel budget (dynamic
resolution, transformers' own `smart_resize`); InternVL picks a grid of tiles by aspect ratio (transformers'
own `get_optimal_tiled_canvas`) plus a thumbnail.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from vlmpref.errors import VlmprefError

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
    architecture: str  # how images become tokens: idefics3, llava, qwen, gemma3 or internvl (see FAMILIES)
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
    # qwen: dynamic resolution within [min_pixels, max_pixels], patch_size x merge_size pixels per token
    patch_size: int = 0
    merge_size: int = 1
    min_pixels: int = 0
    max_pixels: int = 0
    # internvl: tiles per image (a thumbnail is added when there is more than one)
    min_tiles: int = 1
    max_tiles: int = 1

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
    patches: int = 0  # vision-tower tokens over all tiles
    features: int = 0  # image features the language model receives (the tokens without markup)
    pixels: int = 0  # pixel positions the processor hands the vision tower, per channel


# ---- reading a config

# model_type -> how its images become tokens
FAMILIES = {"idefics3": "idefics3", "smolvlm": "idefics3", "llava": "llava", "qwen2_vl": "qwen", "qwen2_5_vl": "qwen",
            "qwen3_vl": "qwen", "gemma3": "gemma3", "internvl": "internvl"}
IMAGE_KEYS = ("size", "max_image_size", "do_image_splitting", "patch_size", "merge_size", "min_pixels", "max_pixels",
              "crop_to_patches", "min_patches", "max_patches")


def _load_config(model: str, trust_remote_code: bool):
    """(config, image processor settings, display name) for a replica name, a local folder or a Hub id."""
    from transformers import AutoConfig

    from vlmpref.models.replicas import ALIASES, REPLICAS, replica_config, replica_image_settings

    key = ALIASES.get(model, model).lower()
    path = Path(model).expanduser()
    if key in REPLICAS and not path.exists():
        return replica_config(key), replica_image_settings(key), model
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VlmprefError(f"Folder {model} holds no config.json, so it is not a saved model; point --model at "
                               "a folder written by save_pretrained, a Hub id or a replica name (smolvlm-2.2b).")
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        return config, _processor_settings(path), path.name
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise VlmprefError(f"Model path {model} does not exist; give a local folder, a Hub id or a replica name "
                           f"({', '.join(REPLICAS)}).")
    from vlmpref.models.loading import hub_errors

    with hub_errors(model):
        config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    # a known checkpoint: its processor settings are known too
    return config, replica_image_settings(key) if key in REPLICAS else {}, model


def _processor_settings(path: Path) -> dict:
    """The image processor's settings from a saved processor, when the folder has one."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        file = path / name
        if file.is_file():
            data = json.loads(file.read_text())
            data = data.get("image_processor", data)
            return {key: data[key] for key in IMAGE_KEYS if data.get(key) is not None}
    return {}


def processor_image_settings(processor) -> dict:
    """The image processor's settings of a loaded processor (what `_processor_settings` reads from its file)."""
    image_processor = getattr(processor, "image_processor", None)
    out = {}
    for key in IMAGE_KEYS if image_processor is not None else ():
        value = getattr(image_processor, key, None)
        if value is not None and not isinstance(value, dict) and hasattr(value, "__dict__"):  # transformers' SizeDict
            value = {k: v for k, v in vars(value).items() if v is not None}
        if value is not None:
            out[key] = value
    return out


def _tower(cfg) -> Tower:
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "num_heads", 1)
    if getattr(cfg, "model_type", "") == "qwen2_vl":  # Qwen2-VL's vision hidden_size is the merger's output width
        return Tower(hidden=cfg.embed_dim, intermediate=int(cfg.embed_dim * cfg.mlp_ratio), layers=cfg.depth,
                     heads=heads, kv_heads=heads)
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.depth
    return Tower(hidden=cfg.hidden_size, intermediate=getattr(cfg, "intermediate_size", 4 * cfg.hidden_size),
                 layers=layers, heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads)


def _edge(value) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _image_fields(family: str, config, settings: dict) -> dict:
    """ModelShape's image fields for a family, from its config and image processor settings."""
    vision = config.vision_config
    size = settings.get("size") or {}
    if family == "qwen":
        patch, merge = settings.get("patch_size", vision.patch_size), settings.get("merge_size", 2)
        # Qwen's size holds pixel counts, not edges: shortest_edge = min_pixels, longest_edge = max_pixels
        return dict(patch_size=patch, merge_size=merge, tile=patch * merge, longest_edge=0, image_splitting=False,
                    min_pixels=settings.get("min_pixels", size.get("shortest_edge", 56 * 56)),
                    max_pixels=settings.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)),
                    patches_per_tile=0, image_seq_len=0, norm="rmsnorm" if config.model_type == "qwen2_5_vl"
                    else "layernorm")
    if family == "gemma3":
        tile = int(size.get("height", vision.image_size))
        return dict(tile=tile, longest_edge=tile, image_splitting=False,
                    patches_per_tile=(vision.image_size // vision.patch_size) ** 2,
                    image_seq_len=config.mm_tokens_per_image)
    if family == "internvl":
        tile = int(size.get("height", _edge(vision.image_size)))
        splitting = bool(settings.get("crop_to_patches", True))
        return dict(tile=tile, longest_edge=tile, image_splitting=splitting,
                    patches_per_tile=(_edge(vision.image_size) // _edge(vision.patch_size)) ** 2,
                    image_seq_len=config.image_seq_length, min_tiles=int(settings.get("min_patches", 1)),
                    max_tiles=int(settings.get("max_patches", 12)) if splitting else 1)
    max_size = settings.get("max_image_size") or {}
    tile = int(max_size.get("longest_edge", vision.image_size))
    patches = (vision.image_size // vision.patch_size) ** 2
    if family == "llava":  # the "default" feature strategy drops CLS and keeps every patch
        return dict(tile=tile, longest_edge=tile, image_splitting=False, patches_per_tile=patches,
                    image_seq_len=patches)
    return dict(tile=tile, longest_edge=int(size.get("longest_edge", 4 * tile)), patches_per_tile=patches,
                image_splitting=bool(settings.get("do_image_splitting", True)),
                image_seq_len=patches // config.scale_factor**2)


def describe_model(model, trust_remote_code: bool = False, processor=None) -> ModelShape:
    """Sizes of `model` (replica name, local folder or Hub id; or a loaded model's config, with its processor
    for the image settings), from its config only."""
    import torch  # here, not at the top: `vlmpref estimate --help` need not import torch
    from torch import nn
    from transformers import AutoModelForImageTextToText, PretrainedConfig

    from vlmpref.models.adapters import language_model_prefix

    if isinstance(model, PretrainedConfig):
        config, settings = model, processor_image_settings(processor)
        name = Path(getattr(model, "_name_or_path", "") or model.model_type).name
    else:
        config, settings, name = _load_config(model, trust_remote_code)
    model_type = getattr(config, "model_type", "")
    if model_type not in FAMILIES:
        raise VlmprefError(f"estimate knows Idefics3 / SmolVLM, LLaVA-style, Qwen2-VL / Qwen2.5-VL / Qwen3-VL, "
                           f"Gemma 3 and InternVL models, not '{model_type}'; measure this model with a short "
                           "`vlmpref train --max-steps 5` run instead.")
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
    family = FAMILIES[model_type]
    return ModelShape(name=name, architecture=family, params=params, linears=linears, text=_tower(text_cfg),
                      vision=_tower(vision_cfg), vocab=text_cfg.vocab_size, language_prefix=prefix,
                      buffer_bytes=buffer_bytes, **_image_fields(family, config, settings))


# ---- image tokens


@functools.lru_cache(maxsize=32)
def _idefics3_image_processor(longest_edge: int, tile: int):
    """Idefics3's own image processor at a model's settings, for its tiling when no processor is at hand."""
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    return Idefics3ImageProcessorPil(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile},
                                     do_image_splitting=True)


def qwen_max_pixels(shape: ModelShape, longest_edge: int | None) -> int:
    """Qwen's pixel budget under --image-longest-edge: a square image at that edge (other shapes keep its area)."""
    return min(shape.max_pixels, longest_edge**2) if longest_edge else shape.max_pixels


def internvl_max_tiles(shape: ModelShape, longest_edge: int | None) -> int:
    """InternVL's tile budget under --image-longest-edge: as many tiles as a square image at that edge covers."""
    return max(1, min(shape.max_tiles, (longest_edge // shape.tile) ** 2)) if longest_edge else shape.max_tiles


def _qwen_tokens(shape: ModelShape, width: int, height: int, longest_edge: int | None) -> ImageTokens:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    height, width = smart_resize(height, width, factor=shape.patch_size * shape.merge_size,
                                 min_pixels=shape.min_pixels, max_pixels=qwen_max_pixels(shape, longest_edge))
    rows, cols = height // shape.patch_size, width // shape.patch_size
    features = rows * cols // shape.merge_size**2
    # <|vision_start|> + features + <|vision_end|>; each patch is 2 frames of patch x patch (temporal_patch_size)
    return ImageTokens(tiles=1, rows=rows, cols=cols, tokens=features + 2, width=width, height=height,
                       patches=rows * cols, features=features, pixels=2 * rows * cols * shape.patch_size**2)


def _internvl_tokens(shape: ModelShape, width: int, height: int, longest_edge: int | None) -> ImageTokens:
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    cols, rows = 1, 1
    max_tiles = internvl_max_tiles(shape, longest_edge)
    if shape.image_splitting and max_tiles > 1:
        cols, rows = get_optimal_tiled_canvas((height, width), (shape.tile, shape.tile), shape.min_tiles, max_tiles)
    tiles = rows * cols + (1 if rows * cols > 1 else 0)  # the thumbnail
    features = tiles * shape.image_seq_len
    return ImageTokens(tiles=tiles, rows=rows, cols=cols, tokens=features + 2, width=cols * shape.tile,
                       height=rows * shape.tile, patches=tiles * shape.patches_per_tile, features=features,
                       pixels=tiles * shape.tile**2)


def _fixed(shape: ModelShape, markup: int) -> ImageTokens:
    return ImageTokens(tiles=1, rows=0, cols=0, tokens=shape.image_seq_len + markup, width=shape.tile,
                       height=shape.tile, patches=shape.patches_per_tile, features=shape.image_seq_len,
                       pixels=shape.tile**2)


def image_tokens(shape: ModelShape, width: int, height: int, longest_edge: int | None = None,
                 image_processor=None) -> ImageTokens:
    """Tiles and language-model tokens for one `width` x `height` image, as the model's processor makes them.

    `image_processor`: the loaded Idefics3 / SmolVLM image processor, when one is at hand, for its tiling."""
    if shape.architecture == "llava":
        return _fixed(shape, 0)
    if shape.architecture == "gemma3":  # "\n\n<start_of_image>" + soft tokens + "<end_of_image>\n\n"
        return _fixed(shape, 4)
    if shape.architecture == "qwen":
        return _qwen_tokens(shape, width, height, longest_edge)
    if shape.architecture == "internvl":
        return _internvl_tokens(shape, width, height, longest_edge)
    tile, seq = shape.tile, shape.image_seq_len
    if not shape.image_splitting:
        return _fixed(shape, 3)
    # the tiling is the image processor's own: the loaded one where there is one, else one built at the settings
    image_processor = image_processor or _idefics3_image_processor(shape.longest_edge, tile)
    _, rows, cols = image_processor.get_number_of_image_patches(
        height, width, {"size": {"longest_edge": longest_edge}} if longest_edge else {})
    if not rows:
        return ImageTokens(tiles=1, rows=0, cols=0, tokens=seq + 3, width=tile, height=tile,
                           patches=shape.patches_per_tile, features=seq, pixels=tile**2)
    tiles = rows * cols + 1
    # per tile: <fake><row_i_col_j> + seq image tokens; "\n" after each row; then "\n<fake><global-img>" + seq + <fake>
    tokens = rows * (cols * (seq + 2) + 1) + seq + 3
    return ImageTokens(tiles=tiles, rows=rows, cols=cols, tokens=tokens, width=cols * tile, height=rows * tile,
                       patches=tiles * shape.patches_per_tile, features=tiles * seq, pixels=tiles * tile**2)


def set_image_longest_edge(processor, pixels: int) -> None:
    """Make the processor give images of at most `pixels` on their longest edge fewer tokens: Idefics3 / SmolVLM
    resize to that edge before tiling; Qwen-VL processors, which budget pixels rather than edges, get a budget of
    pixels x pixels (a square image at that edge); InternVL gets as many tiles as such a square covers."""
    image_processor = getattr(processor, "image_processor", None)
    name = type(image_processor).__name__
    if name.startswith("Qwen2VLImageProcessor"):
        size = dict(image_processor.size)
        size["longest_edge"] = min(int(size.get("longest_edge", pixels**2)), int(pixels) ** 2)
        size["shortest_edge"] = min(int(size.get("shortest_edge", 0)), size["longest_edge"])
        image_processor.size = size
        return
    if name.startswith("GotOcr2ImageProcessor"):
        tile = int(image_processor.size["height"])
        image_processor.max_patches = max(1, min(int(image_processor.max_patches), (int(pixels) // tile) ** 2))
        return
    size = getattr(image_processor, "size", None)
    longest = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if longest is None:
        raise VlmprefError(f"--image-longest-edge applies to Idefics3 / SmolVLM, Qwen-VL and InternVL processors; "
                           f"{type(processor).__name__} takes images at one fixed size, so leave it unset.")
    processor.image_processor.size = {"longest_edge": int(pixels)}
