"""Is a generated answer right? Key-answer matching for short answers, object sets and token-F1 for long ones.

Short answers (a color, a number, yes/no, a shape name) are right when the answer names the key and no
rival of the same kind: "The circle is red." is right for `red`, "red or blue" is not. Yes/no answers are
decided by their first yes or no. Long answers are scored by token-F1 against the reference answer, and,
where the image's objects are known, by whether the objects named are exactly the objects present.
"""

from __future__ import annotations

import re
from collections import Counter

from vlmpref.data.synthetic import COLORS, SHAPES

NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
COLOR_WORDS = set(COLORS) | {"orange", "black", "white", "brown", "pink", "gray", "grey"}
FAMILIES = {
    "color": COLOR_WORDS,
    "number": set(NUMBER_WORDS),
    "yesno": {"yes", "no"},
    "shape": set(SHAPES),
}
# Plural and spelling variants reduced to one word before matching
VARIANTS = {"circles": "circle", "squares": "square", "triangles": "triangle", "crosses": "cross",
            "grey": "gray"}
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-case word tokens with digits spelled out and plurals folded."""
    out = []
    for token in _WORD.findall((text or "").lower()):
        if token.isdigit() and int(token) < len(NUMBER_WORDS):
            token = NUMBER_WORDS[int(token)]
        out.append(VARIANTS.get(token, token))
    return out


def family(key: str) -> str | None:
    key = VARIANTS.get(key.lower(), key.lower())
    return next((name for name, members in FAMILIES.items() if key in members), None)


def key_match(generated: str, key: str) -> bool:
    """True when `generated` gives the key answer and no rival answer of the same kind."""
    tokens = words(generated)
    key_norm = " ".join(words(key))
    kind = family(key_norm) if " " not in key_norm else None
    if kind == "yesno":
        first = next((t for t in tokens if t in ("yes", "no")), None)
        return first == key_norm
    if kind is None:
        return f" {key_norm} " in f" {' '.join(tokens)} "
    named = {t for t in tokens if t in FAMILIES[kind]}
    return named == {key_norm}


def named_objects(text: str) -> list[tuple[str | None, str]]:
    """(color, shape) for every shape named in `text`, with the color word just before it if any."""
    tokens = words(text)
    found = []
    for i, token in enumerate(tokens):
        if token in SHAPES:
            color = tokens[i - 1] if i > 0 and tokens[i - 1] in COLOR_WORDS else None
            found.append((color, token))
    return found


def objects_match(generated: str, objects: list[dict]) -> bool:
    """True when the answer names exactly the image's objects, each with its color."""
    truth = Counter((o["color"], o["shape"]) for o in objects)
    return Counter(named_objects(generated)) == truth


def token_f1(generated: str, reference: str) -> float:
    """SQuAD-style token F1 between two answers."""
    pred, ref = words(generated), words(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def answer_correct(generated: str, reference: str, key: str | None = None,
                   objects: list[dict] | None = None) -> bool:
    """The accuracy rule: key answer when there is one, else the object set when known, else token-F1 >= 0.5."""
    if key:
        return key_match(generated, key)
    if objects:
        return objects_match(generated, objects)
    return token_f1(generated, reference) >= 0.5
