"""Does the model prefer the chosen answer? Log-probabilities of both answers of held-out pairs.

Inputs are built by TRL's own vision preference collator, so the numbers are the ones DPO training
optimizes. Logits are computed only over the answer region (`logits_to_keep`), never over the prompt.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from vlmpref.data.normalize import trl_example
from vlmpref.eval import stats


@dataclass
class PairScores:
    """Summed answer log-probabilities and answer lengths (tokens), one entry per pair."""

    chosen_logps: list[float]
    rejected_logps: list[float]
    chosen_tokens: list[int]
    rejected_tokens: list[int]


def answer_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence summed log-probs of completion tokens and completion lengths, for a collated batch."""
    completion = batch["completion_mask"]
    first = int(completion.float().argmax(dim=1).min())
    keep = completion.shape[1] - first + 1  # logits for the positions that predict completion tokens
    inputs = {k: v for k, v in batch.items() if k != "completion_mask"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits.float()
    targets = batch["input_ids"][:, -keep + 1:]
    mask = completion[:, -keep + 1:].bool()
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (logps * mask).sum(dim=1), mask.sum(dim=1)


@torch.no_grad()
def score_pairs(model, processor, rows, batch_size: int = 8, desc: str = "Scoring pairs",
                disable_adapter: bool = False) -> PairScores:
    """Log-probabilities of chosen and rejected answers for every row (adapter off if `disable_adapter`)."""
    collator = DataCollatorForVisionPreference(processor=processor)
    device = model.get_input_embeddings().weight.device
    dtype = model.get_input_embeddings().weight.dtype
    was_training = model.training
    model.eval()
    context = model.disable_adapter() if disable_adapter else contextlib.nullcontext()
    out = PairScores([], [], [], [])
    rows = list(rows)
    try:
        with context:
            for start in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
                chunk = rows[start:start + batch_size]
                batch = collator([trl_example(r) for r in chunk])
                batch = {k: v.to(device) for k, v in batch.items()}
                if "pixel_values" in batch:
                    batch["pixel_values"] = batch["pixel_values"].to(dtype)
                logps, lengths = answer_logps(model, batch)
                n = len(chunk)
                out.chosen_logps += logps[:n].tolist()
                out.rejected_logps += logps[n:].tolist()
                out.chosen_tokens += lengths[:n].tolist()
                out.rejected_tokens += lengths[n:].tolist()
    finally:
        model.train(was_training)
    return out


def preference_metrics(policy: PairScores, reference: PairScores | None = None, beta: float = 0.1) -> dict:
    """Held-out preference metrics.

    `length_normalized_accuracy`: share of pairs where the mean per-token log-prob of chosen is higher than
    of rejected; needs no reference, so a base model gets a score. With a reference (the base, adapter off):
    `reward_accuracy` and `reward_margin`, DPO's implicit reward beta * (log pi - log pi_ref).
    """
    norm = [c / max(nc, 1) > r / max(nr, 1) for c, r, nc, nr in zip(
        policy.chosen_logps, policy.rejected_logps, policy.chosen_tokens, policy.rejected_tokens)]
    metrics = {"length_normalized_accuracy": stats.proportion(norm),
               "logprob_accuracy": stats.proportion([c > r for c, r in zip(policy.chosen_logps,
                                                                          policy.rejected_logps)])}
    if reference is not None:
        margins = [beta * ((c - rc) - (r - rr)) for c, r, rc, rr in zip(
            policy.chosen_logps, policy.rejected_logps, reference.chosen_logps, reference.rejected_logps)]
        metrics["reward_accuracy"] = stats.proportion([m > 0 for m in margins])
        metrics["reward_margin"] = stats.mean(margins)
    return metrics
