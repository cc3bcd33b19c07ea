"""Evaluate one model on held-out rows, and write or read an evaluation folder.

    result = evaluate(model, processor, rows)          # {"metrics", "samples", "pope", "settings"}
    result = score_answers(rows, answers, pair_scores)  # the same metrics from answers given in hand
    write_eval(result, "runs/eval", rows=rows, info={"model": {...}, "dataset": {...}})
    run = read_eval("runs/eval")                       # EvalRun(metrics=..., samples=..., pope=...)

An evaluation folder holds:

    metrics.json    the numbers (schema below)
    samples.jsonl   one line per row: question, answers, and every per-example score
    pope.jsonl      one line per yes/no probe (POPE)
    images/         a thumbnail of each distinct image, for the report's examples

metrics.json, schema_version 2:

    {"schema_version": 2,
     "vlmpref_version": "0.1.0", "created": "2025-01-01T12:00:00", "seconds": 12.3,
     "model":   {"base": "...", "adapter": "..." | null, "quantization": "none"},
     "dataset": {"source": "...", "split": "test", "rows": 500, "set_aside": 0},
     "settings": {"beta": 0.1, "max_new_tokens": 64, "vocabulary": "shapes" | null,
                  "relevance_method": "embedding" | "lexical", "pope_per_image": 3,
                  "pope_strategies": ["random", "popular", "adversarial"], "seed": 0,
                  "readings": {"default": "vlmpref", "chair_compat": "...", "pope_compat": "..."}},
     "metrics": {
        "answer_accuracy": M, "answer_token_f1": M, "answer_accuracy_by_type": {"color": M, ...},
        "length_normalized_accuracy": M, "logprob_accuracy": M,
        "reward_accuracy": M, "reward_margin": M,           # only with an adapter (reference = adapter off)
        "chair_sentence": M, "chair_instance": M, "chair_sentence_by_type": {...},   # with a vocabulary
        "pope": {"random": {"accuracy": M, "precision": M, "recall": M, "f1": M, "yes_ratio": M},
                 "popular": {...}, "adversarial": {...}},                           # with a vocabulary
        "chair_compat": {"chair_sentence": M, "chair_instance": M},               # the published CHAIR reading
        "pope_compat": {"random": {...}, "popular": {...}, "adversarial": {...}},  # POPE's evaluate.py reading
        "relevance": M + {"method": "embedding" | "lexical"}, "relevance_lexical": M,
        "relevance_similarity_reference": M, "relevance_similarity_question": M}}   # with embeddings

Every M is `{"value": float | null, "n": int, "ci95": [low, high], "ci": "wilson" | "bootstrap"}`: the
value, the number of examples it is computed over, and its 95% interval (see `vlmpref.eval.stats`);
`chair_instance` counts mentions in `n` and answers in `examples`.
A metric that cannot be computed (no annotated objects, no adapter) is left out, never reported as 0.
Values are shares in [0, 1] except `reward_margin` and the similarities. Later schema versions only add
keys; a change of meaning gets a new `schema_version`. Version 2 (this one) sharpened vlmpref's reading of
answers (verbs, negation scope, word senses, POPE's first sentence), sampled POPE's adversarial and random
negatives as the paper does, and added the paper-compatible `chair_compat` and `pope_compat`; `chair_*` and
`pope` keep vlmpref's reading. Version 1 folders still read, with the compatible readings left out.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from peft import PeftModel

from vlmpref.eval import stats
from vlmpref.eval.answers import accuracy_rule, answer_correct, token_f1
from vlmpref.eval.compat import CHAIR_COMPAT, POPE_COMPAT, chair_compat_reader, pope_compat_says_yes, tokenizer_name
from vlmpref.eval.hallucination import chair_answer, chair_compat_answer, chair_metrics, truth
from vlmpref.eval.pope import STRATEGIES, distinct_images, image_key, pope_metrics, question, sample_probes, says_yes
from vlmpref.eval.preference import PairScores, preference_metrics, score_pairs
from vlmpref.eval.relevance import EMBEDDING_MODEL, score_relevance
from vlmpref.eval.vocab import Vocabulary, pick_vocabulary
from vlmpref.generate import answer_text, generate_batch, generate_rows, question_text, user_prompt

SCHEMA_VERSION = 2


def evaluate(model, processor, rows, beta: float = 0.1, batch_size: int = 16, max_new_tokens: int = 48,
             desc: str = "model", vocabulary: str | None = "auto", pope: bool = True, pope_per_image: int = 3,
             pope_strategies=STRATEGIES, pope_max_new_tokens: int = 8, relevance: str = "auto",
             seed: int = 0) -> dict:
    """Metrics (each with n and a 95% interval) and per-example records for `rows` in the internal form.

    `vocabulary`: "auto" (picked from the rows' `objects` labels), "coco80", "shapes", a JSON file, or None
    to skip CHAIR and POPE. `relevance`: "auto", "embedding" or "lexical".
    """
    rows = list(rows)
    vocab = pick_vocabulary(rows, vocabulary) if vocabulary else None

    # ---- preference: log-probs of chosen and rejected, and of the reference (adapter off) if any
    policy = score_pairs(model, processor, rows, batch_size=batch_size, desc=f"Scoring pairs ({desc})")
    reference = None
    if isinstance(model, PeftModel):
        reference = score_pairs(model, processor, rows, batch_size=batch_size, disable_adapter=True,
                                desc=f"Scoring pairs ({desc}, adapter off)")

    # ---- answers, and yes/no probes
    answers = list(generate_rows(model, processor, rows, batch_size=batch_size, max_new_tokens=max_new_tokens))
    probes = pope_probes(rows, vocab, pope_strategies, pope_per_image, seed) if vocab is not None and pope else []
    ask_probes(model, processor, rows, probes, batch_size, pope_max_new_tokens)

    result = score_answers(rows, answers, policy, reference, probes, vocab, beta=beta, relevance=relevance)
    result["settings"] = {"beta": beta, "max_new_tokens": max_new_tokens, "vocabulary": vocab.name if vocab else None,
                          "relevance_method": result.pop("relevance_method"),
                          "pope_per_image": pope_per_image if probes else None,
                          "pope_strategies": list(pope_strategies) if probes else [], "seed": seed,
                          "readings": readings(vocab)}
    return result


def readings(vocab: Vocabulary | None) -> dict:
    """What each reading in metrics.json is, for the settings block."""
    out = {"default": "vlmpref (see the README: nouns and verbs, negation scope, word senses, POPE's first sentence)",
           POPE_COMPAT: "POPE evaluate.py (Li et al., 2023): first sentence, 'No'/'no'/'not' as words"}
    if vocab is not None and vocab.name == "coco80":
        out[CHAIR_COMPAT] = (f"CHAIR utils/chair.py (Rohrbach et al., 2018): published synonyms, Pattern 2.6 "
                             f"singularize, {tokenizer_name()}, every occurrence counted")
    return out


def chair_fields(generated: str, objects, captions, vocab: Vocabulary) -> dict:
    """The per-answer CHAIR record of both readings (compat only with the COCO vocabulary)."""
    gt = truth(vocab, objects, captions)
    out = {"objects": sorted(gt) if gt is not None else None}
    if gt is None:
        return out
    out.update(chair_answer(generated, gt, vocab))
    if vocab.name == "coco80":
        out.update(chair_compat_answer(generated, objects, captions, chair_compat_reader()))
    return out


def hallucination_metrics(samples: list[dict], probes: list[dict], vocab: Vocabulary | None) -> tuple[dict, list]:
    """CHAIR (both readings) over annotated samples and POPE (both readings) over answered probes."""
    metrics: dict = {}
    annotated = [s for s in samples if s.get("objects") is not None]
    if annotated:
        metrics.update(chair_metrics(annotated))
        metrics["chair_sentence_by_type"] = _by_type(
            annotated, lambda group: stats.proportion([bool(s["hallucinated"]) for s in group]))
        compat = [s for s in annotated if "chair_compat_mentioned" in s]
        if compat:
            metrics[CHAIR_COMPAT] = chair_metrics(compat, "chair_compat_mentioned", "chair_compat_hallucinated")
    probes = [{**p, "says_yes": says_yes(p["answer"], p.get("object"), vocab),
               "says_yes_compat": pope_compat_says_yes(p["answer"])} for p in probes]
    if probes:
        strategies = list(dict.fromkeys(p["strategy"] for p in probes))
        for key, field in (("pope", "says_yes"), (POPE_COMPAT, "says_yes_compat")):
            metrics[key] = {strategy: pope_metrics([p["label"] for p in probes if p["strategy"] == strategy],
                                                   [p[field] for p in probes if p["strategy"] == strategy])
                            for strategy in strategies}
    return metrics, probes


def score_answers(rows: list[dict], answers: list[str], policy: PairScores, reference: PairScores | None = None,
                  probes: list[dict] = (), vocab: Vocabulary | None = None, beta: float = 0.1,
                  relevance: str = "auto") -> dict:
    """Every metric from what the model produced: answers, pair log-probs, and answered POPE probes."""
    metrics = preference_metrics(policy, reference, beta=beta)
    questions = [question_text(r["prompt"]) for r in rows]
    references = [answer_text(r["chosen"]) for r in rows]
    method, relevance_records = score_relevance(answers, questions, references, [r.get("answer") for r in rows],
                                                vocab, relevance)
    samples = []
    for i, (row, generated) in enumerate(zip(rows, answers)):
        rule, key = accuracy_rule(references[i], row.get("answer"), row.get("objects"))
        sample = {"row_id": row.get("row_id", i), "question": questions[i], "question_type": row.get("question_type"),
                  "image": image_key(row["images"]) if row.get("images") else None,
                  "generated": generated, "chosen": references[i], "rejected": answer_text(row["rejected"]),
                  "accuracy_rule": rule, "key": key,
                  "correct": answer_correct(generated, references[i], row.get("answer"), row.get("objects")),
                  "token_f1": round(token_f1(generated, references[i]), 4)}
        sample.update(chair_fields(generated, row.get("objects"), row.get("captions"), vocab) if vocab
                      else {"objects": None})
        sample.update(relevance_records[i])
        sample.update(_pair_fields(policy, reference, i, beta))
        samples.append(sample)

    metrics["answer_accuracy"] = stats.proportion([s["correct"] for s in samples])
    metrics["answer_token_f1"] = stats.mean([s["token_f1"] for s in samples])
    metrics["answer_accuracy_by_type"] = _by_type(samples, lambda group: stats.proportion([s["correct"] for s in group]))

    # ---- hallucination: CHAIR on the answers, POPE from the probes, each in both readings
    found, probes = hallucination_metrics(samples, list(probes), vocab)
    metrics.update(found)

    # ---- relevance
    metrics["relevance"] = {**stats.proportion([s["relevant"] for s in samples]),
                            "method": f"embedding ({EMBEDDING_MODEL})" if method == "embedding" else "lexical"}
    metrics["relevance_lexical"] = stats.proportion([s["lexical_relevant"] for s in samples])
    if method == "embedding":
        metrics["relevance_similarity_reference"] = stats.mean([s["similarity_reference"] for s in samples])
        metrics["relevance_similarity_question"] = stats.mean([s["similarity_question"] for s in samples])
    return {"metrics": metrics, "samples": samples, "pope": probes, "relevance_method": method}


def _pair_fields(policy, reference, i: int, beta: float) -> dict:
    out = {"chosen_logp": policy.chosen_logps[i], "rejected_logp": policy.rejected_logps[i],
           "chosen_tokens": policy.chosen_tokens[i], "rejected_tokens": policy.rejected_tokens[i],
           "prefers_chosen": policy.chosen_logps[i] > policy.rejected_logps[i],
           "prefers_chosen_per_token": policy.chosen_logps[i] / max(policy.chosen_tokens[i], 1)
           > policy.rejected_logps[i] / max(policy.rejected_tokens[i], 1)}
    if reference is not None:
        margin = beta * ((policy.chosen_logps[i] - reference.chosen_logps[i])
                         - (policy.rejected_logps[i] - reference.rejected_logps[i]))
        out.update({"ref_chosen_logp": reference.chosen_logps[i], "ref_rejected_logp": reference.rejected_logps[i],
                    "reward_margin": margin})
    return out


def _by_type(samples: list[dict], metric) -> dict:
    groups = defaultdict(list)
    for s in samples:
        groups[s.get("question_type") or "all"].append(s)
    return {k: metric(v) for k, v in sorted(groups.items())}


def pope_probes(rows: list[dict], vocab: Vocabulary, strategies=STRATEGIES, per_image: int = 3,
                seed: int = 0) -> list[dict]:
    """The yes/no probes for these rows' distinct images, as records still without answers."""
    images = distinct_images(rows, vocab)
    records = []
    for p in sample_probes([named for _, _, named in images], vocab.objects, strategies, per_image, seed,
                           present=[present for _, present, _ in images]):
        first = images[p.image][0]
        records.append({"strategy": p.strategy, "row_id": rows[first].get("row_id", first), "row_index": first,
                        "image": image_key(rows[first]["images"]), "object": p.object,
                        "question": question(p.object), "label": p.label})
    return records


def ask_probes(model, processor, rows, probes: list[dict], batch_size: int, max_new_tokens: int) -> None:
    """Fill in each probe's `answer`; a question about an image shared by strategies is asked once."""
    unique = list(dict.fromkeys((p["row_index"], p["question"]) for p in probes))
    answers: dict[tuple[int, str], str] = {}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(unique), batch_size):
            chunk = unique[start:start + batch_size]
            pictures = [rows[i]["images"] for i, _ in chunk]
            prompts = [user_prompt(q, len(pics)) for (_, q), pics in zip(chunk, pictures)]
            answers.update(zip(chunk, generate_batch(model, processor, prompts, pictures,
                                                     max_new_tokens=max_new_tokens)))
    finally:
        model.train(was_training)
    for p in probes:
        p["answer"] = answers[p["row_index"], p["question"]]


# ---- the evaluation folder


def write_eval(result: dict, out_dir: str | Path, rows=None, info: dict | None = None,
               thumbnail: int = 256) -> Path:
    """Write metrics.json, samples.jsonl, pope.jsonl and (given `rows`) a thumbnail of each distinct image."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples = result["samples"]
    if rows is not None:
        (out / "images").mkdir(exist_ok=True)
        written = set()
        for row, sample in zip(rows, samples):
            if not row.get("images") or sample.get("image") is None:
                continue
            name = f"images/{sample['image'][:16]}.png"
            if name not in written:
                picture = row["images"][0].copy()
                picture.thumbnail((thumbnail, thumbnail))
                picture.save(out / name)
                written.add(name)
            sample["image_file"] = name
    document = {"schema_version": SCHEMA_VERSION, **_versions(), **(info or {}),
                "settings": result.get("settings", {}), "metrics": result["metrics"]}
    (out / "metrics.json").write_text(json.dumps(document, indent=2))
    _write_jsonl(out / "samples.jsonl", samples)
    _write_jsonl(out / "pope.jsonl", result.get("pope", []))
    return out


def _versions() -> dict:
    from vlmpref import __version__

    return {"vlmpref_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _write_jsonl(path: Path, records: list[dict]):
    with path.open("w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass
class EvalRun:
    """An evaluation folder read back: metrics.json's document, its metrics, samples and POPE probes."""

    folder: Path
    document: dict
    samples: list[dict] = field(default_factory=list)
    pope: list[dict] = field(default_factory=list)

    @property
    def metrics(self) -> dict:
        return self.document.get("metrics", {})


def read_eval(folder: str | Path) -> EvalRun:
    """Read an evaluation folder written by `write_eval` (`vlmpref eval`)."""
    from vlmpref.errors import VlmprefError

    folder = Path(folder)
    path = folder / "metrics.json"
    if not path.is_file():
        raise VlmprefError(f"{folder} holds no metrics.json; point to a folder written by `vlmpref eval`.")
    document = json.loads(path.read_text())
    if "schema_version" not in document:  # an early flat file: the metrics only
        document = {"schema_version": 0, "metrics": document}
    if document["schema_version"] > SCHEMA_VERSION:
        raise VlmprefError(f"{path} has schema_version {document['schema_version']}, newer than this vlmpref "
                           f"reads ({SCHEMA_VERSION}); upgrade vlmpref.")
    return EvalRun(folder, document, _read_jsonl(folder / "samples.jsonl"), _read_jsonl(folder / "pope.jsonl"))
