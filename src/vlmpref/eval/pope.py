"""Yes/no object probing, POPE-style (Li et al., EMNLP 2023): "Is there a X in the image?".

Probes follow the paper's sampling (POPE's `utils.py`): for every distinct image with ground-truth objects,
k present objects are asked about (label yes), k = min(--pope-per-image, objects present), and for each of
them one absent object (label no), chosen three ways, each reported on its own:

    random:       uniformly among the objects seen in the images of the split, not in this image;
    popular:      the objects in most images of the split, not in this one;
    adversarial:  for each present object asked about, the object seen most often together with it,
                  not in this image (ties: the more frequent object, then the name; without one, random).

The present objects asked about are the same for the three strategies (seeded per image; the paper takes the
first k of the annotation list, whose order COCO leaves arbitrary), and POPE keeps only images with at least k
objects, where vlmpref asks fewer questions about an image with fewer objects. With COCO annotations, present
objects are the image's segmentation labels and an absent one is named neither by them nor by a reference
caption.

Answers are read two ways (metrics.json reports both):

- `vlmpref` (`says_yes`, the default): an empty answer is no. A leading "yes"/"no" word decides ("Yes, ...",
  "No.", "Nope", "Correct"), case ignored. Otherwise the first sentence decides and later ones never override
  it: when it names the probed object, yes unless that mention is negated (vlmpref's negation scope: "There
  is no doubt that a dog is here." is yes, "I don't see a dog." is no); when it names other objects only, no
  ("There is a cat."); when it names none, no if it holds a negation ("There is none.", "I can't tell."), else yes.
- `pope_compat` (`vlmpref.eval.compat.pope_compat_says_yes`): POPE's evaluate.py rule, quirks included.

Metrics, with "yes" as the positive class: accuracy, precision, recall, F1 and the share of yes.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vlmpref.eval import stats
from vlmpref.eval.grammar import word_classes
from vlmpref.eval.vocab import NEGATIONS, Vocabulary, tokenize

STRATEGIES = ("random", "popular", "adversarial")


@dataclass(frozen=True)
class Probe:
    image: int  # index into the list of distinct images
    object: str
    label: bool  # True: the object is in the image
    strategy: str


def image_key(images) -> str:
    """A content hash of a row's images, so rows asking about the same picture share one POPE image."""
    h = hashlib.md5()
    for image in images:
        h.update(f"{image.mode}{image.size}".encode())
        h.update(image.tobytes())
    return h.hexdigest()


def distinct_images(rows: list[dict], vocab: Vocabulary) -> list[tuple[int, set[str], set[str]]]:
    """(index of the first row showing it, objects present, objects named anywhere) per distinct annotated image.

    Present objects are the `objects` labels; objects named anywhere add those of the reference `captions`.
    """
    from vlmpref.eval.hallucination import truth as ground_truth

    seen: dict[str, int] = {}
    out = []
    for i, row in enumerate(rows):
        present = vocab.ground_truth(row.get("objects"))
        if not present or not row.get("images"):
            continue
        key = image_key(row["images"])
        if key not in seen:
            seen[key] = len(out)
            out.append((i, present, ground_truth(vocab, row.get("objects"), row.get("captions")) | present))
    return out


def sample_probes(truths: list[set[str]], objects: tuple[str, ...], strategies=STRATEGIES, per_image: int = 3,
                  seed: int = 0, present: list[set[str]] | None = None) -> list[Probe]:
    """Balanced present/absent probes for every image and strategy, as the paper samples them (deterministic).

    `truths`: every object named for each image (never asked as absent); `present`: the objects that may be
    asked as present (default: `truths`); `objects`: the vocabulary, a last resort for random negatives.
    """
    present = truths if present is None else present
    frequency = Counter(o for truth in present for o in truth)
    pool = sorted(frequency) or sorted(objects)
    together: Counter = Counter()
    for truth in present:
        for a in truth:
            for b in truth:
                if a != b:
                    together[a, b] += 1
    probes = []
    for i, (truth, asked) in enumerate(zip(truths, present)):
        k = min(per_image, len(asked))
        positives = random.Random(f"{seed}/{i}/present").sample(sorted(asked), k)
        chosen = {s: [] for s in strategies}
        for strategy in strategies:
            rng = random.Random(f"{seed}/{i}/{strategy}")
            for p in positives:
                taken = truth | set(chosen[strategy])
                if strategy == "random":
                    ranked = []
                elif strategy == "popular":
                    ranked = sorted(frequency, key=lambda o: (-frequency[o], o))
                elif strategy == "adversarial":
                    ranked = sorted((o for o in frequency if together[p, o]),
                                    key=lambda o: (-together[p, o], -frequency[o], o))
                else:
                    raise ValueError(f"unknown POPE strategy {strategy!r}")
                negative = next((o for o in ranked if o not in taken), None)
                if negative is None:  # the paper's fallback: a random object of the split
                    left = [o for o in pool if o not in taken] or [o for o in objects if o not in taken]
                    negative = rng.choice(left) if left else None
                chosen[strategy].append(negative)
        # keep the probes balanced: a present object without a negative in some strategy is not asked at all
        keep = [j for j in range(k) if all(chosen[s][j] is not None for s in strategies)]
        for strategy in strategies:
            probes += [Probe(i, positives[j], True, strategy) for j in keep]
            probes += [Probe(i, chosen[strategy][j], False, strategy) for j in keep]
    return probes


def question(obj: str) -> str:
    article = "an" if obj[:1] in "aeiou" else "a"
    return f"Is there {article} {obj} in the image?"


AFFIRMATIVE = {"yes", "yeah", "yep", "yup", "correct", "certainly", "absolutely", "definitely", "indeed", "affirmative",
               "sure"}
NEGATIVE = {"no", "nope", "nah", "negative", "not"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def first_sentence(answer: str) -> str:
    return next((s for s in _SENTENCE_END.split((answer or "").strip()) if s.strip()), "")


def says_yes(answer: str, obj: str | None = None, vocab: Vocabulary | None = None) -> bool:
    """vlmpref's reading of a yes/no answer about `obj` (see the module docstring for the rule)."""
    sentence = first_sentence(answer)
    tokens = [t.text for t in tokenize(sentence)]
    words = [t for t in tokens if t not in ".,;:!?()"]
    if not words:
        return False
    lead_ends = len(tokens) == 1 or tokens[1] in ".,;:!?"
    if words[0] in AFFIRMATIVE and (lead_ends or words[0] in ("yes", "yeah", "yep", "yup")):
        return True
    if words[0] in NEGATIVE and (lead_ends or words[0] in ("nope", "nah")):
        return False
    if vocab is not None:
        mentions = vocab.mentions(sentence)
        if obj is not None and any(m.name == obj for m in mentions):
            return any(m.name == obj and not m.negated for m in mentions)
        if obj is not None and any(not m.negated for m in mentions):
            return False  # it names something else: "There is a cat." answers "Is there a dog?" with no
    classes = word_classes(words)
    negation = any(c == "NEG" for c in classes) or any(w in NEGATIONS for w in words)
    return not negation


def pope_metrics(labels: list[bool], predictions: list[bool]) -> dict:
    """Accuracy, precision, recall, yes-ratio (Wilson) and F1 (bootstrap) with "yes" as positive."""
    y, p = np.asarray(labels, dtype=bool), np.asarray(predictions, dtype=bool)

    def f1(idx):
        tp = float((y[idx] & p[idx]).sum())
        denominator = float(y[idx].sum() + p[idx].sum())
        return 2 * tp / denominator if denominator else float("nan")

    everything = np.arange(len(y))
    value = f1(everything) if len(y) else float("nan")
    return {
        "accuracy": stats.proportion(list(y == p)),
        "precision": stats.proportion(list(y[p])),
        "recall": stats.proportion(list(p[y])),
        "f1": {"value": value if np.isfinite(value) else None, "n": len(y),
               "ci95": stats.bootstrap_indices(len(y), f1), "ci": "bootstrap"},
        "yes_ratio": stats.proportion(list(p)),
    }
