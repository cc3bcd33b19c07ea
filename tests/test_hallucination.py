"""Object vocabularies and CHAIR against hand-computed values: synonyms, plurals, negations, empty answers."""

import json

import pytest

from vlmpref.errors import VlmprefError
from vlmpref.eval.hallucination import chair_answer, chair_metrics
from vlmpref.eval.vocab import load_vocabulary, pick_vocabulary, plural

COCO = load_vocabulary("coco80")
SHAPES = load_vocabulary("shapes")


def test_coco_vocabulary_has_the_80_categories():
    assert len(COCO.objects) == 80 and len(set(COCO.objects)) == 80
    assert {"person", "hot dog", "teddy bear", "hair drier", "dining table", "cell phone"} <= set(COCO.objects)


@pytest.mark.parametrize("word,expected", [
    ("dog", "dogs"), ("bus", "buses"), ("puppy", "puppies"), ("toy", "toys"), ("knife", "knives"),
    ("man", "men"), ("policeman", "policemen"), ("person", "people"), ("sheep", "sheep"), ("cross", "crosses")])
def test_plural(word, expected):
    assert plural(word) == expected


@pytest.mark.parametrize("text,expected", [
    ("A dog and two cats.", ["dog", "cat"]),
    ("Two puppies play with a kitten.", ["dog", "cat"]),              # synonyms, plural of a synonym
    ("People, men and children.", ["person"]),                         # irregular plurals; each object once
    ("There is no dog.", []),                                           # negation
    ("I don't see any cats.", []),                                      # n't
    ("A room without a television.", []),
    ("There are no dogs or cats, but there is a horse.", ["horse"]),   # the scope ends at 'but'
    ("No, there is a dog.", ["dog"]),                                   # a leading 'No,' negates nothing
    ("There is no dog and there is a cat.", ["cat"]),                  # a new clause ends the scope
    ("A hot dog on a plate.", ["hot dog"]),                            # the longest phrase wins
    ("A dog bed.", ["bed"]),                                            # 'dog' only describes the bed
    ("The dog's ball.", ["dog", "sports ball"]),                       # a possessive names its owner
    ("An orange cat and an orange.", ["cat", "orange"]),              # color word vs fruit
    ("A man waits at the bus stop.", ["person"]),                      # a bus stop is no bus
    ("A HOT-DOG and a Teddy Bear!", ["hot dog", "teddy bear"]),        # case and hyphens
    ("", []),
])
def test_mentioned_objects(text, expected):
    assert COCO.mentioned(text) == expected


def test_shapes_vocabulary_and_spans():
    text = "A red circle, two crosses and no square."
    assert SHAPES.mentioned(text) == ["circle", "cross"]
    spans = [(text[m.start:m.end], m.negated) for m in SHAPES.mentions(text)]
    assert spans == [("circle", False), ("crosses", False), ("square", True)]


def test_ground_truth_from_names_and_dicts():
    assert SHAPES.ground_truth([{"shape": "circle", "color": "red"}, {"shape": "squares"}]) == {"circle", "square"}
    assert COCO.ground_truth(["people", "Hot Dogs", {"name": "puppy"}, "unicorn"]) == {"person", "hot dog", "dog"}
    assert COCO.ground_truth([]) == set() and COCO.ground_truth(None) is None


def test_chair_hand_computed():
    cases = [("A dog and a cat on a couch.", {"dog", "couch"}),   # mentions dog, cat, couch; cat hallucinated
             ("There is no cat, only a dog.", {"dog"}),           # the negated cat is not mentioned
             ("", {"dog"}),                                       # empty: mentions nothing
             ("Two cats and a remote control.", {"cat"})]         # remote hallucinated
    records = [chair_answer(text, truth, COCO) for text, truth in cases]
    assert [r["mentioned"] for r in records] == [["dog", "cat", "couch"], ["dog"], [], ["cat", "remote"]]
    assert [r["hallucinated"] for r in records] == [["cat"], [], [], ["remote"]]
    start, end = records[0]["hallucinated_spans"][0]
    assert cases[0][0][start:end] == "cat"
    metrics = chair_metrics(records)
    assert metrics["chair_sentence"]["value"] == pytest.approx(2 / 4) and metrics["chair_sentence"]["n"] == 4
    assert metrics["chair_instance"]["value"] == pytest.approx(2 / 6)
    assert metrics["chair_instance"]["n"] == 6 and metrics["chair_instance"]["examples"] == 4
    low, high = metrics["chair_instance"]["ci95"]
    assert 0 <= low <= 2 / 6 <= high <= 1


def test_pick_vocabulary_by_labels():
    assert pick_vocabulary([{"objects": [{"shape": "circle", "color": "red"}]}]).name == "shapes"
    assert pick_vocabulary([{"objects": ["dog", "person"]}, {"objects": None}]).name == "coco80"
    assert pick_vocabulary([{"prompt": "no objects column"}]) is None


def test_custom_vocabulary_file(tmp_path):
    path = tmp_path / "fruit.json"
    path.write_text(json.dumps({"name": "fruit", "objects": [{"name": "apple", "synonyms": ["pippin"]}]}))
    vocab = load_vocabulary(str(path))
    assert vocab.mentioned("Three pippins and a pear.") == ["apple"]
    (tmp_path / "bad.json").write_text('{"objects": 3}')
    with pytest.raises(VlmprefError, match="not in the expected format"):
        load_vocabulary(str(tmp_path / "bad.json"))
    with pytest.raises(VlmprefError, match="neither a built-in"):
        load_vocabulary(str(tmp_path / "missing.json"))


from hypothesis import given, settings, strategies as st  # noqa: E402

_WORDS = st.sampled_from(["a", "dog", "dogs", "no", "not", "hot", "teddy", "bear", "orange", "cat", ",", ".",
                          "but", "isn't", "bus", "stop", "people", "the", "dog's", "and", "There", "is"])


@settings(max_examples=200, deadline=None)
@given(st.lists(_WORDS, max_size=14).map(" ".join))
def test_mentions_are_known_objects_with_ordered_spans(text):
    mentions = COCO.mentions(text)
    assert all(m.name in COCO.objects for m in mentions)
    ends = [0] + [m.end for m in mentions]
    for previous_end, m in zip(ends, mentions):
        assert previous_end <= m.start < m.end <= len(text)  # inside the text, in order, never overlapping
    assert set(COCO.mentioned(text)) == {m.name for m in mentions if not m.negated}
