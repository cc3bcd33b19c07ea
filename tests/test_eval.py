"""Metrics against hand-computed values."""

import math

import pytest
import torch

from vlmpref.eval import stats
from vlmpref.eval.answers import answer_correct, key_match, named_objects, objects_match, token_f1
from vlmpref.eval.preference import PairScores, preference_metrics


@pytest.mark.parametrize("answer,key,expected", [
    ("The circle is red.", "red", True),
    ("The circle is RED!", "red", True),
    ("It is red or blue.", "red", False),          # a rival color: not an answer
    ("The circle is blue.", "red", False),
    ("There are 3 shapes.", "three", True),         # digits read as words
    ("There are three shapes, not two.", "three", False),
    ("Yes, there is a square.", "yes", True),
    ("No, there is no square.", "no", True),
    ("No. Yes.", "yes", False),                     # the first yes/no decides
    ("A blue triangle.", "triangle", True),
    ("Two triangles and a circle.", "triangle", False),
    ("", "red", False),
    ("The answer is new york city", "new york", True),  # keys outside the known families: phrase match
])
def test_key_match(answer, key, expected):
    assert key_match(answer, key) is expected


def test_named_objects_and_plurals():
    assert named_objects("A red circle, two crosses and a blue square.") == [
        ("red", "circle"), (None, "cross"), ("blue", "square")]


def test_objects_match_needs_every_object_with_its_color():
    truth = [{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"}]
    assert objects_match("A red circle and a blue square.", truth)
    assert not objects_match("A red circle.", truth)
    assert not objects_match("A red circle, a blue square and a green cross.", truth)
    assert not objects_match("A red circle and a green square.", truth)


def test_token_f1_hand_computed():
    # pred: the cat sat (3), ref: the cat sat down (4): common 3 -> P 1, R .75, F1 = 2*.75/1.75
    assert token_f1("The cat sat", "the cat sat down.") == pytest.approx(2 * 0.75 / 1.75)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_answer_correct_dispatch():
    assert answer_correct("The circle is red.", "The circle is red.", key="red")
    assert answer_correct("A red circle.", "A red circle.", objects=[{"shape": "circle", "color": "red"}])
    assert answer_correct("the cat sat", "the cat sat down")      # F1 0.86 >= 0.5
    assert not answer_correct("a dog", "the cat sat down")


def test_wilson_interval_hand_computed():
    low, high = stats.wilson(5, 10)
    # p = .5, z = 1.96: centre .5, half = 1.96 * sqrt(.025 + .0096) / 1.384 = .2634
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == pytest.approx(1.0)


def test_bootstrap_interval_contains_the_mean_and_is_deterministic():
    values = [0.0, 1.0] * 50
    assert stats.bootstrap(values) == stats.bootstrap(values)
    low, high = stats.bootstrap(values)
    assert low < 0.5 < high and high - low < 0.3


def test_preference_metrics_hand_computed():
    policy = PairScores(chosen_logps=[-2.0, -6.0, -3.0], rejected_logps=[-4.0, -5.0, -9.0],
                        chosen_tokens=[2, 2, 1], rejected_tokens=[2, 5, 3])
    reference = PairScores(chosen_logps=[-3.0, -6.0, -3.0], rejected_logps=[-3.0, -4.0, -9.0],
                           chosen_tokens=[2, 2, 1], rejected_tokens=[2, 5, 3])
    m = preference_metrics(policy, reference, beta=0.5)
    # per token: (-1 > -2) yes, (-3 > -1) no, (-3 > -3) no
    assert m["length_normalized_accuracy"]["value"] == pytest.approx(1 / 3)
    # sums: (-2 > -4) yes, (-6 > -5) no, (-3 > -9) yes
    assert m["logprob_accuracy"]["value"] == pytest.approx(2 / 3)
    # margins: .5*((1)-(-1)) = 1, .5*((0)-(-1)) = .5, 0
    assert m["reward_margin"]["value"] == pytest.approx(0.5)
    assert m["reward_accuracy"]["value"] == pytest.approx(2 / 3)
    assert m["reward_accuracy"]["n"] == 3


def test_score_pairs_equals_full_logit_computation(tiny_model_dir, shapes_dir):
    """Answer log-probs from the answer-only logits equal a plain full-sequence computation."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from vlmpref.data import load_preference_data
    from vlmpref.data.normalize import trl_example
    from vlmpref.eval.preference import score_pairs
    from vlmpref.models import load_model, load_processor

    model, processor = load_model(str(tiny_model_dir)), load_processor(str(tiny_model_dir))
    rows = list(load_preference_data(str(shapes_dir), "test[:3]", num_proc=1).dataset)
    scores = score_pairs(model, processor, rows, batch_size=2)
    batch = DataCollatorForVisionPreference(processor=processor)([trl_example(r) for r in rows])
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "completion_mask"}).logits
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    sums = (logps * batch["completion_mask"][:, 1:]).sum(1)
    assert scores.chosen_logps == pytest.approx(sums[:3].tolist(), rel=1e-5)
    assert scores.rejected_logps == pytest.approx(sums[3:].tolist(), rel=1e-5)
    assert scores.chosen_tokens == batch["completion_mask"][:3].sum(1).tolist()
    assert all(math.isfinite(x) and x < 0 for x in scores.chosen_logps)


def test_accuracy_rule_order():
    from vlmpref.eval.answers import accuracy_rule

    shapes = [{"shape": "square", "color": "purple"}]
    assert accuracy_rule("The circle is red.", key="red") == ("key", "red")
    assert accuracy_rule("A purple square.", objects=shapes) == ("objects", None)   # not the 2-word phrase
    assert accuracy_rule("Two dogs.", objects=["dog"]) == ("short_reference", "two dogs")
    assert accuracy_rule("A man holds a red umbrella in the rain.") == ("token_f1", None)
    # the object rule: an extra object makes a description wrong even if it starts right
    assert not answer_correct("A purple square and a blue circle.", "A purple square.", objects=shapes)
    assert answer_correct("There are 2 dogs.", "Two dogs.")


def test_ratio_of_sums_and_paired_change():
    m = stats.ratio_of_sums([1, 0, 1], [2, 1, 1])
    assert m["value"] == pytest.approx(2 / 4) and m["n"] == 4 and m["examples"] == 3
    assert 0 <= m["ci95"][0] <= 0.5 <= m["ci95"][1] <= 1
    # the same shift on every example: the paired interval has no width, although the values vary a lot
    before, after = [0.1, 0.5, 0.9, 0.3], [0.3, 0.7, 1.1, 0.5]
    change = stats.paired_difference(before, after)
    assert change["value"] == pytest.approx(0.2) and change["n"] == 4
    assert change["ci95"] == pytest.approx([0.2, 0.2])
    assert stats.mean(before)["ci95"][1] - stats.mean(before)["ci95"][0] > 0.3
    # 9 of 10 improve: the interval excludes zero
    assert stats.paired_difference([0] * 10, [1] * 9 + [0])["ci95"][0] > 0


def test_metric_dicts_name_their_interval():
    assert stats.proportion([True, False])["ci"] == "wilson"
    assert stats.mean([1.0, 2.0])["ci"] == "bootstrap"
    assert stats.proportion([])["value"] is None and stats.mean([])["value"] is None
