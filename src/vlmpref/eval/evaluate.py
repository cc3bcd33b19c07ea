"""Evaluate one model on held-out rows: preference metrics and answer accuracy, with per-example samples."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from peft import PeftModel

from vlmpref.eval import stats
from vlmpref.eval.answers import answer_correct, token_f1
from vlmpref.eval.preference import preference_metrics, score_pairs
from vlmpref.generate import answer_text, generate_rows, question_text


def evaluate(model, processor, rows, beta: float = 0.1, batch_size: int = 16, max_new_tokens: int = 48,
             desc: str = "model") -> dict:
    """Metrics (each with n and a 95% interval) and per-example samples for `rows` in the internal form."""
    rows = list(rows)
    policy = score_pairs(model, processor, rows, batch_size=batch_size, desc=f"Scoring pairs ({desc})")
    reference = None
    if isinstance(model, PeftModel):
        reference = score_pairs(model, processor, rows, batch_size=batch_size, disable_adapter=True,
                                desc=f"Scoring pairs ({desc}, adapter off)")
    metrics = preference_metrics(policy, reference, beta=beta)

    answers = list(generate_rows(model, processor, rows, batch_size=batch_size, max_new_tokens=max_new_tokens))
    samples, correct, f1, by_type = [], [], [], defaultdict(list)
    for i, (row, generated) in enumerate(zip(rows, answers)):
        reference_answer = answer_text(row["chosen"])
        ok = answer_correct(generated, reference_answer, key=row.get("answer"), objects=row.get("objects"))
        correct.append(ok)
        f1.append(token_f1(generated, reference_answer))
        by_type[row.get("question_type") or "all"].append(ok)
        samples.append({"row_id": row.get("row_id", i), "question": question_text(row["prompt"]),
                        "question_type": row.get("question_type"), "generated": generated,
                        "chosen": reference_answer, "rejected": answer_text(row["rejected"]), "correct": ok,
                        "chosen_logp": policy.chosen_logps[i], "rejected_logp": policy.rejected_logps[i]})
    metrics["answer_accuracy"] = stats.proportion(correct)
    metrics["answer_token_f1"] = stats.mean(f1)
    metrics["answer_accuracy_by_type"] = {k: stats.proportion(v) for k, v in sorted(by_type.items())}
    return {"metrics": metrics, "samples": samples}


def write_eval(result: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result["metrics"], indent=2))
    with (out / "samples.jsonl").open("w") as f:
        for s in result["samples"]:
            f.write(json.dumps(s) + "\n")
    return out
