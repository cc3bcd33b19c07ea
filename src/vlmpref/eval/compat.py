"""Paper-compatible readings: `chair_compat` and `pope_compat`, the published scorers' rules, quirks included.

    reader = chair_compat_reader()
    reader.objects("Two dogs and a bus.")          # ['dog', 'dog'] ("bus" singularizes to "bu")
    pope_compat_says_yes("No! There is none.")     # True: only "No", "no" or "not" read as no

Quote these next to a paper's numbers; vlmpref's own reading (`vlmpref.eval.vocab`, the default) is sharper
and documented rule by rule in the README.

chair_compat is CHAIR as Rohrbach et al. (EMNLP 2018) compute it in LisaAnne/Hallucination `utils/chair.py`
(`caption_to_words`, `get_annotations`, `compute_chair`), rewritten here from its rules:

1. the lower-cased caption is tokenized with NLTK's `word_tokenize` (Punkt sentences, then the Treebank-style
   word tokenizer); without NLTK's English Punkt model installed, Punkt runs untrained, which differs only on
   abbreviations such as "Mr." (none of them a COCO word);
2. every token is singularized with Pattern 2.6's `singularize` (rules in `assets/chair_compat.json`):
   "dogs" -> "dog", and also "bus" -> "bu", "glass" -> "glas", "ties" -> "ty", "doggies" stays "doggies";
3. two-word phrases are joined left to right: the scorer's list ("hot dog", "teddy bear", "train track", ...)
   stays as is, "baby cat" / "adult cat" -> "cat", "passenger train" -> "train", "bow tie" -> "tie",
   "toilet seat" -> "toilet", "wine glas" -> "wine glass";
4. every "seat" is dropped when the caption also holds "toilet";
5. the words found in the published synonym list are kept, each mapped to the first word of its line; entries
   the list spells with a stray space (" motor bike", " cheesecake") or a capital ("iPhone") never match;
6. every occurrence counts, and negation is not read ("there is no dog" mentions a dog):
   CHAIR-i = hallucinated occurrences / object occurrences, CHAIR-s = captions with one or more / captions.

Ground truth (`truth`): segmentation labels mapped through the synonym list, plus the objects this reading finds
in the image's reference captions.

pope_compat is the yes/no rule of POPE's `evaluate.py` (Li et al., EMNLP 2023): keep the text before the first
".", drop commas, split on single spaces; the answer is no when a piece is exactly "No", "no" or "not", else yes.
So "No!" and "NO" read yes, "isn't" reads yes, and an empty answer reads yes.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

CHAIR_COMPAT = "chair_compat"
POPE_COMPAT = "pope_compat"


@lru_cache(maxsize=1)
def _rules() -> dict:
    return json.loads((resources.files("vlmpref") / "assets" / "chair_compat.json").read_text())


# ---- Pattern 2.6 singularize


@lru_cache(maxsize=1)
def _singular_tables():
    tables = _rules()["singularize"]
    rules = [(re.compile(pattern), replacement) for pattern, replacement in tables["rules"]]
    return rules, tables["uninflected"], tables["uncountable"], tables["ie"], tables["irregular"]


@lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """Pattern 2.6's `singularize` of one word, with its quirks ("bus" -> "bu", "glass" -> "glas")."""
    rules, uninflected, uncountable, ie_words, irregular = _singular_tables()
    # Pattern's extra step for hyphenated compounds ("mothers-in-law") is left out: a hyphenated token matches
    # no listed word either way.
    if word.endswith("'"):
        return singularize(word[:-1]) + "'s"
    lower = word.lower()
    # Pattern tests `listed.endswith(word)`, the wrong way round, so "a", "is" and "es" stay unchanged
    if any(listed.endswith(lower) for listed in uninflected) or any(listed.endswith(lower) for listed in uncountable):
        return word
    for listed in ie_words:
        if lower.endswith(listed + "s"):
            return lower  # Pattern returns the plural itself here: "doggies" stays "doggies"
    for plural, singular in irregular.items():
        if lower.endswith(plural):
            return re.sub("(?i)" + plural + "$", singular, word)
    for suffix, inflection in rules:
        match = suffix.search(word)
        if match:
            for k, group in enumerate(match.groups()):
                if group is None:
                    inflection = inflection.replace("\\" + str(k + 1), "")
            return suffix.sub(inflection, word)
    return word


# ---- NLTK tokenization


@lru_cache(maxsize=1)
def _tokenizers():
    from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer, punkt_model_available

    if punkt_model_available("english"):
        from nltk.tokenize import sent_tokenize

        return sent_tokenize, NLTKWordTokenizer(), "nltk word_tokenize (Punkt english model)"
    return PunktSentenceTokenizer().tokenize, NLTKWordTokenizer(), "nltk word_tokenize (Punkt untrained)"


def word_tokenize(text: str) -> list[str]:
    """NLTK's `word_tokenize`: Punkt sentences, then the Treebank-style word tokenizer."""
    sentences, words, _ = _tokenizers()
    return [token for sentence in sentences(text) for token in words.tokenize(sentence)]


def tokenizer_name() -> str:
    return _tokenizers()[2]


# ---- CHAIR


class CompatChair:
    """The published CHAIR reading of captions (see the module docstring, rules 1-6)."""

    name = CHAIR_COMPAT

    def __init__(self):
        rules = _rules()
        self.synonyms: dict[str, str] = {}  # every listed word -> the first word of its line
        for line in rules["synonym_lines"]:
            words = line.strip().split(", ")
            for word in words:
                self.synonyms[word] = words[0]
        self.objects_list = tuple(dict.fromkeys(self.synonyms.values()))
        self.double_words = {w: w for w in rules["double_words"]}
        for animal in rules["animal_words"]:
            self.double_words[f"baby {animal}"] = animal
            self.double_words[f"adult {animal}"] = animal
        for vehicle in rules["vehicle_words"]:
            self.double_words[f"passenger {vehicle}"] = vehicle
        self.double_words.update(rules["extra_double_words"])

    def words(self, caption: str) -> list[tuple[str, str]]:
        """(word as read, object) for every object occurrence in the caption, in order."""
        words = [singularize(w) for w in word_tokenize((caption or "").lower())]
        joined, i = [], 0
        while i < len(words):
            pair = " ".join(words[i:i + 2])
            if pair in self.double_words:
                joined.append(self.double_words[pair])
                i += 2
            else:
                joined.append(words[i])
                i += 1
        if "toilet" in joined and "seat" in joined:
            joined = [w for w in joined if w != "seat"]
        return [(w, self.synonyms[w]) for w in joined if w in self.synonyms]

    def objects(self, caption: str) -> list[str]:
        """The object of every occurrence, repeats included (CHAIR counts each)."""
        return [node for _, node in self.words(caption)]

    def label(self, name: str) -> str | None:
        """The object a ground-truth label names: a listed word, else what the caption reading finds in it."""
        if name in self.synonyms:
            return self.synonyms[name]
        found = self.objects(name)
        return found[0] if len(found) == 1 else None

    def truth(self, labels=(), captions=()) -> set[str]:
        """Ground-truth objects: segmentation labels plus the objects named in reference captions."""
        out = {self.label(name) for name in labels}
        for caption in captions:
            out.update(self.objects(caption))
        return {o for o in out if o}

    def answer(self, caption: str, truth: set[str]) -> dict:
        """Per-answer record: every object occurrence and the hallucinated ones (repeats included)."""
        words = self.words(caption)
        return {"mentioned": [node for _, node in words],
                "hallucinated": [node for _, node in words if node not in truth],
                "words": [word for word, _ in words]}


@lru_cache(maxsize=1)
def chair_compat_reader() -> CompatChair:
    return CompatChair()


# ---- POPE


def pope_compat_says_yes(answer: str) -> bool:
    """POPE's `evaluate.py` rule: no when the first sentence holds the piece "No", "no" or "not"."""
    text = answer or ""
    if text.find(".") != -1:
        text = text.split(".")[0]
    pieces = text.replace(",", "").split(" ")
    return not ("No" in pieces or "not" in pieces or "no" in pieces)
