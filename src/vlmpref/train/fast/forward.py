"""One forward pass over a packed batch: image features once per pair, log-probs only at answer tokens.

The model is taken apart into its standard pieces (`get_image_features`, input embeddings, the decoder
from `get_decoder`, the LM head from `get_output_embeddings`), so the same code serves Idefics3/SmolVLM,
LLaVA-style, Qwen2-VL / Qwen2.5-VL / Qwen3-VL, Gemma 3 and InternVL models, with or without a PEFT wrapper;
what a family does differently (3-D positions, deepstack features, bidirectional or sliding-window attention)
is in families.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from vlmpref.train.fast import families
from vlmpref.train.fast.packing import PackedBatch


# Families whose log-probs this forward computes exactly, each checked against the duplicated (TRL) formulation in
# float64 and against trl.DPOTrainer in float32 (tests/test_fast_engine.py, tests/test_families.py). Others are
# refused, since their positions or masks might be computed wrongly.
FAST_MODEL_TYPES = ("idefics3", "smolvlm", "llava", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "gemma3", "internvl")


def supports_model(model) -> bool:
    """Whether the fast engine computes this model's log-probs correctly (PEFT wrappers look through)."""
    return getattr(model.config, "model_type", None) in FAST_MODEL_TYPES


def image_token_id(model) -> int:
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise ValueError(f"{type(model).__name__} has no image token id in its config")


def pixel_dtype(model) -> torch.dtype:
    return model.get_input_embeddings().weight.dtype


def image_features(model, pixel_inputs: dict) -> torch.Tensor:
    """Image features as the language model receives them, one row per image token: [n_tokens, hidden]."""
    return families.image_features(model, pixel_inputs, pixel_dtype(model))


def _concat_pixels(parts: list[dict]) -> list[dict]:
    """One vision call for all pairs when their image tensors stack (fewer, larger kernel launches):
    Idefics3 gives [1, tiles, 3, H, W] per pair (joined on the tile axis), LLaVA, Gemma 3 and InternVL
    [images or tiles, 3, H, W], Qwen [patches, C x P x P] with image_grid_thw [images, 3] (all on the first axis)."""
    parts = [p for p in parts if p]
    if len(parts) < 2 or any(set(p) != set(parts[0]) for p in parts):
        return parts
    values = [p["pixel_values"] for p in parts]
    if any(v.shape[2:] != values[0].shape[2:] or v.dim() != values[0].dim() for v in values):
        return parts
    if values[0].dim() == 5 and all(v.shape[0] == 1 for v in values):
        axis = 1
    elif values[0].dim() in (2, 4):
        axis = 0
    else:
        return parts
    joined = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if any(t.shape[:axis] != tensors[0].shape[:axis] or t.shape[axis + 1:] != tensors[0].shape[axis + 1:]
               for t in tensors):
            return parts
        joined[key] = torch.cat(tensors, dim=axis)
    return [joined]


# Pixel values per vision-tower call (~21 tiles of 512x512, ~2 Qwen images of 1,000x1,000). Joining every pair of
# a batch in one call is fastest, but without a bound the one-time pass of 16 pairs of 13-tile images took 2.4 GiB
# in one MLP activation on the H200 (SmolVLM 256M, benchmarks/RESULTS.md run 9) and ran out of memory under a
# 12 GiB cap. Images are encoded independently, so the split changes no number.
VISION_CALL_ELEMENTS = 1 << 24


def batch_image_features(model, pixel_inputs: list[dict], max_elements: int = VISION_CALL_ELEMENTS) -> torch.Tensor:
    """Image features of several pairs, in order, with as few vision-tower calls as their shapes and
    `max_elements` pixel values per call allow (a pair is never split)."""
    calls, group, size = [], [], 0
    for part in (p for p in pixel_inputs if p):
        n = part["pixel_values"].numel()
        if group and size + n > max_elements:
            calls += _concat_pixels(group)
            group, size = [], 0
        group.append(part)
        size += n
    calls += _concat_pixels(group) if group else []
    return torch.cat([image_features(model, p) for p in calls])


@dataclass
class PairLogps:
    chosen: torch.Tensor           # [P] summed log-probs of chosen answers
    rejected: torch.Tensor         # [P]
    token_logps: torch.Tensor      # [T] per answer token (for the SFT term)


def _logps_chunk(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = torch.nn.functional.linear(hidden, weight)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits lose the small log-probs
    return logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def answer_token_logps(hidden: torch.Tensor, lm_head: torch.nn.Module, targets: torch.Tensor,
                       chunk: int = 1024) -> torch.Tensor:
    """log p(target) from the rows of `hidden`, in chunks; with grad, logits are recomputed in backward
    rather than kept, so memory stays at one chunk of [chunk, vocab]."""
    weight = lm_head.weight
    out = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start:start + chunk], targets[start:start + chunk]
        if torch.is_grad_enabled() and h.requires_grad:
            out.append(checkpoint(_logps_chunk, h, weight, t, use_reentrant=False))
        else:
            out.append(_logps_chunk(h, weight, t))
    return torch.cat(out)


def _with_image_features(model, batch: PackedBatch, embeds: torch.Tensor, features: torch.Tensor | None):
    """(token embeddings with the image tokens' rows replaced by the image features (in token order), extra decoder
    arguments some families take with them: Qwen3-VL's deepstack features)."""
    index = batch.image_index
    if index is None:  # a batch packed without the image token id: find the image tokens here (waits for the GPU)
        positions = batch.input_ids == image_token_id(model)
        if not positions.any():
            return embeds, {}
        index = positions.reshape(-1).nonzero().squeeze(-1)
    if index.numel() == 0:
        return embeds, {}
    if features is None:
        features = batch_image_features(model, batch.pixel_inputs)
    main, extra = families.split_image_features(model, features, embeds, index)
    flat = embeds.reshape(-1, embeds.shape[-1]).index_copy(0, index, main.to(embeds.dtype))
    return flat.view(embeds.shape), extra


def attention_backends(mask_is_dense: bool):
    """SDPA kernels for a dense boolean mask on a GPU: cuDNN's attention rebuilds its execution plan for new
    shapes and mask layouts at a host cost of milliseconds per call (benchmarks/RESULTS.md, engine v2 profile),
    so the memory-efficient kernel, which takes the same mask at microseconds, is preferred."""
    if not mask_is_dense or not torch.cuda.is_available():
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


def packed_logps(model, batch: PackedBatch, features: torch.Tensor | None = None,
                 attention: str = "dense") -> PairLogps:
    """Summed answer log-probs of every pair in `batch`.

    `features` are the image features of all pairs in order (from `image_features` or the cache); when None
    and the batch has pixels, they are computed here. `attention` is `dense` (a [R, 1, L, L] boolean mask,
    for sdpa/eager) or `flex` (a FlexAttention BlockMask). Nothing here reads a value back from the GPU, so
    the host can queue the next work while the GPU computes.
    """
    embeds, extra = _with_image_features(model, batch, model.get_input_embeddings()(batch.input_ids), features)
    mask = families.attention_mask(model, batch, attention)
    positions = families.position_ids(model, batch)
    with attention_backends(attention != "flex"):
        hidden = model.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                     use_cache=False, **extra).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch.logit_index]
    token_logps = answer_token_logps(hidden, model.get_output_embeddings(), batch.target_ids)
    # per-pair sums by index, with the other answer's tokens multiplied by zero: no boolean indexing, no sync
    is_chosen = batch.target_is_chosen.to(token_logps.dtype)
    zeros = token_logps.new_zeros(batch.num_pairs)
    chosen = zeros.index_add(0, batch.target_pair, token_logps * is_chosen)
    rejected = zeros.index_add(0, batch.target_pair, token_logps * (1 - is_chosen))
    return PairLogps(chosen=chosen, rejected=rejected, token_logps=token_logps)
