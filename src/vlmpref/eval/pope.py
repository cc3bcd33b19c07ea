"""Yes/no object probing, POPE-style (Li et al., 2023): "Is there a X in the image?".

For every distinct image with a ground-truth object list, k present objects are asked about (label yes)
and as many absent ones (label no), k = min(--pope-per-image, present, absent). Absent objects are
chosen three ways, each reported on its own:

    random:       uniformly among the vocabulary's objects not in the image;
    popular:      the objects in most images of the split, not in this one;
    adversarial:  the objects that co-occur most often (same image) with this image's objects.

The present objects asked about are the same for all three (seeded per image), so the three differ only
in their negatives. An answer is read as yes/no by its first "yes" or "no"; without either, a negation
word ("not", "isn't", ...) reads as no, any other non-empty answer as yes (POPE's rule), an empty one as
no. Metrics, with "yes" as the positive class: accuracy, precision, recall, F1 and the share of yes.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass

import numpy as np

from vlmpref.eval import stats
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


def distinct_images(rows: list[dict], vocab: Vocabulary) -> list[tuple[int, set[str]]]:
    """(index of the first row showing it, ground-truth objects) for each distinct annotated image."""
    seen: dict[str, int] = {}
    out = []
    for i, row in enumerate(rows):
        truth = vocab.ground_truth(row.get("objects"))
        if not truth or not row.get("images"):
            continue
        key = image_key(row["images"])
        if key not in seen:
            seen[key] = len(out)
            out.append((i, truth))
    return out


def sample_probes(truths: list[set[str]], objects: tuple[str, ...], strategies=STRATEGIES, per_image: int = 3,
                  seed: int = 0) -> list[Probe]:
    """Balanced present/absent probes for every image and strategy (deterministic given the seed)."""
    frequency = Counter(o for truth in truths for o in truth)
    together: Counter = Counter()
    for truth in truths:
        for a in truth:
            for b in truth:
                if a != b:
                    together[a, b] += 1
    probes = []
    for i, truth in enumerate(truths):
        present = sorted(truth)
        absent = [o for o in objects if o not in truth]
        k = min(per_image, len(present), len(absent))
        if k == 0:
            continue
        positives = random.Random(f"{seed}/{i}/present").sample(present, k)
        for strategy in strategies:
            if strategy == "random":
                negatives = random.Random(f"{seed}/{i}/absent").sample(absent, k)
            elif strategy == "popular":
                negatives = sorted(absent, key=lambda o: (-frequency[o], o))[:k]
            elif strategy == "adversarial":
                negatives = sorted(absent, key=lambda o: (-sum(together[o, p] for p in truth), -frequency[o], o))[:k]
            else:
                raise ValueError(f"unknown POPE strategy {strategy!r}")
            probes += [Probe(i, o, True, strategy) for o in positives]
            probes += [Probe(i, o, False, strategy) for o in negatives]
    return probes


def question(obj: str) -> str:
    article = "an" if obj[:1] in "aeiou" else "a"
    return f"Is there {article} {obj} in the image?"


def says_yes(answer: str) -> bool:
    """Read a free-form answer as yes or no (see the module docstring for the rule)."""
    tokens = [t.text for t in tokenize(answer) if not t.is_punct]
    first = next((t for t in tokens if t in ("yes", "no")), None)
    if first is not None:
        return first == "yes"
    if any(t in NEGATIONS or t.endswith("n't") for t in tokens):
        return False
    return bool(tokens)


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
