"""DPO-family losses on summed log-probs, written to give exactly TRL 1.16's values.

Each function returns the per-pair loss; `combined_loss` sums the mean of each, weighted, as TRL's
multi-loss does. The formulas follow TRL's `DPOTrainer._compute_loss` (reverse-KL scores, no WPO weights).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


LOSS_TYPES = frozenset({"sigmoid", "hinge", "ipo", "robust", "sigmoid_norm", "apo_zero", "apo_down", "sft"})


@dataclass
class LossInputs:
    chosen_logps: torch.Tensor       # [P] policy, summed over answer tokens
    rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor   # [P] reference (adapter off)
    ref_rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor     # [P] answer tokens
    rejected_lengths: torch.Tensor
    chosen_token_logps: torch.Tensor  # [sum of chosen lengths] per-token policy log-probs (SFT term), pair by pair
    # Pairs per TRL micro-batch for the SFT term (0: this whole batch). TRL averages the SFT term over the tokens of
    # its micro-batch, so the term depends on the configured per-device batch; when the fast engine packs several
    # of those micro-batches into one forward, each keeps its own token mean (see `sft_loss`)
    sft_group: int = 0
    chosen_token_pairs: torch.Tensor | None = None  # [sum of chosen lengths] the pair (batch index) of each token

    @property
    def chosen_logratios(self):
        return self.chosen_logps - self.ref_chosen_logps

    @property
    def rejected_logratios(self):
        return self.rejected_logps - self.ref_rejected_logps


def per_pair_loss(kind: str, x: LossInputs, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    delta = x.chosen_logratios - x.rejected_logratios
    if kind == "sigmoid":
        return -F.logsigmoid(beta * delta)
    if kind == "hinge":
        return torch.relu(1 - beta * delta)
    if kind == "ipo":
        # TRL averages the log-ratios per answer token for IPO (confirmed with the IPO authors, per TRL)
        avg = x.chosen_logratios / x.chosen_lengths.clamp(min=1) - x.rejected_logratios / x.rejected_lengths.clamp(min=1)
        return (avg - 1 / (2 * beta)) ** 2
    if kind == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        return (clean - flipped) / (1 - 2 * label_smoothing)
    if kind == "sigmoid_norm":
        avg = x.chosen_logratios / x.chosen_lengths.clamp(min=1) - x.rejected_logratios / x.rejected_lengths.clamp(min=1)
        return -F.logsigmoid(beta * avg)
    if kind == "apo_zero":
        return (1 - torch.sigmoid(beta * x.chosen_logratios)) + torch.sigmoid(beta * x.rejected_logratios)
    if kind == "apo_down":
        return torch.sigmoid(beta * x.chosen_logratios) + (1 - torch.sigmoid(beta * delta))
    if kind == "sft":
        return sft_loss(x).expand(x.chosen_logps.shape[0])
    raise ValueError(f"unknown loss type {kind!r}")


def sft_loss(x: LossInputs) -> torch.Tensor:
    """TRL's "sft" term: the mean negative log-likelihood over the chosen tokens of a micro-batch. With
    `x.sft_group` = g, the batch is taken as micro-batches of g pairs each (the configured per-device batch) and
    their token means are averaged, as gradient accumulation averages TRL's micro-batches: the optimizer step is
    then the same however many pairs one forward packs."""
    pairs = x.chosen_lengths.shape[0]
    group = x.sft_group
    if not group or group >= pairs or pairs % group:
        return -x.chosen_token_logps.mean()
    if x.chosen_token_pairs is not None:
        owner = x.chosen_token_pairs.long() // group
    else:  # tokens pair by pair
        owner = torch.repeat_interleave(torch.arange(pairs, device=x.chosen_lengths.device) // group,
                                        x.chosen_lengths.long(), output_size=x.chosen_token_logps.shape[0])
    groups = pairs // group
    sums = x.chosen_token_logps.new_zeros(groups).index_add(0, owner, x.chosen_token_logps)
    counts = x.chosen_lengths.reshape(groups, group).sum(1).to(sums.dtype)
    return -(sums / counts).mean()


def combined_loss(kinds: list[str], weights: list[float] | None, x: LossInputs, beta: float,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    weights = weights or [1.0] * len(kinds)
    loss = 0.0
    for kind, weight in zip(kinds, weights, strict=True):
        loss = loss + per_pair_loss(kind, x, beta, label_smoothing).mean() * weight
    return loss
