"""One forward pass over a packed batch: image features once per pair, log-probs only at answer tokens.

The model is taken apart into its standard pieces (`get_image_features`, input embeddings, the decoder
from `get_decoder`, the LM head from `get_output_embeddings`), so the same code serves Idefics3/SmolVLM
and LLaVA-style models, with or without a PEFT wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from vlmpref.train.fast.packing import PackedBatch, block_mask, dense_mask


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
    inputs = dict(pixel_inputs)
    inputs["pixel_values"] = inputs["pixel_values"].to(pixel_dtype(model))
    features = model.get_image_features(**inputs, return_dict=True).pooler_output
    if isinstance(features, (list, tuple)):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features])
    return features.reshape(-1, features.shape[-1])


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


def packed_logps(model, batch: PackedBatch, features: torch.Tensor | None = None,
                 attention: str = "dense") -> PairLogps:
    """Summed answer log-probs of every pair in `batch`.

    `features` are the image features of all pairs in order (from `image_features` or the cache); when None
    and the batch has pixels, they are computed here. `attention` is `dense` (a [1, 1, L, L] boolean mask,
    for sdpa/eager) or `flex` (a FlexAttention BlockMask).
    """
    embeds = model.get_input_embeddings()(batch.input_ids)
    image_positions = batch.input_ids == image_token_id(model)
    if image_positions.any():
        if features is None:
            features = torch.cat([image_features(model, p) for p in batch.pixel_inputs if p])
        embeds = embeds.masked_scatter(image_positions.unsqueeze(-1), features.to(embeds.dtype))
    mask = block_mask(batch) if attention == "flex" else dense_mask(batch)
    hidden = model.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=batch.position_ids,
                                 use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch.logit_index]
    token_logps = answer_token_logps(hidden, model.get_output_embeddings(), batch.target_ids)
    n = batch.num_pairs
    zeros = token_logps.new_zeros(n)
    chosen = zeros.index_add(0, batch.target_pair[batch.target_is_chosen], token_logps[batch.target_is_chosen])
    rejected = zeros.index_add(0, batch.target_pair[~batch.target_is_chosen], token_logps[~batch.target_is_chosen])
    return PairLogps(chosen=chosen, rejected=rejected, token_logps=token_logps)
