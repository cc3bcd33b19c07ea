"""`vlmpref score`: hallucination metrics of answers you already have (vLLM, an API, another framework), no model.

    vlmpref score --answers answers.jsonl --output-dir runs/score
    vlmpref score --answers captions.jsonl --coco-instances instances_val2014.json \
        --coco-captions captions_val2014.json --output-dir runs/score_coco

One JSON object per line, the question, the answer and its ground truth, either
    {"question": "Describe the image.", "answer": "A dog on a couch.", "objects": ["dog", "couch"]}     (CHAIR)
    {"question": "Is there a dog in the image?", "answer": "Yes.", "label": "yes"}                    (POPE)
CHAIR rows may add "captions" (reference captions, whose objects count as present, as CHAIR defines them), or
"image_id" / "image" (a COCO id or file name) to take objects and captions from --coco-instances and
--coco-captions; POPE rows may add "object" (else read from "Is there a/an X in the image?"), "image" and
"strategy" (random, popular, adversarial; default --strategy). Optional on both: "id", "question_type".

Writes metrics.json (CHAIR and POPE in vlmpref's reading and the papers' chair_compat / pope_compat),
samples.jsonl, pope.jsonl, rejected_rows.jsonl and score_config.yaml, like `vlmpref eval`; two such folders
compare with `vlmpref compare`. Rows that cannot be scored are set aside with their reason, never dropped.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vlmpref import config as config_io
from vlmpref.errors import VlmprefError

_PROBE = re.compile(r"^\s*is there (?:(?:an|a|any|some)\s+)?(.+?)\s+in the (?:image|picture|photo)\s*\?*\s*$", re.I)
LABELS = {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}


@dataclass
class ScoreConfig:
    """Options of `vlmpref score`."""

    answers: str = field(default="", metadata={"path": "in", 
        "help": "JSONL file, one answer a line: question, answer, and objects (CHAIR) or label (POPE)."})
    output_dir: str = field(default="runs/score", metadata={"path": "out", "help": "Folder for metrics.json, samples.jsonl, ..."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --output-dir."})
    vocabulary: str = field(default="auto", metadata={
        "help": "Objects for CHAIR and POPE: auto (from the rows' labels), coco80, shapes, or a JSON file."})
    coco_instances: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "COCO instances_*.json: objects of rows given by image_id or image file name."})
    coco_captions: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "COCO captions_*.json: reference captions of those rows (their objects count as present)."})
    strategy: str = field(default="given", metadata={
        "help": "POPE strategy for rows without a 'strategy' field (e.g. random, popular, adversarial)."})

    def __post_init__(self):
        if not self.answers:
            raise VlmprefError("No answers given; pass --answers with a JSONL file of question, answer and objects "
                               "or label.")


def _text(row: dict, *keys: str) -> str | None:
    value = next((row[k] for k in keys if k in row), None)
    return value if isinstance(value, str) else None


def probe_object(question: str) -> str | None:
    """The object a POPE question asks about: "Is there a dining table in the image?" -> "dining table"."""
    found = _PROBE.match(question or "")
    return found.group(1).lower() if found else None


def read_answers(path: str | Path, coco=None, strategy: str = "given") -> tuple[list[dict], list[dict], list[dict]]:
    """(CHAIR rows, POPE rows, set-aside rows with reasons) of an answers file."""
    file = Path(path)
    if not file.is_file():
        raise VlmprefError(f"Answers file {path} does not exist; check the path given to --answers.")
    chair, pope, aside = [], [], []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue

        def reject(reason: str):
            aside.append({"source": str(path), "row_id": number, "reason": reason})

        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            reject(f"line is not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            reject("line is not a JSON object")
            continue
        question, answer = _text(row, "question", "prompt"), _text(row, "answer", "response", "output")
        if not question or not question.strip():
            reject("no question (a non-empty 'question' string)")
            continue
        if answer is None:
            reject("no answer (an 'answer' string; it may be empty)")
            continue
        row_id = row.get("id", row.get("question_id", number))
        base = {"row_id": row_id, "question": question, "answer": answer, "question_type": row.get("question_type")}
        if "label" in row:
            label = LABELS.get(str(row["label"]).strip().lower())
            if label is None:
                reject(f"label {row['label']!r} is neither yes nor no")
                continue
            obj = row.get("object") or probe_object(question)
            pope.append({**base, "label": label, "object": obj.lower() if isinstance(obj, str) else None,
                         "image": str(row.get("image", row.get("image_id", row_id))),
                         "strategy": str(row.get("strategy") or row.get("category") or strategy)})
            continue
        objects, captions = row.get("objects"), row.get("captions")
        if objects is None and captions is None and coco is not None and ("image_id" in row or "image" in row):
            found = coco.lookup(row.get("image_id"), row.get("image"))
            if found is None:
                reject(f"image {row.get('image_id', row.get('image'))!r} is in neither COCO annotation file")
                continue
            objects, captions = found["objects"], found["captions"]
        if objects is None and captions is None:
            reject("neither ground-truth 'objects' (CHAIR) nor a yes/no 'label' (POPE)")
            continue
        if objects is not None and not isinstance(objects, list):
            reject("'objects' is not a list of names")
            continue
        if captions is not None and not (isinstance(captions, list) and all(isinstance(c, str) for c in captions)):
            reject("'captions' is not a list of strings")
            continue
        chair.append({**base, "objects": objects or [], "captions": captions or [],
                      "image": str(row.get("image", row.get("image_id", row_id)))})
    return chair, pope, aside


def score_rows(chair: list[dict], pope: list[dict], vocabulary: str = "auto") -> dict:
    """Metrics (both readings), samples and probe records, as `vlmpref.eval.evaluate.score_answers` gives them."""
    from vlmpref.eval.evaluate import chair_fields, hallucination_metrics, readings
    from vlmpref.eval.vocab import load_vocabulary, pick_vocabulary

    labelled = [{"objects": r["objects"]} for r in chair] + [{"objects": [p["object"]]} for p in pope if p["object"]]
    vocab = pick_vocabulary(labelled, vocabulary) or load_vocabulary("coco80")
    samples = [{"row_id": r["row_id"], "question": r["question"], "question_type": r["question_type"],
                "image": r["image"], "generated": r["answer"],
                **chair_fields(r["answer"], r["objects"], r["captions"], vocab)} for r in chair]
    probes = []
    for p in pope:  # the probed object in the vocabulary's name, so vlmpref's reading can find it in the answer
        obj = vocab.canonical(p["object"]) if p["object"] else None
        probes.append({"strategy": p["strategy"], "row_id": p["row_id"], "image": p["image"],
                       "object": obj or p["object"], "question": p["question"], "label": p["label"],
                       "answer": p["answer"]})
    metrics, probes = hallucination_metrics(samples, probes, vocab)
    settings = {"vocabulary": vocab.name, "readings": readings(vocab),
                "pope_strategies": list(dict.fromkeys(p["strategy"] for p in probes))}
    return {"metrics": metrics, "samples": samples, "pope": probes, "settings": settings}


def run_score(cfg: ScoreConfig) -> Path:
    """Score the answers file as `cfg` says and write the evaluation folder; returns its path."""
    from vlmpref.eval.evaluate import write_eval
    from vlmpref.runs import prepare_output_dir

    started = time.time()
    coco = None
    if cfg.coco_instances or cfg.coco_captions:
        from vlmpref.eval.coco import load_coco

        coco = load_coco(cfg.coco_instances, cfg.coco_captions)
    chair, pope, aside = read_answers(cfg.answers, coco, cfg.strategy)
    out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    config_io.save(cfg, out / "score_config.yaml")
    with (out / "rejected_rows.jsonl").open("w") as f:
        for row in aside:
            f.write(json.dumps(row) + "\n")
    reasons = Counter(r["reason"] for r in aside)
    print(f"{cfg.answers}: {len(chair)} CHAIR rows and {len(pope)} POPE rows used, {len(aside)} set aside"
          + (" (" + "; ".join(f"{n} x {reason}" for reason, n in reasons.most_common()) + ")" if aside else ""))
    if not chair and not pope:
        raise VlmprefError(f"{cfg.answers} has no row to score; see {out / 'rejected_rows.jsonl'} for the reasons.")
    result = score_rows(chair, pope, cfg.vocabulary)
    info = {"seconds": round(time.time() - started, 1),
            "model": {"base": f"answers from {cfg.answers}", "adapter": None, "quantization": None},
            "dataset": {"source": cfg.answers, "split": None, "rows": len(chair) + len(pope),
                        "set_aside": len(aside)}}
    return write_eval(result, out, info=info)
