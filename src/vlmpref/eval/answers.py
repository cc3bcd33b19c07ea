"""Is a generated answer right? Key-answer matching for short answers, object sets and token-F1 for long ones.

Which rule decides (`accuracy_rule`, recorded per example in samples.jsonl):

1. `key`: the row has a key answer (an `answer` column, as the shapes world has): right when the answer
   names the key and no rival of the same kind. "The circle is red." is right for `red`, "red or blue" is
   not; numbers match as digits or words; yes/no answers are decided by their first yes or no.
2. `objects`: no key, and the row lists its objects with shape and color (shapes-world descriptions):
   right when the answer names exactly those objects, each with its color.
3. `short_reference`: otherwise, when the reference answer is at most two words once articles and
   punctuation are dropped ("Two dogs."): that phrase is the key, matched as in 1.
4. `token_f1`: otherwise (long free-form answers): right when the SQuAD-style token-F1 against the
   reference is at least 0.5. The mean token-F1 over all answers is reported too.
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


ARTICLES = {"a", "an", "the"}


def reference_key(reference: str) -> str | None:
    """The reference itself as a key when it is a short answer (at most two words without articles)."""
    tokens = [t for t in _WORD.findall((reference or "").lower()) if t not in ARTICLES]
    return " ".join(tokens) if 0 < len(tokens) <= 2 else None


def accuracy_rule(reference: str, key: str | None = None, objects: list | None = None) -> tuple[str, str | None]:
    """(rule, key) that decides correctness for this row; see the module docstring."""
    if key:
        return "key", key
    if objects and all(isinstance(o, dict) and "shape" in o and "color" in o for o in objects):
        return "objects", None
    short = reference_key(reference)
    if short:
        return "short_reference", short
    return "token_f1", None


def answer_correct(generated: str, reference: str, key: str | None = None,
                   objects: list[dict] | None = None) -> bool:
    """The accuracy rule of `accuracy_rule`: key match, object set, short reference, or token-F1 >= 0.5."""
    rule, rule_key = accuracy_rule(reference, key, objects)
    if rule in ("key", "short_reference"):
        return key_match(generated, rule_key)
    if rule == "objects":
        return objects_match(generated, objects)
    return token_f1(generated, reference) >= 0.5
