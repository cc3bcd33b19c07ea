"""Object vocabularies and vlmpref's reading of answers: which words name which object, for CHAIR and POPE.

A vocabulary is a JSON file (`vlmpref/assets/coco80.json`, `vlmpref/assets/shapes.json`, or your own):

    {"name": "coco80",
     "objects": [{"name": "dog", "synonyms": ["dog", "puppy", "hound"]}, ...],
     "not_objects": ["bus stop"],          # phrases that name no object of their own
     "ambiguous": {"orange": "a color"},   # words that name an object only when no noun follows them
     "senses": {"bat": {"near": [...], "not_near": [...], "not_after": [...], "default": true}}}

`mentions(text)` is vlmpref's reading (the default; `vlmpref.eval.compat` holds the papers' readings). It finds
every object named in a text, longest phrase first ("hot dog" before "dog"), with plurals ("dogs", "people",
"knives") and possessives ("dog's"), and then decides by class (the README lists each rule with an example):

- nouns and verbs: an object word used as a verb names nothing ("a man steers the boat" names a man, no steer;
  `vlmpref.eval.grammar.read_as_verb`);
- negation: an object in the noun phrase a negation covers is negated ("there is no dog", "I don't see any
  cats or dogs"), and the scope ends with that phrase ("no cat and the dog sleeps on a bed" names the dog
  and the bed; `vlmpref.eval.grammar.negated_tokens`);
- senses: an ambiguous word names its object only in context (`senses`): a bat hanging in a cave is no
  baseball bat, a power plant no potted plant, winter gloves no baseball glove, "orange" after "is" a color;
- modifiers: a word naming an object directly before another object word only describes it ("a dog bed"
  names a bed), and an `ambiguous` word names its object only when no noun follows it ("an orange cat").
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from vlmpref.errors import VlmprefError
from vlmpref.eval.grammar import negated_tokens, read_as_verb, word_classes

BUILTIN = ("coco80", "shapes")

NEGATIONS = {"no", "not", "without", "never", "none", "nor", "neither", "nothing", "nobody", "cannot"}
COLORS = {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey",
          "golden", "silver", "tan", "beige"}
LINKING = {"is", "are", "was", "were", "be", "been", "looks", "look", "looking", "appears", "seems", "colored",
           "coloured", "painted", "bright", "dark", "light", "pale", "burnt", "deep"}
# Words after which an ambiguous word still names an object ("an orange and a pear")
FUNCTION_WORDS = {"and", "or", "with", "on", "in", "at", "of", "to", "is", "are", "was", "were", "be", "next", "near",
                  "by", "from", "for", "the", "a", "an", "that", "which", "as", "behind", "under", "above", "beside",
                  "sitting", "lying", "slice", "slices", "half", "halves"}

_IRREGULAR = {"man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
              "goose": "geese", "ox": "oxen", "foot": "feet", "tooth": "teeth", "knife": "knives", "calf": "calves",
              "leaf": "leaves", "shelf": "shelves", "wolf": "wolves", "sheep": "sheep", "deer": "deer",
              "fish": "fish", "cattle": "cattle", "people": "people", "skis": "skis", "scissors": "scissors",
              "shears": "shears", "luggage": "luggage", "broccoli": "broccoli", "human": "humans"}
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[.,;:!?()]", re.IGNORECASE)
_PUNCT = set(".,;:!?()")


def plural(word: str) -> str:
    """English plural of one word (regular rules plus the irregular nouns object vocabularies need)."""
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    if word.endswith("man"):
        return word[:-3] + "men"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


@dataclass(frozen=True)
class Token:
    text: str  # lower-case, possessive 's removed
    start: int
    end: int
    possessive: bool = False

    @property
    def is_punct(self) -> bool:
        return self.text in _PUNCT

    @property
    def is_negation(self) -> bool:
        return self.text in NEGATIONS or self.text.endswith("n't")


def tokenize(text: str) -> list[Token]:
    """Words and punctuation with their character spans in `text`."""
    out = []
    for m in _TOKEN.finditer(text or ""):
        word = m.group().lower()
        possessive = word.endswith("'s")
        out.append(Token(word[:-2] if possessive else word, m.start(), m.end(), possessive))
    return out


@dataclass(frozen=True)
class Mention:
    """An object named in a text: its canonical name, the words' character span, and whether it is negated."""

    name: str
    start: int
    end: int
    negated: bool = False


class Vocabulary:
    """Canonical object names and the phrases (synonyms and their plurals) that name each."""

    def __init__(self, name: str, objects: dict[str, list[str]], not_objects: list[str] = (),
                 ambiguous: list[str] = (), senses: dict[str, dict] | None = None):
        self.name = name
        self.objects = tuple(objects)
        self._phrases: dict[tuple[str, ...], str | None] = {}
        for canonical, synonyms in objects.items():
            for phrase in {canonical, *synonyms}:
                self._add(phrase, canonical)
        for phrase in not_objects:
            self._add(phrase, None)
        self._ambiguous = {tuple(t.text for t in tokenize(w)) for w in ambiguous}
        self._ambiguous |= {words[:-1] + (plural(words[-1]),) for words in self._ambiguous}
        self._senses: dict[str, dict] = {}
        for word, sense in (senses or {}).items():
            self._senses[word] = self._senses[plural(word)] = {k: set(v) if isinstance(v, list) else v
                                                                for k, v in sense.items()}
        self._longest = max((len(p) for p in self._phrases), default=1)

    def _add(self, phrase: str, canonical: str | None):
        words = tuple(t.text for t in tokenize(phrase) if not t.is_punct)
        if not words:
            return
        self._phrases.setdefault(words, canonical)
        self._phrases.setdefault(words[:-1] + (plural(words[-1]),), canonical)

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        objects = {o["name"]: list(o.get("synonyms", [])) for o in data["objects"]}
        return cls(data.get("name", "custom"), objects, data.get("not_objects", []), list(data.get("ambiguous", {})),
                   data.get("senses", {}))

    def __repr__(self) -> str:
        return f"Vocabulary({self.name!r}, {len(self.objects)} objects)"

    def _match(self, tokens: list[Token], i: int) -> tuple[int, str | None] | None:
        """(length, canonical) of the longest phrase starting at token i; canonical None for a not-object."""
        for length in range(min(self._longest, len(tokens) - i), 0, -1):
            words = tuple(t.text for t in tokens[i:i + length])
            if words in self._phrases:
                return length, self._phrases[words]
        return None

    def mentions(self, text: str) -> list[Mention]:
        """Every object named in `text`, in order, negated ones included and marked."""
        tokens = tokenize(text)
        words = [t.text for t in tokens]
        tags = word_classes(words)
        candidates: list[tuple[int, int, str]] = []  # first token, number of tokens, canonical name
        i = 0
        while i < len(tokens):
            match = None if tokens[i].is_punct else self._match(tokens, i)
            if match is None:
                i += 1
                continue
            length, canonical = match
            if canonical is not None and not (length == 1 and read_as_verb(words, tags, i)) \
                    and self._in_sense(words, i, length):
                candidates.append((i, length, canonical))
            i += length
        for i, length, _ in candidates:  # an object word is a noun, whatever the tagger guessed
            tags[i:i + length] = ["NOUN"] * length
        negated = negated_tokens(words, tags)
        found = [(Mention(canonical, tokens[i].start, tokens[i + length - 1].end,
                          any(k in negated for k in range(i, i + length))), i + length, tuple(words[i:i + length]))
                 for i, length, canonical in candidates]
        return [m for m, after, phrase in found if not self._describes_next(tokens, tags, after, phrase, found)]

    def _in_sense(self, words: list[str], i: int, length: int) -> bool:
        """Does the ambiguous word at i name its object here? (`senses`: not_after, near, not_near, default)."""
        sense = self._senses.get(" ".join(words[i:i + length]))
        if sense is None:
            return True
        before = words[i - 1] if i else ""
        if before in sense.get("not_after", ()):
            return False
        if sense.get("colors") and (before in LINKING or (before in ("and", "or") and i > 1 and words[i - 2] in COLORS)
                                    or (i + length + 1 < len(words) and words[i + length] in ("and", "or")
                                        and words[i + length + 1] in COLORS)):
            return False
        start, end = i, i + length
        while start > 0 and words[start - 1] not in (".", "!", "?", ";"):
            start -= 1
        while end < len(words) and words[end] not in (".", "!", "?", ";"):
            end += 1
        sentence = set(words[start:i]) | set(words[i + length:end])
        if sentence & sense.get("near", set()):
            return True
        if sentence & sense.get("not_near", set()):
            return False
        return sense.get("default", True)

    def _describes_next(self, tokens: list[Token], tags: list[str], after: int, words: tuple[str, ...],
                        found) -> bool:
        """True when the object word only describes the word after it ("dog bed", "orange cat", "glass table")."""
        if after >= len(tokens) or tokens[after].is_punct or tokens[after - 1].possessive:
            return False  # "the dog's ball" names the dog too
        next_starts_object = any(tokens[after].start == m.start for m, _, _ in found)
        if next_starts_object:
            return True
        # an ambiguous word before a noun or adjective describes it; before a verb it is the noun ("an orange sits")
        return words in self._ambiguous and tokens[after].text not in FUNCTION_WORDS and tags[after] in (
            "NOUN", "ADJ", "OTHER", "NUM")

    def mentioned(self, text: str) -> list[str]:
        """Canonical names of the objects `text` says are there (negated mentions left out), each once."""
        return list(dict.fromkeys(m.name for m in self.mentions(text) if not m.negated))

    def canonical(self, name: str) -> str | None:
        """The canonical object a ground-truth label names ("people" -> "person"), or None if unknown."""
        words = tuple(t.text for t in tokenize(name) if not t.is_punct)
        return self._phrases.get(words)

    def ground_truth(self, objects) -> set[str] | None:
        """Canonical names of an `objects` column value: names, or dicts with a `name` or `shape` key.

        None when the row has no object annotation at all (CHAIR and POPE then skip it); labels the
        vocabulary does not know are left out.
        """
        if objects is None:
            return None
        names = set()
        for obj in objects:
            label = obj if isinstance(obj, str) else (obj.get("name") or obj.get("shape") or obj.get("label"))
            canonical = self.canonical(label) if label else None
            if canonical:
                names.add(canonical)
        return names


@lru_cache(maxsize=8)
def load_vocabulary(name_or_path: str) -> Vocabulary:
    """A built-in vocabulary (`coco80`, `shapes`) or a JSON file in the same format."""
    if name_or_path in BUILTIN:
        text = (resources.files("vlmpref") / "assets" / f"{name_or_path}.json").read_text()
        return Vocabulary.from_dict(json.loads(text))
    path = Path(name_or_path)
    if not path.is_file():
        raise VlmprefError(f"Vocabulary {name_or_path} is neither a built-in ({', '.join(BUILTIN)}) nor a JSON file; "
                           "check --vocabulary.")
    try:
        return Vocabulary.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise VlmprefError(f"Vocabulary file {path} is not in the expected format ({exc}); see "
                           "vlmpref/assets/shapes.json for an example.") from None


def pick_vocabulary(rows, choice: str = "auto") -> Vocabulary | None:
    """The vocabulary to use: `choice`, or with `auto` the built-in one that knows most ground-truth labels.

    None when no row carries an `objects` annotation, or no built-in vocabulary knows any of its labels.
    """
    if choice != "auto":
        return load_vocabulary(choice)
    if hasattr(rows, "column_names"):  # a datasets.Dataset: read the column, not every row's images
        column = rows["objects"] if "objects" in rows.column_names else []
    else:
        column = [r.get("objects") for r in rows]
    labelled = [objects for objects in column if objects is not None]
    if not labelled:
        return None
    best, best_known = None, 0
    for name in BUILTIN:
        vocab = load_vocabulary(name)
        known = sum(len(vocab.ground_truth(objects)) for objects in labelled)
        if known > best_known:
            best, best_known = vocab, known
    return best
