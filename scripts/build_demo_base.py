"""Train the demo's base model from scratch on the shapes world, and write it into the package.

    python scripts/build_demo_base.py                                   # ~10 min on a 2-core CPU
    python scripts/build_demo_base.py --minutes 1 --output-dir /tmp/base  # a quick smoke run

The result is a tiny Idefics3 (SmolVLM architecture) that answers the shapes questions, but imperfectly:
the starting point `vlmpref demo` tunes with DPO. It trains by supervised fine-tuning on *training*
layouts only (see `is_heldout_layout`), so the demo's held-out split is new to it. Answers of the SFT data
are noisy on purpose: with probability --noise the hallucinated answer is used, as in web-scale caption
data, which is where real VLMs pick up their hallucinations.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
from trl.data_utils import apply_chat_template
from trl.trainer.utils import flush_left

from vlmpref.data.normalize import clean_messages, normalize
from vlmpref.data.synthetic import COLORS, QUESTION_TYPES, SHAPES, Shape, describe, generate_scenes, scene_rows
from vlmpref.models.tiny import TinyModelConfig, build_tiny_model

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "vlmpref" / "assets" / "demo_base"


def hallucinated(row: dict, rng: random.Random) -> str:
    """The biased answer for absent-shape and description questions; other answers stay correct."""
    if row["question_type"] == "exist" and row["answer"] == "no":
        return row["rejected"]  # "Yes, there is a <absent shape>."
    if row["question_type"] == "describe":
        present = {o["shape"] for o in row["objects"]}
        extra = Shape(rng.choice([s for s in SHAPES if s not in present]), rng.choice(list(COLORS)), "")
        objects = [Shape(o["shape"], o["color"], o["position"]) for o in row["objects"]]
        return describe(objects + [extra])
    return row["chosen"]


def sft_batch(processor, rows):
    """Prompt and chosen answer tokenized the way TRL's DPO collator does; loss only on the answer."""
    texts = [apply_chat_template({"prompt": clean_messages(r["prompt"]), "completion": clean_messages(r["chosen"])},
                                 processor)
             for r in rows]
    prompts = processor(images=[r["images"] for r in rows], text=[t["prompt"] for t in texts], padding=True,
                        padding_side="left", return_tensors="pt", add_special_tokens=False)
    answers = processor.tokenizer([t["completion"] for t in texts], padding=True, padding_side="right",
                                  return_tensors="pt", add_special_tokens=False)
    input_ids = torch.cat([prompts["input_ids"], answers["input_ids"]], dim=1)
    attention = torch.cat([prompts["attention_mask"], answers["attention_mask"]], dim=1)
    completion = torch.cat([torch.zeros_like(prompts["attention_mask"]), answers["attention_mask"]], dim=1)
    attention, input_ids, completion = flush_left(attention, input_ids, completion)
    labels = input_ids.masked_fill(completion == 0, -100)
    return dict(input_ids=input_ids, attention_mask=attention, pixel_values=prompts["pixel_values"],
                pixel_attention_mask=prompts.get("pixel_attention_mask"), labels=labels)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(DEFAULT_OUT), help="Where to save the model and processor.")
    parser.add_argument("--minutes", type=float, default=10.0, help="Training time budget (wall clock).")
    parser.add_argument("--scenes", type=int, default=3000, help="Training images (5 questions each).")
    parser.add_argument("--hallucination-rate", type=float, default=0.6,
                        help="Share of absent-shape questions answered yes, and of descriptions given an extra shape.")
    parser.add_argument("--batch-size", type=int, default=32, help="Rows per step.")
    parser.add_argument("--learning-rate", type=float, default=2e-3, help="Peak AdamW learning rate.")
    parser.add_argument("--seed", type=int, default=1234, help="Seed of weights, data and order.")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    # ---- data: training layouts only, seed distinct from the demo's DPO split
    scenes = generate_scenes(args.scenes, seed=args.seed, heldout=False)
    raw = [row for s in scenes for row in scene_rows(s)]
    for row in raw:
        wrong = hallucinated(row, rng) if rng.random() < args.hallucination_rate else row["chosen"]
        if wrong != row["chosen"]:  # SFT uses `chosen`; keep the pair distinct for the row checks
            row["chosen"], row["rejected"] = wrong, row["chosen"]
    from datasets import Dataset

    rows, set_aside = normalize(Dataset.from_list(raw), where="pretraining data")
    assert len(set_aside) == 0, set_aside[:5]
    rows = [r for r in rows]
    print(f"{len(rows)} SFT rows from {len(scenes)} scenes")

    # ---- model
    model, processor = build_tiny_model(TinyModelConfig(output_dir=args.output_dir, seed=args.seed))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)

    # ---- train on a time budget with a cosine schedule over the expected number of steps
    started = time.time()
    probe = sft_batch(processor, rows[: args.batch_size])
    for _ in range(2):  # warm-up, then time three steps
        model(**probe).loss.backward()
    t0 = time.time()
    for _ in range(3):
        model(**probe).loss.backward()
    optimizer.zero_grad()
    step_seconds = (time.time() - t0) / 3
    total_steps = max(10, int(args.minutes * 60 / (step_seconds * 1.15)))
    print(f"~{step_seconds:.3f} s/step -> {total_steps} steps")
    step, log = 0, []
    while step < total_steps:
        rng.shuffle(rows)
        for i in range(0, len(rows) - args.batch_size + 1, args.batch_size):
            lr = args.learning_rate * (min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / total_steps)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = model(**sft_batch(processor, rows[i:i + args.batch_size])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % 50 == 0:
                log.append({"step": step, "loss": round(loss.item(), 4), "seconds": round(time.time() - started, 1)})
                print(log[-1], flush=True)
            if step >= total_steps:
                break

    # ---- save
    out = Path(args.output_dir)
    model.eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps({
        "script": "scripts/build_demo_base.py", "args": vars(args), "steps": step,
        "seconds": round(time.time() - started, 1), "question_types": QUESTION_TYPES, "log": log}, indent=1))
    print(f"saved to {out} after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
