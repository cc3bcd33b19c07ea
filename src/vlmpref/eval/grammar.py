"""The grammar behind vlmpref's reading of answers: word classes, verbs that look like objects, negation scope.

    tags = word_classes(tokens)                 # one coarse class per token: NOUN, VERB, DET, PREP, ...
    read_as_verb(tokens, tags, i)               # "a man steers the boat": "steers" is a verb, not a steer
    negated_tokens(tokens, tags)                # indices a negation covers: "no cat and the dog" -> {cat}

Word classes come from the Pattern part-of-speech tagger that TextBlob ships with its lexicon (no download),
with closed-class words (determiners, pronouns, prepositions, auxiliaries, ...) fixed by the lists below.
That tagger reads most third-person verbs after a noun as plural nouns ("a woman ties" -> ties/NNS), so the
noun-or-verb decision for object words is a documented rule (`read_as_verb`) on top of lemminflect's
dictionary of verb forms, not the tagger's guess.
"""

from __future__ import annotations

import re
from functools import lru_cache

DETERMINERS = {"a", "an", "the", "this", "these", "those", "any", "some", "each", "every", "another", "either",
               "several", "many", "few", "all", "both", "no", "neither", "much", "more", "most"}
SINGULAR_DETERMINERS = {"a", "an", "one", "each", "every", "this", "another", "that"}
NUMBERS = {"one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "dozen", "dozens", "hundreds"}
POSSESSIVES = {"his", "her", "their", "its", "my", "your", "our"}
SUBJECT_SINGULAR = {"he", "she", "it", "who", "which", "that", "someone", "somebody", "everyone", "everybody",
                    "one"}
SUBJECT_PLURAL = {"they", "we", "i", "you", "who", "which", "that"}
OBJECT_PRONOUNS = {"him", "her", "them", "it", "me", "us", "itself", "himself", "herself", "themselves"}
PRONOUNS = SUBJECT_SINGULAR | SUBJECT_PLURAL | OBJECT_PRONOUNS | {
    "something", "anything", "everything", "nothing", "nobody", "none", "there"} - {"that", "which", "who", "one"}
AUXILIARIES = {"is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "has", "have", "had",
               "'s", "'re", "'m"}
DO_FORMS = {"do", "does", "did"}
MODALS = {"can", "could", "will", "would", "shall", "should", "may", "might", "must", "cannot"}
PREPOSITIONS = {"on", "in", "at", "with", "by", "from", "for", "of", "near", "beside", "behind", "under", "above",
                "over", "into", "onto", "across", "along", "around", "through", "against", "between", "among",
                "inside", "outside", "beneath", "below", "toward", "towards", "during", "like", "atop", "upon",
                "without", "about", "after", "before", "past", "via", "within", "underneath", "alongside"}
PARTICLES = {"up", "down", "off", "out", "away", "back"}
CONJUNCTIONS = {"and", "or", "nor", "but", "plus"}
SUBORDINATORS = {"that", "which", "who", "whom", "whose", "where", "when", "while", "because", "since",
                 "although", "though", "if", "whether", "so", "however", "yet", "except", "unless", "whereas",
                 "also", "instead", "rather", "only", "just"}
# Nouns of quantity or grouping: "a pair of water skis" is a noun phrase, "a pot of soup cooks" is a sentence
QUANTITY_NOUNS = {"pair", "pairs", "set", "group", "bunch", "couple", "pack", "box", "row", "stack", "pile", "line",
                  "lot", "lots", "number", "variety", "collection", "team", "herd", "flock", "crowd", "plate",
                  "tray", "bowl", "basket", "display", "kind", "type", "sort", "assortment", "array", "bag"}
PUNCTUATION = set(".,;:!?()")

_PENN = [("NN", "NOUN"), ("VB", "VERB"), ("JJ", "ADJ"), ("RB", "ADV"), ("DT", "DET"), ("PDT", "DET"),
         ("WDT", "SUB"), ("WP", "SUB"), ("WRB", "SUB"), ("CD", "NUM"), ("PRP$", "POSS"), ("PRP", "PRON"),
         ("IN", "PREP"), ("CC", "CONJ"), ("MD", "MODAL"), ("TO", "TO"), ("EX", "PRON")]


def closed_class(word: str) -> str | None:
    """The class of a closed-class word, or None for an open-class word (noun, verb, adjective, adverb)."""
    if word in PUNCTUATION:
        return "PUNCT"
    if word.endswith("n't") or word in ("not", "never"):
        return "NEG"
    for members, name in ((POSSESSIVES, "POSS"), (MODALS, "MODAL"), (AUXILIARIES, "AUX"), (NUMBERS, "NUM"),
                          (DETERMINERS, "DET"), (SUBORDINATORS, "SUB"), (CONJUNCTIONS, "CONJ"),
                          (PRONOUNS, "PRON"), (PREPOSITIONS, "PREP"), (PARTICLES, "PART")):
        if word in members:
            return name
    if word == "to":
        return "TO"
    if word.isdigit():
        return "NUM"
    return None


@lru_cache(maxsize=1)
def _tagger():
    from textblob.en import tag  # loads Pattern's lexicon (about 1 MB) once

    return tag


def word_classes(words: list[str]) -> list[str]:
    """One coarse class per lower-case word: closed classes from the lists above, the rest from Pattern's tagger."""
    # Pattern's lexicon splits "don't" into "do n't"; one word per token keeps the tags aligned
    shown = ["not" if w.endswith("n't") else re.sub(r"\s", "_", w) or "_" for w in words]
    tagged = _tagger()(" ".join(shown), tokenize=False) if words else []
    classes = []
    for word, (_, penn) in zip(words, tagged if len(tagged) == len(words) else [("", "NN")] * len(words)):
        fixed = closed_class(word)
        classes.append(fixed or next((name for prefix, name in _PENN if penn.startswith(prefix)), "OTHER"))
    return classes


@lru_cache(maxsize=4096)
def verb_lemma(word: str) -> str | None:
    """The verb this word is a form of ("ties" -> "tie"), or None when it is no verb form (lemminflect's dictionary)."""
    from lemminflect import getAllLemmas

    lemmas = getAllLemmas(word, upos="VERB").get("VERB")
    return lemmas[0] if lemmas else None


def _is_plural_noun(word: str, tag: str) -> bool:
    return tag == "NOUN" and (word in ("people", "men", "women", "children", "kids") or
                              (word.endswith("s") and not word.endswith("ss")))


def _coordinated_subject(words: list[str], tags: list[str], j: int) -> bool:
    """Is the noun at j the last of a subject joined by "and" ("a man and a woman ski")?"""
    while j >= 0 and tags[j] in ("NOUN", "ADJ", "DET", "NUM", "POSS"):
        j -= 1
    return j > 0 and words[j] == "and" and tags[j - 1] in ("NOUN", "PRON")


def _previous(tags: list[str], i: int) -> int:
    """Index of the word before i, skipping adverbs ("a man slowly steers")."""
    j = i - 1
    while j >= 0 and tags[j] == "ADV":
        j -= 1
    return j


def _opens_with_singular_determiner(words: list[str], tags: list[str], j: int) -> bool:
    """Walking back from noun j over its noun phrase: does it open with a singular determiner ("a man")?

    "of" is crossed unless the noun before it counts or groups ("a pot of soup" yes, "a pair of water skis" no).
    """
    while j >= 0:
        if words[j] in SINGULAR_DETERMINERS and tags[j] in ("DET", "NUM", "SUB"):
            return True
        if tags[j] in ("NOUN", "ADJ") and not _is_plural_noun(words[j], tags[j]):
            j -= 1
            continue
        if words[j] == "of" and j > 0 and tags[j - 1] == "NOUN" and words[j - 1] not in QUANTITY_NOUNS:
            j -= 1
            continue
        return False
    return False


def read_as_verb(words: list[str], tags: list[str], i: int) -> bool:
    """True when the object word at i is a verb here (the rule the README documents under "nouns and verbs").

    Only words that are also verb forms qualify. A bare form ("ski", "steer") is a verb after "to", a modal,
    do/does/did, or a plural subject (they, we, "people", "two men") when no noun follows it. An -s form
    ("steers", "ties") is a verb after he/she/it/who/which/that, or after a singular noun when that noun's
    phrase opens with a singular determiner ("a man steers"), or the word is followed by a determiner, a
    possessive, an object pronoun or an -ly adverb ("the chef cooks the pasta"), or it ends the clause after
    "the"/a possessive and one noun ("the woman bowls."). Never when a verb follows: then the word heads its
    own noun phrase ("the man's ties are red").
    """
    word = words[i]
    lemma = verb_lemma(word)
    if lemma is None:
        return False
    after = words[i + 1] if i + 1 < len(words) else ""
    after_tag = tags[i + 1] if i + 1 < len(words) else "PUNCT"
    if after_tag in ("VERB", "AUX", "MODAL", "NEG"):
        return False
    j = _previous(tags, i)
    before = words[j] if j >= 0 else ""
    before_tag = tags[j] if j >= 0 else "PUNCT"
    if word == lemma:  # bare form
        if before_tag in ("TO", "MODAL") or before in DO_FORMS or (before_tag == "NEG" and before != "not"):
            return True
        plural_subject = before in SUBJECT_PLURAL or _is_plural_noun(before, before_tag) or (
            before_tag == "NOUN" and _coordinated_subject(words, tags, j))
        return plural_subject and after_tag not in ("NOUN", "ADJ")
    if not word.endswith("s"):
        return False  # a past or -ing form never names an object in the vocabularies
    if before in SUBJECT_SINGULAR and before_tag in ("PRON", "SUB", "NUM"):
        return True
    if before_tag != "NOUN" or _is_plural_noun(before, before_tag):
        return False
    followed = after_tag in ("DET", "POSS") or after in OBJECT_PRONOUNS or (after_tag == "ADV" and after.endswith("ly"))
    # "the woman bowls." ends its clause: a definite singular subject and its verb
    ends = after_tag == "PUNCT" or after == "" or after in ("and", "while", "as")
    definite = j > 0 and words[j - 1] in ("the", *POSSESSIVES)
    return followed or (ends and definite) or _opens_with_singular_determiner(words, tags, j)


# ---- negation

# Words that deny presence when a verbal negation precedes them: "the dog is not visible"
PRESENCE = {"visible", "present", "there", "shown", "seen", "pictured", "depicted", "included", "here", "around"}
PICTURE = {"image", "picture", "photo", "photograph", "frame", "scene", "shot", "view"}
# A negation word that negates nothing after it ("nothing on the table": the table is there)
PRONOUN_NEGATIONS = {"nothing", "none", "nobody", "noone"}


def negated_tokens(words: list[str], tags: list[str]) -> set[int]:
    """Indices of the words a negation covers (the rule the README documents under "negation").

    "no", "without", "neither"/"nor" and a verbal negation ("not", "never", "n't", "cannot") cover the next noun
    phrase, and the phrases coordinated with it ("no cats or dogs", "no cats and dogs", "no dogs, cats or birds");
    the search stops at punctuation, a preposition, a subordinator ("that", "which", "but", ...) or a new
    subject ("no cat and the dog sleeps" covers only cat; "no doubt that a dog ..." covers only doubt). A verbal
    negation followed by a word of presence ("not visible", "not in the image") covers the clause's subject
    instead. "not only", "no longer", "no one", "nothing", "none" and "nobody" negate nothing.
    """
    covered: set[int] = set()
    for i, word in enumerate(words):
        nxt = words[i + 1] if i + 1 < len(words) else ""
        if word in PRONOUN_NEGATIONS or (word == "no" and nxt in ("one", "longer", "more")) or \
                (word == "not" and nxt == "only"):
            continue
        if word in ("no", "without", "neither", "nor"):
            covered |= _phrase_scope(words, tags, i + 1)
        elif tags[i] == "NEG" or word == "cannot":
            k = i + 1
            while k < len(words) and tags[k] in ("ADV", "AUX"):
                k += 1
            if k < len(words) and (words[k] in PRESENCE or _picture_phrase(words, k)):
                covered |= _clause_subject(words, tags, i)
            else:
                covered |= _phrase_scope(words, tags, i + 1, verbal=True)
    return covered


def _picture_phrase(words: list[str], k: int) -> bool:
    """"in the image", "in this picture", "within the frame"."""
    if words[k] not in ("in", "within", "inside"):
        return False
    rest = [w for w in words[k + 1:k + 4] if w not in DETERMINERS]
    return bool(rest) and rest[0] in PICTURE


def _clause_subject(words: list[str], tags: list[str], i: int) -> set[int]:
    """The nouns of the clause before position i ("the dog and the cat are not visible")."""
    out = set()
    j = i - 1
    while j >= 0 and tags[j] not in ("PUNCT", "SUB") and words[j] not in ("but", "there"):
        if tags[j] == "NOUN":
            out.add(j)
        j -= 1
    return out


def _phrase_scope(words: list[str], tags: list[str], start: int, verbal: bool = False) -> set[int]:
    """The noun phrase from `start` on, with the phrases coordinated with it."""
    out: set[int] = set()
    k = start
    while k < len(words):
        # ---- reach the next noun, over determiners, adjectives, adverbs and (after "not") verbs
        skippable = {"DET", "NUM", "ADJ", "ADV", "POSS", "PART"} | ({"VERB", "AUX", "TO"} if verbal else set())
        while k < len(words) and tags[k] in skippable and words[k] not in ("no",):
            k += 1
        if k >= len(words) or tags[k] != "NOUN":
            return out
        # ---- the noun phrase itself: its nouns (and adjectives between them: "no red or blue cars")
        while k < len(words) and tags[k] in ("NOUN", "ADJ"):
            out.add(k)
            k += 1
        if k < len(words) and words[k] == "of" and words[k - 1] in QUANTITY_NOUNS:
            k += 1  # "no pair of skis" covers the skis
            verbal = False
            continue
        # ---- coordination: "or"/"nor" always continues, "and" or a comma only into a bare noun phrase
        if k + 1 >= len(words):
            return out
        if words[k] in ("or", "nor"):
            k += 1
            verbal = False
            continue
        if words[k] in ("and", ",") and tags[k + 1] in ("NOUN", "ADJ") and not _starts_clause(words, tags, k + 1):
            k += 1
            verbal = False
            continue
        if words[k] == "," and words[k + 1] in ("or", "and", "nor") and k + 2 < len(words) and tags[k + 2] in (
                "NOUN", "ADJ", "DET", "NUM"):
            k += 2
            verbal = False
            continue
        return out
    return out


def _starts_clause(words: list[str], tags: list[str], k: int) -> bool:
    """True when the bare noun phrase at k is the subject of a new clause ("... and dogs sleep on it")."""
    while k < len(words) and tags[k] in ("NOUN", "ADJ"):
        k += 1
    return k < len(words) and tags[k] in ("VERB", "AUX", "MODAL")
