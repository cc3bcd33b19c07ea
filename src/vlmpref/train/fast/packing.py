"""Tokenize preference pairs exactly as TRL does, and pack them into one shared-prefix sequence.

TRL feeds `[prompt | chosen]` and `[prompt | rejected]` as two sequences. Here one pair is one sequence

    [ prompt (image tokens included) | chosen | rejected ]

where rejected tokens see the prompt but not chosen, and their positions restart where the prompt ends,
so every token sees exactly the context it has in TRL's layout. Several pairs are packed into one row
without padding; tokens of different pairs never see each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from trl.data_utils import apply_chat_template, prepare_multimodal_messages

from vlmpref.data.normalize import trl_example
from vlmpref.train.fast.families import split_processor_outputs

PROMPT, CHOSEN, REJECTED = 0, 1, 2


@dataclass
class PairTokens:
    """One tokenized pair: prompt ids (image tokens expanded), answer ids, and the processor's image tensors."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    pixel_inputs: dict[str, torch.Tensor] = field(default_factory=dict)  # pixel_values, pixel_attention_mask, ...
    pair_id: int = -1
    # token layout from the processor that positions and masks read (image_grid_thw, mm_token_type_ids, ...):
    # kept when the pixels are dropped for cached features (families.split_processor_outputs)
    layout: dict[str, torch.Tensor] = field(default_factory=dict)
    image_key: str | None = None  # content key of the pair's images, for the feature cache

    def without_pixels(self) -> "PairTokens":
        """The same tokens without the image tensors, for a pair whose image features are cached."""
        return replace(self, pixel_inputs={})


def prompt_too_long(pair_id: int, prompt_tokens: int, max_length: int) -> ValueError:
    """The one sentence for a max_length that would cut a prompt, image tokens included."""
    return ValueError(f"max_length={max_length} is shorter than the {prompt_tokens:,}-token prompt of pair {pair_id} "
                      "(its image tokens included), and image tokens cannot be cut; set max_length=None in "
                      f"DPOConfig (TRL's default is 1024) or above {prompt_tokens:,} plus the answers' length.")


def pair_texts(row: dict, processor) -> dict[str, str]:
    """Prompt / chosen / rejected strings, from the chat template, as TRL's vision collator renders them."""
    example = trl_example(row)
    example["prompt"] = prepare_multimodal_messages(example["prompt"], images=example["images"])
    example["chosen"] = prepare_multimodal_messages(example["chosen"])
    example["rejected"] = prepare_multimodal_messages(example["rejected"])
    return apply_chat_template(example, processor)


def tokenize_pair(row: dict, processor, pair_id: int = -1, image_key: str | None = None,
                  with_pixels: bool = True, max_length: int | None = None) -> PairTokens:
    """TRL-identical tokens for one row in the internal form (images, prompt, chosen, rejected).

    `with_pixels=False` skips image preprocessing when the image features come from the cache; the prompt
    ids are still produced by the processor, which needs the images only for their sizes. `max_length` cuts
    each answer so that prompt + answer fits, as TRL's `keep_start` truncation does; a prompt that leaves no
    room is refused, since cutting it would cut image tokens.
    """
    texts = pair_texts(row, processor)
    images = trl_example(row)["images"]
    prompt = processor(images=[images] if images else None, text=[texts["prompt"]], add_special_tokens=False,
                       return_tensors="pt")
    tokenizer = processor.tokenizer
    chosen = tokenizer(texts["chosen"], add_special_tokens=False)["input_ids"]
    rejected = tokenizer(texts["rejected"], add_special_tokens=False)["input_ids"]
    pixels, layout = split_processor_outputs(prompt)
    pixels = pixels if with_pixels else {}
    prompt_ids = prompt["input_ids"][0].tolist()
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room <= 0:
            raise prompt_too_long(pair_id, len(prompt_ids), max_length)
        chosen, rejected = chosen[:room], rejected[:room]
    return PairTokens(prompt_ids=prompt_ids, chosen_ids=list(chosen), rejected_ids=list(rejected),
                      pixel_inputs=pixels, pair_id=pair_id, image_key=image_key, layout=layout)


# Rows (layout "rows") are padded to a multiple of this many tokens: shapes then repeat from batch to batch, so
# attention kernels, the allocator and compiled code reuse what they prepared for an earlier batch
ROW_MULTIPLE = 64


@dataclass
class PackedBatch:
    """Several pairs, as one padding-free row (`packed`) or one padded row per pair (`rows`).

    Token-level tensors are [R, L]; `segment` is the pair index of each token (-1 for padding) and `role`
    says prompt / chosen / rejected. `logit_index` addresses the flattened [R * L] tokens. Every index is
    computed here, on the CPU, so the forward pass never waits for the GPU to find positions.
    """

    input_ids: torch.Tensor            # [R, L]
    position_ids: torch.Tensor         # [R, L]
    segment: torch.Tensor              # [R, L] pair index, -1 on padding
    role: torch.Tensor                 # [R, L] PROMPT / CHOSEN / REJECTED (PROMPT on padding)
    logit_index: torch.Tensor          # [T] flat positions whose hidden state predicts an answer token
    target_ids: torch.Tensor           # [T] the answer token each of them predicts
    target_pair: torch.Tensor          # [T] pair index of each target
    target_is_chosen: torch.Tensor     # [T] True for chosen targets, False for rejected
    chosen_targets: torch.Tensor       # [Tc] indices into the T targets that are chosen-answer tokens
    chosen_lengths: torch.Tensor       # [P]
    rejected_lengths: torch.Tensor     # [P]
    pixel_inputs: list[dict]           # per pair, the processor's image tensors (empty with cached features)
    pair_ids: list[int]
    image_keys: list[str | None]
    image_index: torch.Tensor | None = None  # flat positions of the image tokens, in order
    token_count: int = 0               # tokens that are not padding
    pairs: list[PairTokens] = field(default_factory=list, repr=False)  # what was packed, to re-pack a part
    layout: str = "rows"
    pad_id: int = 0
    image_token_id: int | None = None
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None

    TENSORS = ("input_ids", "position_ids", "segment", "role", "logit_index", "target_ids", "target_pair",
               "target_is_chosen", "chosen_targets", "chosen_lengths", "rejected_lengths", "image_index",
               "ref_chosen_logps", "ref_rejected_logps")

    @property
    def num_pairs(self) -> int:
        return len(self.pair_ids)

    @property
    def num_tokens(self) -> int:
        return self.token_count

    def split(self, size: int) -> list["PackedBatch"]:
        """The same pairs as batches of `size` pairs each, reference log-probs included (for a smaller forward)."""
        parts = []
        for start in range(0, self.num_pairs, size):
            part = pack(self.pairs[start:start + size], layout=self.layout, pad_id=self.pad_id,
                        image_token_id=self.image_token_id)
            if self.ref_chosen_logps is not None:
                part.ref_chosen_logps = self.ref_chosen_logps[start:start + size]
                part.ref_rejected_logps = self.ref_rejected_logps[start:start + size]
            parts.append(part)
        return parts

    def pin_memory(self) -> "PackedBatch":
        """Page-locked copies, so that `to(device, non_blocking=True)` returns at once (DataLoader calls this)."""
        for name in self.TENSORS:
            value = getattr(self, name)
            if value is not None and value.device.type == "cpu":
                setattr(self, name, value.pin_memory())
        self.pixel_inputs = [{k: v.pin_memory() for k, v in p.items()} for p in self.pixel_inputs]
        return self

    def to(self, device) -> "PackedBatch":
        for name in self.TENSORS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device, non_blocking=True))
        self.pixel_inputs = [{k: v.to(device, non_blocking=True) for k, v in p.items()} for p in self.pixel_inputs]
        return self


def _pair_layout(pair: PairTokens, p_index: int, offset: int):
    """Tokens, positions, roles and answer predictions of one [prompt | chosen | rejected] block at `offset`."""
    n_prompt, n_chosen, n_rejected = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    ids = pair.prompt_ids + pair.chosen_ids + pair.rejected_ids
    positions = list(range(n_prompt + n_chosen)) + list(range(n_prompt, n_prompt + n_rejected))
    roles = [PROMPT] * n_prompt + [CHOSEN] * n_chosen + [REJECTED] * n_rejected
    last_prompt = offset + n_prompt - 1
    chosen_start = offset + n_prompt
    rejected_start = chosen_start + n_chosen
    predictors, targets, is_chosen = [], [], []
    # The first answer token of both answers is predicted by the last prompt token
    for start, answer, chosen in ((chosen_start, pair.chosen_ids, True), (rejected_start, pair.rejected_ids, False)):
        predictors += [last_prompt] + list(range(start, start + len(answer) - 1))
        targets += answer
        is_chosen += [chosen] * len(answer)
    return ids, positions, roles, predictors, targets, is_chosen


def pack(pairs: list[PairTokens], layout: str = "rows", pad_id: int = 0, image_token_id: int | None = None,
         multiple: int = ROW_MULTIPLE) -> PackedBatch:
    """Lay pairs out as [prompt | chosen | rejected] blocks: all in one row (`packed`, for block-sparse
    attention) or one right-padded row per pair (`rows`, for dense masks, whose cost grows with row length^2),
    padded to a multiple of `multiple` tokens. `image_token_id` lets the image tokens be located here."""
    rows: list[dict] = []
    logit_index, targets, target_pair, target_is_chosen = [], [], [], []
    for p_index, pair in enumerate(pairs):
        if layout == "rows" or not rows:
            rows.append({"ids": [], "pos": [], "seg": [], "role": []})
        row = rows[-1]
        offset = len(row["ids"])
        ids, positions, roles, predictors, answer, is_chosen = _pair_layout(pair, p_index, offset)
        row["ids"] += ids
        row["pos"] += positions
        row["seg"] += [p_index] * len(ids)
        row["role"] += roles
        row_start = len(rows) - 1  # flat index = row * L + column, with L known once all rows are built
        logit_index += [(row_start, c) for c in predictors]
        targets += answer
        target_pair += [p_index] * len(answer)
        target_is_chosen += is_chosen
    longest = max(len(r["ids"]) for r in rows)
    length = -(-longest // multiple) * multiple if layout == "rows" else longest

    def padded(key, fill):
        return torch.tensor([r[key] + [fill] * (length - len(r[key])) for r in rows])

    input_ids = padded("ids", pad_id)
    image_index = None
    if image_token_id is not None:
        image_index = (input_ids.reshape(-1) == image_token_id).nonzero().squeeze(-1)
    is_chosen = torch.tensor(target_is_chosen, dtype=torch.bool)
    return PackedBatch(
        input_ids=input_ids, position_ids=padded("pos", 0), segment=padded("seg", -1),
        role=padded("role", PROMPT), logit_index=torch.tensor([r * length + c for r, c in logit_index]),
        target_ids=torch.tensor(targets), target_pair=torch.tensor(target_pair), target_is_chosen=is_chosen,
        chosen_targets=is_chosen.nonzero().squeeze(-1),
        chosen_lengths=torch.tensor([len(p.chosen_ids) for p in pairs]),
        rejected_lengths=torch.tensor([len(p.rejected_ids) for p in pairs]),
        pixel_inputs=[p.pixel_inputs for p in pairs], pair_ids=[p.pair_id for p in pairs],
        image_keys=[p.image_key for p in pairs], image_index=image_index,
        token_count=sum(len(r["ids"]) for r in rows), pairs=list(pairs), layout=layout, pad_id=pad_id,
        image_token_id=image_token_id)


def allowed(seg_q, role_q, seg_k, role_k, q, k):
    """May query token q attend to key token k? Same pair, causal, rejected never sees chosen.
    Padding (segment -1) attends only to itself, so no softmax row is empty."""
    same_pair = (seg_q == seg_k) & (seg_q >= 0) & (k <= q) & ~((role_q == REJECTED) & (role_k == CHOSEN))
    return same_pair | ((seg_q < 0) & (q == k))


def dense_mask(batch: PackedBatch) -> torch.Tensor:
    """The shared-prefix mask as a [R, 1, L, L] boolean tensor (True = attend), for sdpa and eager."""
    length = batch.segment.shape[1]
    idx = torch.arange(length, device=batch.segment.device)
    seg, role = batch.segment, batch.role
    mask = allowed(seg[:, :, None], role[:, :, None], seg[:, None, :], role[:, None, :], idx[:, None], idx[None, :])
    return mask[:, None]


def block_mask(batch: PackedBatch):
    """The same mask as a FlexAttention BlockMask: only the non-empty 128x128 blocks are computed."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg, role = batch.segment, batch.role

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(seg[b, q_idx], role[b, q_idx], seg[b, kv_idx], role[b, kv_idx], q_idx, kv_idx)

    rows, length = seg.shape
    return create_block_mask(mask_mod, B=rows, H=None, Q_LEN=length, KV_LEN=length, device=seg.device)
