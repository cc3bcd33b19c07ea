"""The fast engine's DPO-family losses against values worked out by hand (TRL's own losses: test_fast_engine.py).

Two pairs, beta = 0.5, sigma(x) = 1 / (1 + e^-x):

    pair   policy chosen / rejected   reference chosen / rejected   answer tokens   log-ratios      delta
    A      -10 / -14                  -11 / -12                     4 / 5           +1 / -2         +3
    B      -20 /  -8                  -19 /  -9                     2 / 4           -1 / +1         -2
"""

import math

import pytest
import torch

from vlmpref.train.fast.losses import LOSS_TYPES, LossInputs, combined_loss, per_pair_loss

BETA = 0.5


def sigma(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.fixture
def pairs() -> LossInputs:
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return LossInputs(chosen_logps=t(-10, -20), rejected_logps=t(-14, -8), ref_chosen_logps=t(-11, -19),
                      ref_rejected_logps=t(-12, -9), chosen_lengths=t(4, 2), rejected_lengths=t(5, 4),
                      # chosen answer tokens, A's four then B's two: mean negative log-likelihood 6 / 6 = 1
                      chosen_token_logps=t(-0.5, -1.5, -1.0, -1.0, -2.0, 0.0))


# per pair (A, B), each formula written out with the numbers of the table above
HAND = {
    # -log sigma(beta * delta): beta * delta = 1.5 and -1
    "sigmoid": (-math.log(sigma(1.5)), -math.log(sigma(-1.0)), (0.2014133, 1.3132617)),
    # relu(1 - beta * delta)
    "hinge": (max(0.0, 1 - 1.5), max(0.0, 1 + 1.0), (0.0, 2.0)),
    # (per-token log-ratio difference - 1 / (2 beta))^2: A 1/4 + 2/5 = 0.65, B -1/2 - 1/4 = -0.75
    "ipo": ((0.65 - 1) ** 2, (-0.75 - 1) ** 2, (0.1225, 3.0625)),
    # -log sigma(beta * per-token difference)
    "sigmoid_norm": (-math.log(sigma(0.5 * 0.65)), -math.log(sigma(0.5 * -0.75)), (0.5437926, 0.8981233)),
    # 1 - sigma(beta * chosen log-ratio) + sigma(beta * rejected log-ratio)
    "apo_zero": (1 - sigma(0.5) + sigma(-1.0), 1 - sigma(-0.5) + sigma(0.5), (0.6464821, 1.2449187)),
    # sigma(beta * chosen log-ratio) + 1 - sigma(beta * delta)
    "apo_down": (sigma(0.5) + 1 - sigma(1.5), sigma(-0.5) + 1 - sigma(-1.0), (0.8048849, 1.1085992)),
    # label smoothing 0.1: (-0.9 log sigma(beta delta) + 0.1 log sigma(-beta delta)) / 0.8
    "robust": ((-0.9 * math.log(sigma(1.5)) + 0.1 * math.log(sigma(-1.5))) / 0.8,
               (-0.9 * math.log(sigma(-1.0)) + 0.1 * math.log(sigma(1.0))) / 0.8, (0.0139133, 1.4382617)),
    # the mean negative log-likelihood of every chosen token of the batch, the same for each pair
    "sft": (1.0, 1.0, (1.0, 1.0)),
}


def test_every_loss_type_has_a_hand_computed_value():
    assert set(HAND) == LOSS_TYPES


@pytest.mark.parametrize("kind", sorted(HAND))
def test_loss_equals_the_value_computed_by_hand(pairs, kind):
    a, b, rounded = HAND[kind]
    assert (a, b) == pytest.approx(rounded, abs=1e-7)  # the formulas above give the numbers written beside them
    got = per_pair_loss(kind, pairs, BETA, label_smoothing=0.1 if kind == "robust" else 0.0)
    assert got.tolist() == pytest.approx([a, b], abs=1e-12)


def test_combined_loss_is_the_weighted_sum_of_the_means(pairs):
    # mean sigmoid over A and B, plus 0.5 x the SFT term: (0.2014133 + 1.3132617) / 2 + 0.5 x 1 = 1.2573375
    loss = combined_loss(["sigmoid", "sft"], [1.0, 0.5], pairs, BETA)
    assert loss.item() == pytest.approx(1.2573375, abs=1e-7)


def test_sft_term_keeps_the_token_mean_of_each_configured_micro_batch(pairs):
    """Packing A and B into one forward when the configured per-device batch is 1: TRL would average A's token mean
    (1 + 1.5 + ... : (0.5 + 1.5 + 1.0 + 1.0) / 4 = 1.0) and B's ((2.0 + 0.0) / 2 = 1.0) over its two micro-batches —
    not the token mean of the packed batch. Unequal means show the difference: B's tokens made -3 and -1."""
    import dataclasses

    uneven = dataclasses.replace(pairs, chosen_token_logps=torch.tensor([-0.5, -1.5, -1.0, -1.0, -3.0, -1.0],
                                                                         dtype=torch.float64))
    # one micro-batch of both pairs (TRL with per-device batch 2): 8 / 6 tokens
    assert per_pair_loss("sft", uneven, BETA).tolist() == pytest.approx([8 / 6, 8 / 6], abs=1e-12)
    # micro-batches of one pair (per-device batch 1, packed by the fast engine): (4 / 4 + 4 / 2) / 2 = 1.5
    one = dataclasses.replace(uneven, sft_group=1)
    assert per_pair_loss("sft", one, BETA).tolist() == pytest.approx([1.5, 1.5], abs=1e-12)
    # the pair of each token given explicitly (tokens in another order): the same
    shuffled = dataclasses.replace(one, chosen_token_logps=uneven.chosen_token_logps.flip(0),
                                   chosen_token_pairs=torch.tensor([1, 1, 0, 0, 0, 0]))
    assert per_pair_loss("sft", shuffled, BETA).tolist() == pytest.approx([1.5, 1.5], abs=1e-12)
