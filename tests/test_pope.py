"""POPE: negatives sampling (random, popular, adversarial), yes/no reading, and metrics by hand."""

import pytest

from vlmpref.eval.pope import pope_metrics, question, sample_probes, says_yes

OBJECTS = ("a", "b", "c", "d", "e")
# frequency: a 3, b 2, c 3, d 2, e 1; co-occurrence: a-b 2, c-d 2, c-e 1
TRUTHS = [{"a", "b"}, {"a", "b"}, {"c", "d"}, {"c", "d"}, {"c", "e"}, {"a"}]


def _negatives(probes, image, strategy):
    return [p.object for p in probes if p.image == image and p.strategy == strategy and not p.label]


def _positives(probes, image, strategy):
    return [p.object for p in probes if p.image == image and p.strategy == strategy and p.label]


def test_popular_and_adversarial_negatives_hand_computed():
    """The paper's rules: popular = most frequent absent; adversarial = per present object, its most frequent partner."""
    probes = sample_probes(TRUTHS, OBJECTS, per_image=3, seed=0)
    # image 5 holds only a: one present object, so one negative per strategy
    assert _negatives(probes, 5, "popular") == ["c"]         # the most frequent absent object (a 3, c 3, name)
    assert _negatives(probes, 5, "adversarial") == ["b"]     # the object seen most often with a
    # image 0 holds a and b: two negatives by frequency; a and b have no partner outside the image, so the
    # adversarial negatives fall back to random objects of the split, never a or b
    assert _negatives(probes, 0, "popular") == ["c", "d"]
    assert set(_negatives(probes, 0, "adversarial")) <= {"c", "d", "e"}
    assert len(set(_negatives(probes, 0, "adversarial"))) == 2
    # image 4 holds c and e: c's partner outside the image is d (twice); e's only partner is c, inside, so random
    positives = _positives(probes, 4, "adversarial")
    negatives = _negatives(probes, 4, "adversarial")
    assert negatives[positives.index("c")] == "d"
    assert negatives[positives.index("e")] in {"a", "b"}
    assert _negatives(probes, 4, "popular") == ["a", "b"]


def test_absent_objects_exclude_caption_objects():
    """With COCO-style ground truth, present = segmentation labels; absent = named neither there nor in captions."""
    truths, present = [{"a", "b", "c"}], [{"a"}]
    probes = sample_probes(truths, OBJECTS, per_image=3, seed=0, present=present)
    assert _positives(probes, 0, "random") == ["a"]
    for strategy in ("random", "popular", "adversarial"):
        assert set(_negatives(probes, 0, strategy)) <= {"d", "e"}


def test_probes_are_balanced_shared_and_deterministic():
    probes = sample_probes(TRUTHS, OBJECTS, per_image=3, seed=0)
    for image, truth in enumerate(TRUTHS):
        positives = {s: [p.object for p in probes if p.image == image and p.strategy == s and p.label]
                     for s in ("random", "popular", "adversarial")}
        assert positives["random"] == positives["popular"] == positives["adversarial"]   # same present objects
        assert set(positives["random"]) <= truth
        for strategy in positives:
            negatives = _negatives(probes, image, strategy)
            assert len(negatives) == len(positives[strategy]) == min(3, len(truth))
            assert not set(negatives) & truth
    assert probes == sample_probes(TRUTHS, OBJECTS, per_image=3, seed=0)


def test_no_probes_when_nothing_is_absent():
    assert sample_probes([{"a", "b"}], ("a", "b")) == []


@pytest.mark.parametrize("answer,expected", [
    ("Yes, there is.", True), ("No.", False), ("no", False), ("There is no dog.", False),
    ("I don't think so.", False), ("There is a dog.", True), ("", False), ("Yes... or no?", True)])
def test_says_yes(answer, expected):
    assert says_yes(answer) is expected


def test_question_article():
    assert question("dog") == "Is there a dog in the image?"
    assert question("umbrella") == "Is there an umbrella in the image?"


def test_pope_metrics_hand_computed():
    labels = [True, True, True, False, False, False]
    predictions = [True, True, False, True, False, False]      # TP 2, FN 1, FP 1, TN 2
    m = pope_metrics(labels, predictions)
    assert m["accuracy"]["value"] == pytest.approx(4 / 6) and m["accuracy"]["n"] == 6
    assert m["precision"]["value"] == pytest.approx(2 / 3) and m["precision"]["n"] == 3
    assert m["recall"]["value"] == pytest.approx(2 / 3) and m["recall"]["n"] == 3
    assert m["f1"]["value"] == pytest.approx(2 * 2 / (3 + 3))
    assert m["yes_ratio"]["value"] == pytest.approx(0.5)
    low, high = m["f1"]["ci95"]
    assert 0 <= low < 2 / 3 < high <= 1
