"""Object hallucination in answers, CHAIR-style (Rohrbach et al., 2018), in two readings.

For each answer with ground-truth objects: the objects it mentions, and of those the ones the image does not hold.

    CHAIR-sentence = answers with at least one hallucinated object / answers evaluated
    CHAIR-instance = hallucinated mentions / mentions (summed over answers)

- `vlmpref` (default, `chair_answer`): mentions as `Vocabulary.mentions` reads them (negation, verbs, word senses;
  see `vlmpref.eval.vocab`), each object counted once per answer.
- `chair_compat` (`chair_compat_answer`): the published scorer's reading (`vlmpref.eval.compat`), every
  occurrence counted, for the COCO vocabulary only (the published synonym list is COCO's).

Ground truth is the row's `objects` (segmentation labels) plus the objects each reading finds in the row's
reference `captions`, when it has them (CHAIR's definition). Answers that mention nothing count in
CHAIR-sentence as clean; an empty answer mentions nothing.
"""

from __future__ import annotations

from vlmpref.eval import stats
from vlmpref.eval.compat import CompatChair
from vlmpref.eval.vocab import Vocabulary


def object_labels(objects) -> list[str]:
    """The label strings of an `objects` value: names, or dicts with a `name`, `shape` or `label` key."""
    labels = []
    for obj in objects or []:
        label = obj if isinstance(obj, str) else (obj.get("name") or obj.get("shape") or obj.get("label"))
        if label:
            labels.append(label)
    return labels


def truth(vocab: Vocabulary, objects, captions=None) -> set[str] | None:
    """vlmpref's ground truth: the labels the vocabulary knows, plus the objects named in reference captions."""
    if objects is None and not captions:
        return None
    found = vocab.ground_truth(objects or []) or set()
    for caption in captions or []:
        found |= set(vocab.mentioned(caption))
    return found


def chair_answer(answer: str, truth: set[str], vocab: Vocabulary) -> dict:
    """Mentioned and hallucinated objects of one answer, with the character spans of hallucinated words."""
    mentions = [m for m in vocab.mentions(answer) if not m.negated]
    mentioned = list(dict.fromkeys(m.name for m in mentions))
    hallucinated = [name for name in mentioned if name not in truth]
    spans = [[m.start, m.end] for m in mentions if m.name not in truth]
    return {"mentioned": mentioned, "hallucinated": hallucinated, "hallucinated_spans": spans}


def chair_compat_answer(answer: str, objects, captions, reader: CompatChair) -> dict:
    """The published reading of one answer: `chair_compat_objects` (ground truth), and every occurrence."""
    gt = reader.truth(object_labels(objects), captions or [])
    record = reader.answer(answer, gt)
    return {"chair_compat_objects": sorted(gt), "chair_compat_mentioned": record["mentioned"],
            "chair_compat_hallucinated": record["hallucinated"]}


def chair_metrics(records: list[dict], mentioned: str = "mentioned", hallucinated: str = "hallucinated") -> dict:
    """CHAIR-sentence (Wilson) and CHAIR-instance (bootstrap over answers) of per-answer records."""
    return {
        "chair_sentence": stats.proportion([bool(r[hallucinated]) for r in records]),
        "chair_instance": stats.ratio_of_sums([len(r[hallucinated]) for r in records],
                                              [len(r[mentioned]) for r in records]),
    }
