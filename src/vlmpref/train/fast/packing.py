"""Tokenize preference pairs exactly as TRL does, and pack them into one shared-prefix sequence.

TRL feeds `[prompt | chosen]` and `[prompt | rejected]` as two sequences. Here one pair is one sequence

    [ prompt (image tokens included) | chosen | rejected ]

where rejected tokens see the prompt but not chosen, and their positions restart where the prompt ends,
so every token sees exactly the context it has in TRL's layout. Several pairs are packed into one row
without padding; tokens of different pairs never see each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl.data_utils import apply_chat_template, prepare_multimodal_messages

from vlmpref.data.normalize import trl_example

PROMPT, CHOSEN, REJECTED = 0, 1, 2


@dataclass
class PairTokens:
    """One tokenized pair: prompt ids (image tokens expanded), answer ids, and the processor's image tensors."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    pixel_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, pixel_attention_mask, ...
    pair_id: int = -1
    image_key: str | None = None  # content key of the pair's images, for the feature cache


def pair_texts(row: dict, processor) -> dict[str, str]:
    """Prompt / chosen / rejected strings, from the chat template, as TRL's vision collator renders them."""
    example = trl_example(row)
    example["prompt"] = prepare_multimodal_messages(example["prompt"], images=example["images"])
    example["chosen"] = prepare_multimodal_messages(example["chosen"])
    example["rejected"] = prepare_multimodal_messages(example["rejected"])
    return apply_chat_template(example, processor)


def tokenize_pair(row: dict, processor, pair_id: int = -1, image_key: str | None = None,
                  with_pixels: bool = True) -> PairTokens:
    """TRL-identical tokens for one row in the internal form (images, prompt, chosen, rejected).

    `with_pixels=False` skips image preprocessing when the image features come from the cache; the prompt
    ids are still produced by the processor, which needs the images only for their sizes.
    """
    texts = pair_texts(row, processor)
    images = list(row["images"])
    prompt = processor(images=[images] if images else None, text=[texts["prompt"]], add_special_tokens=False,
                       return_tensors="pt")
    tokenizer = processor.tokenizer
    chosen = tokenizer(texts["chosen"], add_special_tokens=False)["input_ids"]
    rejected = tokenizer(texts["rejected"], add_special_tokens=False)["input_ids"]
    pixels = {k: v for k, v in prompt.items() if k not in ("input_ids", "attention_mask")} if with_pixels else {}
    return PairTokens(prompt_ids=prompt["input_ids"][0].tolist(), chosen_ids=list(chosen),
                      rejected_ids=list(rejected), pixel_inputs=pixels, pair_id=pair_id, image_key=image_key)


@dataclass
class PackedBatch:
    """Several pairs in one row, with what the forward pass and the loss need."""

    input_ids: torch.Tensor            # [1, L]
    position_ids: torch.Tensor         # [1, L]
    segment: torch.Tensor              # [L] pair index of each token
    role: torch.Tensor                 # [L] PROMPT / CHOSEN / REJECTED
    logit_index: torch.Tensor          # [T] positions whose hidden state predicts an answer token
    target_ids: torch.Tensor           # [T] the answer token each of them predicts
    target_pair: torch.Tensor          # [T] pair index of each target
    target_is_chosen: torch.Tensor     # [T] True for chosen targets, False for rejected
    chosen_lengths: torch.Tensor       # [P]
    rejected_lengths: torch.Tensor     # [P]
    pixel_inputs: list[dict]           # per pair, the processor's image tensors (empty with cached features)
    pair_ids: list[int]
    image_keys: list[str | None]
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None

    @property
    def num_pairs(self) -> int:
        return len(self.pair_ids)

    def to(self, device) -> "PackedBatch":
        for name in ("input_ids", "position_ids", "segment", "role", "logit_index", "target_ids", "target_pair",
                     "target_is_chosen", "chosen_lengths", "rejected_lengths", "ref_chosen_logps",
                     "ref_rejected_logps"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device, non_blocking=True))
        self.pixel_inputs = [{k: v.to(device, non_blocking=True) for k, v in p.items()} for p in self.pixel_inputs]
        return self


def pack(pairs: list[PairTokens]) -> PackedBatch:
    """Concatenate pairs as [prompt | chosen | rejected] blocks and index every answer-token prediction."""
    ids, pos, seg, role = [], [], [], []
    logit_index, targets, target_pair, target_is_chosen = [], [], [], []
    for p_index, pair in enumerate(pairs):
        start = len(ids)
        n_prompt, n_chosen, n_rejected = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        ids += pair.prompt_ids + pair.chosen_ids + pair.rejected_ids
        pos += list(range(n_prompt + n_chosen)) + list(range(n_prompt, n_prompt + n_rejected))
        seg += [p_index] * (n_prompt + n_chosen + n_rejected)
        role += [PROMPT] * n_prompt + [CHOSEN] * n_chosen + [REJECTED] * n_rejected
        last_prompt = start + n_prompt - 1
        chosen_start = start + n_prompt
        rejected_start = chosen_start + n_chosen
        # The first answer token of both answers is predicted by the last prompt token
        for answer_start, answer, is_chosen in ((chosen_start, pair.chosen_ids, True),
                                                 (rejected_start, pair.rejected_ids, False)):
            predictors = [last_prompt] + list(range(answer_start, answer_start + len(answer) - 1))
            logit_index += predictors
            targets += answer
            target_pair += [p_index] * len(answer)
            target_is_chosen += [is_chosen] * len(answer)
    return PackedBatch(
        input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), segment=torch.tensor(seg),
        role=torch.tensor(role), logit_index=torch.tensor(logit_index), target_ids=torch.tensor(targets),
        target_pair=torch.tensor(target_pair), target_is_chosen=torch.tensor(target_is_chosen),
        chosen_lengths=torch.tensor([len(p.chosen_ids) for p in pairs]),
        rejected_lengths=torch.tensor([len(p.rejected_ids) for p in pairs]),
        pixel_inputs=[p.pixel_inputs for p in pairs], pair_ids=[p.pair_id for p in pairs],
        image_keys=[p.image_key for p in pairs])


def allowed(segment: torch.Tensor, role: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """May query token q attend to key token k? Same pair, causal, and rejected never sees chosen."""
    return (segment[q] == segment[k]) & (k <= q) & ~((role[q] == REJECTED) & (role[k] == CHOSEN))


def dense_mask(batch: PackedBatch) -> torch.Tensor:
    """The shared-prefix mask as a [1, 1, L, L] boolean tensor (True = attend), for sdpa and eager."""
    n = batch.segment.shape[0]
    q = torch.arange(n, device=batch.segment.device).unsqueeze(1)
    k = torch.arange(n, device=batch.segment.device).unsqueeze(0)
    return allowed(batch.segment, batch.role, q, k)[None, None]


def block_mask(batch: PackedBatch):
    """The same mask as a FlexAttention BlockMask: only the non-empty 128x128 blocks are computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    segment, role = batch.segment, batch.role

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(segment, role, q_idx, kv_idx)

    n = segment.shape[0]
    return create_block_mask(mask_mod, B=None, H=None, Q_LEN=n, KV_LEN=n, device=segment.device)
