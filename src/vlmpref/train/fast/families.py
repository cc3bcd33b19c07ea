"""What each model family needs beyond "image features replace image tokens, 1-D positions, causal mask".

The shared-prefix forward (forward.py) calls these hooks; each does the family's own computation on the packed
layout so that every token sees what it sees in TRL's duplicated layout:

- positions: Qwen2-VL, Qwen2.5-VL and Qwen3-VL rotate by 3-D (temporal, height, width) positions. They come from
  the model's own `get_rope_index`, run on each pair's two TRL sequences ([prompt | chosen], [prompt | rejected]);
  so the rejected answer's positions restart where the prompt ends on all three axes.
- image features: Qwen's dynamic resolution gives each image its own number of patches (`image_grid_thw`);
  Qwen3-VL also adds the vision tower's "deepstack" features to the first decoder layers at the image tokens.
  Features are kept as one row per image token (deepstack features appended along the feature axis), so the
  image-feature cache holds them like any other family's.
- attention: Gemma 3 lets the tokens of one image see each other both ways, and its sliding-window layers see
  only the last `sliding_window` positions; sliding windows are measured in TRL's sequence positions (rejected
  tokens count from the prompt's end, not from after chosen).
- InternVL's tiles need nothing here: each tile's tokens replace image tokens one for one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # packing imports this module for split_processor_outputs
    from vlmpref.train.fast.packing import PackedBatch

# Processor outputs that describe token layout rather than pixels: kept with a pair's tokens even when its image
# features come from the cache. image_grid_thw is both (the vision tower and the 3-D positions read it).
TOKEN_TYPE_KEYS = ("mm_token_type_ids", "token_type_ids")
LAYOUT_KEYS = TOKEN_TYPE_KEYS + ("image_grid_thw",)
MROPE_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
DEEPSTACK_TYPES = ("qwen3_vl",)
BIDIRECTIONAL_IMAGE_TYPES = ("gemma3",)


def model_type(model) -> str:
    return getattr(model.config, "model_type", "")


def split_processor_outputs(outputs: dict) -> tuple[dict, dict]:
    """(what the vision tower takes, what positions and masks read) from the processor's prompt outputs."""
    pixels = {k: v for k, v in outputs.items() if k not in ("input_ids", "attention_mask") + TOKEN_TYPE_KEYS}
    layout = {k: v for k, v in outputs.items() if k in LAYOUT_KEYS}
    return pixels, layout


# ---- image features


def image_features(model, pixel_inputs: dict, dtype: torch.dtype) -> torch.Tensor:
    """Image features as the language model receives them, one row per image token: [n_tokens, hidden] (Qwen3-VL:
    [n_tokens, hidden x (1 + deepstack layers)], the deepstack features after the main ones)."""
    inputs = dict(pixel_inputs)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    output = model.get_image_features(**inputs, return_dict=True)
    parts = [output.pooler_output]
    if model_type(model) in DEEPSTACK_TYPES:
        parts += list(output.deepstack_features)
    rows = []
    for part in parts:
        if isinstance(part, (list, tuple)):
            part = torch.cat([f.reshape(-1, f.shape[-1]) for f in part])
        rows.append(part.reshape(-1, part.shape[-1]))
    return torch.cat(rows, dim=-1)


def split_image_features(model, features: torch.Tensor, embeds: torch.Tensor,
                         index: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(the features that replace the image tokens' embeddings, extra decoder arguments): Qwen3-VL's deepstack
    features, added to the first decoder layers' hidden states at the image tokens (`index`, flat positions)."""
    hidden = embeds.shape[-1]
    if model_type(model) not in DEEPSTACK_TYPES:
        return features, {}
    deepstack = [features[:, hidden * (i + 1):hidden * (i + 2)] for i in range(features.shape[-1] // hidden - 1)]
    # rows follow the image tokens in row-major order, as the decoder's visual_pos_masks reads them
    visual = torch.zeros(embeds.shape[:2].numel(), dtype=torch.bool, device=embeds.device)
    visual = visual.index_fill(0, index, True).view(embeds.shape[:2])
    return features[:, :hidden], {"visual_pos_masks": visual, "deepstack_visual_embeds": deepstack}


# ---- positions


def _rope_owner(model):
    """The module with `get_rope_index` (Qwen2VLModel and kin), found once per model."""
    owner = getattr(model, "_vlmpref_rope_owner", None)
    if owner is None:
        owner = next(m for m in model.modules() if hasattr(m, "get_rope_index") and hasattr(m, "config"))
        object.__setattr__(model, "_vlmpref_rope_owner", owner)
    return owner


def _pair_columns(batch: PackedBatch) -> list[tuple[int, torch.Tensor]]:
    """(row, columns) of each pair's [prompt | chosen | rejected] block, from the pairs as `pack` lays them out (one
    row per pair, or all in row 0 one after another): nothing is read back from the GPU."""
    out, offset = [], 0
    for p, pair in enumerate(batch.pairs):
        length = len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)
        row, start = (p, 0) if batch.layout == "rows" else (0, offset)
        out.append((row, torch.arange(start, start + length)))
        offset += length
    return out


def mrope_positions(model, batch: PackedBatch) -> torch.Tensor:
    """[3, R, L] positions: each pair's [prompt | chosen] and [prompt | rejected] as the model's own get_rope_index
    numbers TRL's two sequences, laid onto the shared-prefix block."""
    sequences, token_types, grids = [], [], []
    for pair in batch.pairs:
        prompt_types = pair.layout.get("mm_token_type_ids")
        if prompt_types is None:  # no image: all text
            prompt_types = torch.zeros(1, len(pair.prompt_ids), dtype=torch.long)
        for answer in (pair.chosen_ids, pair.rejected_ids):
            sequences.append(pair.prompt_ids + answer)
            token_types.append(prompt_types[0].tolist() + [0] * len(answer))
        if "image_grid_thw" in pair.layout:
            grids += [pair.layout["image_grid_thw"]] * 2  # get_rope_index takes one grid per image per row
    length = max(len(s) for s in sequences)
    ids = torch.tensor([s + [0] * (length - len(s)) for s in sequences])
    types = torch.tensor([t + [0] * (length - len(t)) for t in token_types])
    mask = torch.tensor([[1] * len(s) + [0] * (length - len(s)) for s in sequences])
    owner = _rope_owner(model)
    positions, _ = owner.get_rope_index(input_ids=ids, mm_token_type_ids=types,
                                        image_grid_thw=torch.cat(grids) if grids else None, attention_mask=mask)
    out = torch.zeros(3, *batch.input_ids.shape, dtype=torch.long)
    for p, (row, cols) in enumerate(_pair_columns(batch)):
        pair = batch.pairs[p]
        n_prompt, n_chosen, n_rejected = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        with_chosen, with_rejected = positions[:, 2 * p], positions[:, 2 * p + 1]
        block = torch.cat([with_chosen[:, :n_prompt + n_chosen], with_rejected[:, n_prompt:n_prompt + n_rejected]], 1)
        out[:, row, cols] = block
    return out.to(batch.input_ids.device)


def position_ids(model, batch: PackedBatch) -> torch.Tensor:
    if model_type(model) in MROPE_TYPES:
        return mrope_positions(model, batch)
    return batch.position_ids


# ---- attention masks


def _image_blocks(model, batch: PackedBatch) -> torch.Tensor | None:
    """[R, L] index of the contiguous image-token block each token belongs to (-1 outside images), for families
    whose image tokens attend to each other both ways. Gemma 3's processor marks exactly its image tokens with
    token_type_ids = 1, which is what the model's own mask is built from."""
    if model_type(model) not in BIDIRECTIONAL_IMAGE_TYPES:
        return None
    from vlmpref.train.fast.forward import image_token_id

    is_image = batch.input_ids == image_token_id(model)
    starts = is_image & ~torch.nn.functional.pad(is_image, (1, 0))[:, :-1]
    return torch.where(is_image, starts.long().cumsum(1) - 1, -1)


def _sliding_window(model) -> int | None:
    text = model.config.get_text_config()
    layer_types = getattr(text, "layer_types", None) or []
    window = getattr(text, "sliding_window", None)
    return window if window and "sliding_attention" in layer_types else None


def _predicate(batch: PackedBatch, blocks: torch.Tensor | None, window: int | None):
    """mask(b, q, k): the shared-prefix rule, widened by image blocks, narrowed by a sliding window."""
    from vlmpref.train.fast.packing import allowed

    seg, role, pos = batch.segment, batch.role, batch.position_ids

    def mask(b, q, k):
        ok = allowed(seg[b, q], role[b, q], seg[b, k], role[b, k], q, k)
        if blocks is not None:
            ok = ok | ((blocks[b, q] >= 0) & (blocks[b, q] == blocks[b, k]) & (seg[b, q] == seg[b, k]))
        if window is not None:  # as transformers' sliding_window_overlay: kv > q - window, in TRL's positions
            ok = ok & (pos[b, k] > pos[b, q] - window)
        return ok

    return mask


def _dense(batch: PackedBatch, predicate) -> torch.Tensor:
    rows, length = batch.segment.shape
    idx = torch.arange(length, device=batch.segment.device)
    b = torch.arange(rows, device=batch.segment.device)[:, None, None]
    return predicate(b, idx[None, :, None], idx[None, None, :])[:, None]


def _flex(batch: PackedBatch, predicate):
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = batch.segment.shape
    return create_block_mask(lambda b, h, q, k: predicate(b, q, k), B=rows, H=None, Q_LEN=length, KV_LEN=length,
                             device=batch.segment.device)


def attention_mask(model, batch: PackedBatch, attention: str = "dense"):
    """The mask (dense [R, 1, L, L] booleans or a FlexAttention BlockMask), or {layer type: mask} when the model has
    sliding-window layers, which the decoders of those families accept in place of building their own."""
    from vlmpref.train.fast.packing import block_mask, dense_mask

    blocks, window = _image_blocks(model, batch), _sliding_window(model)
    if blocks is None and window is None:
        return block_mask(batch) if attention == "flex" else dense_mask(batch)
    build = _flex if attention == "flex" else _dense
    full = build(batch, _predicate(batch, blocks, None))
    if window is None:
        return full
    return {"full_attention": full, "sliding_attention": build(batch, _predicate(batch, blocks, window))}

