"""Both readings of answers on a hand-written set: vlmpref's (default) and the papers' (chair_compat, pope_compat).

Every expected list below was derived by hand from the rules (README, "Two readings"), and `hand` is a careful
human reading: the objects the caption says are there. The set covers each class the issue names (nouns vs
verbs, negation bounded by its phrase, word senses, synonym gaps) and the published scorers' quirks.
"""

import pytest

from vlmpref.eval.compat import chair_compat_reader, pope_compat_says_yes, singularize, word_tokenize
from vlmpref.eval.evaluate import chair_fields, hallucination_metrics
from vlmpref.eval.pope import says_yes
from vlmpref.eval.vocab import load_vocabulary

COCO = load_vocabulary("coco80")

# caption, ground truth, vlmpref's mentions (each object once), chair_compat's (every occurrence), hand reading
CAPTIONS = [
    # ---- nouns and verbs
    ("A man steers the boat.", {"person", "boat"}, ["person", "boat"], ["person", "boat"], ["person", "boat"]),
    ("A woman ties her shoes.", {"person"}, ["person"], ["person"], ["person"]),
    ("A pot of soup cooks on the stove.", {"oven"}, ["oven"], ["oven"], ["oven"]),
    ("The chef cooks the pasta in a bowl.", {"person", "bowl"}, ["person", "bowl"], ["person", "bowl"],
     ["person", "bowl"]),
    ("Two men steer a boat while people ski down the hill.", {"person", "boat"}, ["person", "boat"],
     ["person", "boat", "person", "skis"], ["person", "boat"]),
    ("Two coffee cups sit on a table.", {"cup", "dining table"}, ["cup", "dining table"], ["cup", "dining table"],
     ["cup", "dining table"]),
    ("He plants a tree next to a bench.", {"bench"}, ["bench"], ["bench"], ["bench"]),
    ("The woman bowls.", {"person"}, ["person"], ["person", "bowl"], ["person"]),
    ("A man and a woman ski down the hill.", {"person"}, ["person"], ["person", "person", "skis"], ["person"]),
    ("An orange sits on the table.", {"orange", "dining table"}, ["orange", "dining table"],
     ["orange", "dining table"], ["orange", "dining table"]),
    # ---- negation, bounded by its phrase
    ("There is no doubt that a dog is on the couch.", {"dog", "couch"}, ["dog", "couch"], ["dog", "couch"],
     ["dog", "couch"]),
    ("There is no cat and the dog sleeps on a bed.", {"dog", "bed"}, ["dog", "bed"], ["cat", "dog", "bed"],
     ["dog", "bed"]),
    ("I don't see any cats or dogs in the room.", {"couch"}, [], ["cat", "dog"], []),
    ("There are no people, only a horse and a cow.", {"horse", "cow"}, ["horse", "cow"], ["person", "horse", "cow"],
     ["horse", "cow"]),
    ("The cat is not visible in the image, but a laptop is on the desk.", {"laptop", "dining table"},
     ["laptop", "dining table"], ["cat", "laptop", "dining table"], ["laptop", "dining table"]),
    ("A room without a television or a clock.", {"chair"}, [], ["tv", "clock"], []),
    ("There is nothing on the table.", {"dining table"}, ["dining table"], ["dining table"], ["dining table"]),
    # ---- word senses
    ("A bat hangs upside down in a cave.", set(), [], [], []),
    ("A batter swings a bat at the ball.", {"person", "baseball bat", "sports ball"},
     ["person", "baseball bat", "sports ball"], ["sports ball"], ["person", "baseball bat", "sports ball"]),
    ("A power plant stands beside the river.", set(), [], [], []),
    ("A potted plant sits on the windowsill.", {"potted plant"}, ["potted plant"], ["potted plant"],
     ["potted plant"]),
    ("A man wearing winter gloves holds an umbrella.", {"person", "umbrella"}, ["person", "umbrella"],
     ["person", "umbrella"], ["person", "umbrella"]),
    ("A mouse eats cheese next to a cat.", {"cat"}, ["cat"], ["mouse", "cat"], ["cat"]),
    ("A computer mouse sits beside the keyboard.", {"mouse", "keyboard"}, ["mouse", "keyboard"],
     ["laptop", "mouse", "keyboard"], ["mouse", "keyboard"]),
    ("An orange cat sleeps next to an orange.", {"cat", "orange"}, ["cat", "orange"], ["orange", "cat", "orange"],
     ["cat", "orange"]),
    ("The cat is orange and white.", {"cat"}, ["cat"], ["cat", "orange"], ["cat"]),
    ("A man wearing glasses holds a glass of wine.", {"person", "wine glass"}, ["person", "wine glass"],
     ["person"], ["person", "wine glass"]),
    # ---- synonyms the published list has and vlmpref lacked
    ("A sheepdog and a tabby play near a teddybear.", {"dog", "cat", "teddy bear"}, ["dog", "cat", "teddy bear"],
     ["dog", "cat", "teddy bear"], ["dog", "cat", "teddy bear"]),
    ("A panda eats bamboo.", {"bear"}, ["bear"], ["bear"], ["bear"]),
    # ---- the published scorer's quirks: "bus" -> "bu", " motor bike" never matches, "ties" -> "ty"
    ("Two buses wait at the bus stop.", {"bus"}, ["bus"], ["bus"], ["bus"]),
    ("A red bus drives down the street.", {"bus"}, ["bus"], [], ["bus"]),
    ("A man rides a motor bike.", {"person", "motorcycle"}, ["person", "motorcycle"], ["person"],
     ["person", "motorcycle"]),
    ("A man in two ties stands by a toilet seat.", {"person", "toilet"}, ["person", "tie", "toilet"],
     ["person", "toilet"], ["person", "tie", "toilet"]),
    # ---- counting: vlmpref counts an object once per answer, CHAIR every occurrence
    ("A dog chases another dog and a third dog.", {"dog"}, ["dog"], ["dog", "dog", "dog"], ["dog"]),
    ("Two dogs and a cat.", {"dog"}, ["dog", "cat"], ["dog", "cat"], ["dog", "cat"]),
    ("", {"dog"}, [], [], []),
    # ---- where vlmpref's reading is still wrong (documented limits): a mass noun before an -s verb with nothing
    # after it reads like "Coffee cups on a table."; a baseball word near a flying bat
    ("Soup cooks on the stove.", {"oven"}, ["person", "oven"], ["oven"], ["oven"]),
    ("A bat flies over the baseball field.", set(), ["baseball bat"], [], []),
]


@pytest.mark.parametrize("caption,truth,vlmpref,compat,hand", CAPTIONS, ids=[c[0][:40] or "empty" for c in CAPTIONS])
def test_both_readings_of_a_caption(caption, truth, vlmpref, compat, hand):
    record = chair_fields(caption, sorted(truth), [], COCO)
    assert record["mentioned"] == vlmpref
    assert record["chair_compat_mentioned"] == compat
    assert record["hallucinated"] == [o for o in vlmpref if o not in truth]
    assert record["chair_compat_hallucinated"] == [o for o in compat if o not in truth]


def _chair(lists, truths):
    """CHAIR-sentence and CHAIR-instance of mention lists, computed by hand from their definitions."""
    bad = [[o for o in mentioned if o not in truth] for mentioned, truth in zip(lists, truths)]
    return sum(bool(b) for b in bad) / len(lists), sum(map(len, bad)) / sum(map(len, lists))


def test_chair_numbers_of_both_readings_and_the_hand_reading():
    samples = [{"question": "Describe.", **chair_fields(c[0], sorted(c[1]), [], COCO)} for c in CAPTIONS]
    metrics, _ = hallucination_metrics(samples, [], COCO)
    truths = [c[1] for c in CAPTIONS]
    v_sentence, v_instance = _chair([c[2] for c in CAPTIONS], truths)
    c_sentence, c_instance = _chair([c[3] for c in CAPTIONS], truths)
    h_sentence, h_instance = _chair([c[4] for c in CAPTIONS], truths)
    assert metrics["chair_sentence"]["value"] == pytest.approx(v_sentence)
    assert metrics["chair_instance"]["value"] == pytest.approx(v_instance)
    assert metrics["chair_compat"]["chair_sentence"]["value"] == pytest.approx(c_sentence)
    assert metrics["chair_compat"]["chair_instance"]["value"] == pytest.approx(c_instance)
    # On this set: vlmpref 4/38 answers and 4/55 mentions hallucinated, the hand reading 2/38 and 2/53;
    # chair_compat 12/38 and 14/65 (negated objects, a mouse eating cheese, a laptop from "computer mouse", ...)
    assert (v_sentence, v_instance) == (4 / 38, 4 / 55)
    assert (h_sentence, h_instance) == (2 / 38, 2 / 53)
    assert (c_sentence, c_instance) == (12 / 38, 14 / 65)


# object asked about, answer, label, vlmpref's reading, pope_compat's reading, hand reading
PROBES = [
    ("dog", "Yes, there is a dog.", True, True, True, True),
    ("dog", "There is a dog in the image. It is not moving.", True, True, True, True),
    ("cat", "No!", False, False, True, False),
    ("cat", "NO", False, False, True, False),
    ("cat", "There isn't a cat.", False, False, True, False),
    ("cat", "None.", False, False, True, False),
    ("dog", "There is no doubt that a dog is in the picture.", True, True, False, True),
    ("chair", "Yes, there is a chair, not a couch.", True, True, False, True),
    ("tv", "No, there is no television.", False, False, False, False),
    ("dog", "I don't see a dog.", False, False, True, False),
    ("dog", "There is a cat on the sofa.", False, False, True, False),
    ("bus", "", True, False, True, False),
    ("person", "A man is riding a horse.", True, True, True, True),
    ("clock", "Not that I can see.", False, False, True, False),           # "Not" is not "not"
    ("cup", "Yes.\nActually no cup.", True, True, True, True),
    ("car", "There is a car. No other vehicles are visible.", True, True, True, True),
]


@pytest.mark.parametrize("obj,answer,label,vlmpref,compat,hand", PROBES, ids=[p[1][:30] or "empty" for p in PROBES])
def test_both_readings_of_a_yes_no_answer(obj, answer, label, vlmpref, compat, hand):
    assert says_yes(answer, obj, COCO) is vlmpref
    assert pope_compat_says_yes(answer) is compat


def _f1(labels, predictions):
    tp = sum(y and p for y, p in zip(labels, predictions))
    return 2 * tp / (sum(labels) + sum(predictions))


def test_pope_numbers_of_both_readings_and_the_hand_reading():
    probes = [{"strategy": "given", "object": o, "answer": a, "label": y} for o, a, y, *_ in PROBES]
    metrics, records = hallucination_metrics([], probes, COCO)
    labels = [p[2] for p in PROBES]
    assert [r["says_yes"] for r in records] == [p[3] for p in PROBES]
    assert metrics["pope"]["given"]["f1"]["value"] == pytest.approx(_f1(labels, [p[3] for p in PROBES]))
    assert metrics["pope_compat"]["given"]["f1"]["value"] == pytest.approx(_f1(labels, [p[4] for p in PROBES]))
    # F1: vlmpref 14/15 (the unanswered probe is a no, like the hand reading), pope_compat 12/21 (8/21 no's missed)
    assert _f1(labels, [p[3] for p in PROBES]) == _f1(labels, [p[5] for p in PROBES]) == pytest.approx(14 / 15)
    assert _f1(labels, [p[4] for p in PROBES]) == pytest.approx(12 / 21)
    assert metrics["pope_compat"]["given"]["yes_ratio"]["value"] == pytest.approx(13 / 16)
    assert metrics["pope"]["given"]["accuracy"]["value"] == pytest.approx(15 / 16)
    assert metrics["pope_compat"]["given"]["accuracy"]["value"] == pytest.approx(7 / 16)


@pytest.mark.parametrize("word,expected", [
    ("dogs", "dog"), ("buses", "bus"), ("bus", "bu"), ("glass", "glas"), ("glasses", "glass"), ("ties", "ty"),
    ("people", "person"), ("men", "man"), ("knives", "knife"), ("doggies", "doggies"), ("skis", "ski"),
    ("is", "is"), ("this", "thi"), ("flour", "flmy"), ("oxen", "ox"), ("mice", "mouse"), ("species", "species")])
def test_pattern_singularize_with_its_quirks(word, expected):
    assert singularize(word) == expected


def test_compat_tokenization_and_phrases():
    assert word_tokenize("a man's dog, and two cats.") == ["a", "man", "'s", "dog", ",", "and", "two", "cats", "."]
    reader = chair_compat_reader()
    assert reader.objects("A baby elephant and a baby.") == ["elephant", "person"]   # "baby X" -> X
    assert reader.objects("Passenger trains near a stop sign.") == ["train", "stop sign"]
    assert reader.objects("A toilet seat and a seat.") == ["toilet"]                 # "seat" dropped with toilet
    assert reader.objects("A wine glass and a cheesecake.") == ["wine glass"]        # " cheesecake" never matches
    assert reader.objects("An iPhone and a phone.") == ["cell phone"]                # "iPhone" never matches
    assert reader.truth(["couch", "person"], ["Two dogs on a sofa."]) == {"couch", "person", "dog"}


@pytest.mark.parametrize("text,expected", [
    # negation: its phrase and the phrases coordinated with it, no further
    ("Neither a cat nor a dog is in the room.", []),
    ("No cats and dogs.", []),
    ("I cannot see a car or a truck.", []),
    ("There isn't a single person in the street.", []),
    ("There's no dog.", []),
    ("There is no cat, a dog is there.", ["dog"]),
    ("The image shows no people but many cars.", ["car"]),
    ("Without any people around, a dog sits.", ["dog"]),
    ("Not only a dog but also a cat.", ["dog", "cat"]),
    ("The dog is no longer on the couch.", ["dog", "couch"]),
    # nouns and verbs
    ("She skis.", []),
    ("Kids learn to ski.", ["person"]),
    ("A man with his skis.", ["person", "skis"]),
    ("Beach chairs and umbrellas on the sand.", ["chair", "umbrella"]),
    # senses
    ("A bat flying at night.", []),
    ("A vampire bat.", []),
    ("A man wearing rubber gloves washes dishes.", ["person"]),
    ("The catcher's glove.", ["person", "baseball glove"]),
    ("A nuclear plant.", []),
    ("A mouse with a long tail.", []),
    ("A laptop and a mouse on a desk.", ["laptop", "mouse", "dining table"]),
    ("A glass door.", []),
    ("Three glasses of champagne.", ["wine glass"]),
    ("Oranges and apples.", ["orange", "apple"]),
    ("Orange cones on the street.", []),
])
def test_more_vlmpref_readings(text, expected):
    assert COCO.mentioned(text) == expected
