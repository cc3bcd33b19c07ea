"""Train the demo's base model from scratch on the shapes world, and write it into the package.

    python scripts/build_demo_base.py                                  # the shipped model (one GPU, minutes)
    python scripts/build_demo_base.py --steps 20 --scenes 50 --output-dir /tmp/base   # a quick smoke run

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


def sft_tensors(processor, rows):
    """Prompt and chosen answer tokenized the way TRL's DPO collator does; loss only on the answer."""
    texts = [apply_chat_template({"prompt": clean_messages(r["prompt"]), "completion": clean_messages(r["chosen"])},
                                 processor) for r in rows]
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
                pixel_attention_mask=prompts["pixel_attention_mask"], labels=labels)


def encode_all(processor, rows, pad_id: int, chunk: int = 512) -> dict:
    """Every row encoded once, padded to one length, so training steps only index tensors."""
    parts = [sft_tensors(processor, rows[i:i + chunk]) for i in range(0, len(rows), chunk)]
    length = max(p["input_ids"].shape[1] for p in parts)
    out = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", -100)):
        out[key] = torch.cat([torch.nn.functional.pad(p[key], (0, length - p[key].shape[1]), value=fill)
                              for p in parts])
    out["pixel_values"] = torch.cat([p["pixel_values"] for p in parts])
    out["pixel_attention_mask"] = torch.cat([p["pixel_attention_mask"] for p in parts])
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default=str(DEFAULT_OUT), help="Where to save the model and processor.")
    parser.add_argument("--steps", type=int, default=12000, help="Optimizer steps.")
    parser.add_argument("--scenes", type=int, default=6000, help="Training images (5 questions each).")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="Where to train (the shipped model was trained on one GPU; the CPU works, slower).")
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

    # Repeated questions about one scene are real training signal here, so duplicates stay in
    rows, set_aside, _ = normalize(Dataset.from_list(raw), where="pretraining data", duplicates="keep")
    assert len(set_aside) == 0, set_aside[:5]
    rows = [r for r in rows]
    print(f"{len(rows)} SFT rows from {len(scenes)} scenes")

    # ---- model
    device = torch.device(args.device)
    model, processor = build_tiny_model(TinyModelConfig(output_dir=args.output_dir, seed=args.seed))
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=0.01)
    data = {k: v.to(device) for k, v in encode_all(processor, rows, processor.tokenizer.pad_token_id).items()}
    n = data["input_ids"].shape[0]

    # ---- train: a fixed number of steps, cosine schedule with a short warm-up
    started = time.time()
    generator = torch.Generator().manual_seed(args.seed)
    log = []
    for step in range(args.steps):
        lr = args.learning_rate * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(0, n, (args.batch_size,), generator=generator).to(device)
        loss = model(**{k: v[index] for k, v in data.items()}).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % 250 == 0:
            log.append({"step": step + 1, "loss": round(loss.item(), 4), "seconds": round(time.time() - started, 1)})
            print(log[-1], flush=True)

    # ---- save
    out = Path(args.output_dir)
    model.to("cpu").eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "training_log.json").write_text(json.dumps({
        "script": "scripts/build_demo_base.py", "args": vars(args), "steps": args.steps,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "seconds": round(time.time() - started, 1), "question_types": QUESTION_TYPES, "log": log}, indent=1))
    print(f"saved to {out} after {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
