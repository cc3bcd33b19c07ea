"""Object hallucination in answers, CHAIR-style (Rohrbach et al., 2018).

For each answer with a ground-truth object list: the objects it mentions (through the vocabulary's
synonyms and plurals, negated mentions left out: "there is no dog" mentions no dog), and of those the
ones the image does not hold. Each object counts once per answer.

    CHAIR-sentence = answers with at least one hallucinated object / answers evaluated
    CHAIR-instance = hallucinated objects / mentioned objects (summed over answers)

Answers that mention nothing count in CHAIR-sentence as clean; an empty answer mentions nothing.
"""

from __future__ import annotations

from vlmpref.eval import stats
from vlmpref.eval.vocab import Vocabulary


def chair_answer(answer: str, truth: set[str], vocab: Vocabulary) -> dict:
    """Mentioned and hallucinated objects of one answer, with the character spans of hallucinated words."""
    mentions = [m for m in vocab.mentions(answer) if not m.negated]
    mentioned = list(dict.fromkeys(m.name for m in mentions))
    hallucinated = [name for name in mentioned if name not in truth]
    spans = [[m.start, m.end] for m in mentions if m.name not in truth]
    return {"mentioned": mentioned, "hallucinated": hallucinated, "hallucinated_spans": spans}


def chair_metrics(records: list[dict]) -> dict:
    """CHAIR-sentence (Wilson) and CHAIR-instance (bootstrap over answers) of per-answer records."""
    return {
        "chair_sentence": stats.proportion([bool(r["hallucinated"]) for r in records]),
        "chair_instance": stats.ratio_of_sums([len(r["hallucinated"]) for r in records],
                                              [len(r["mentioned"]) for r in records]),
    }
