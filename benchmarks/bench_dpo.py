"""Side-by-side DPO benchmark: TRL's DPOTrainer (the guide's recipe) against vlmpref's fast engine.

    python benchmarks/bench_dpo.py --models smolvlm-256m smolvlm-2.2b --out runs/bench.json   # one GPU
    python benchmarks/bench_dpo.py --smoke                                                     # CPU, seconds

Both engines train the same random-weight replica (SmolVLM configs, loaded through vlmpref's normal 4-bit
path), on the same synthetic pairs (640x480 images, ~15-word questions, ~90-word answers), with the same
hyperparameters (4-bit NF4, bf16, gradient checkpointing, 8 pairs per optimizer step). For each variant it
prints s/pair, pairs/s relative to TRL in the same run, peak reserved GPU memory, tokens processed per pair
and achieved TFLOP/s. Variants:

  trl         TRL 1.16 DPOTrainer, DoRA on q/k/v/o/gate/up/down (vision included), batch 1: the reference
  fast-exact  the same trainable parameters, no image cache; reference log-probs once (cost amortized over
              the guide's 5 epochs); `--pairs-per-forward` pairs per forward pass
  fast-bs1    fast-exact with one pair per forward (the memory floor)
  fast-lang   language-model-only DoRA, image features and reference log-probs cached (amortized over 5 epochs)
  ...@flex    (suffix, fast variants) the model loaded with FlexAttention: all pairs of a forward in one packed
              row under a block mask, instead of one padded row per pair under a dense mask (sdpa)

Results (GPU runs) are recorded in benchmarks/RESULTS.md. Timings are never asserted in tests; the test
suite runs `--smoke` only to check the script works.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

EPOCHS = 5  # the guide's; one-time costs (reference pass, image cache) are spread over them
QUESTION = ("Please describe in detail every shape that you can see in this picture, including its color and its "
            "position in the image.")


# ---- data


def _long_answer(scene, rng: random.Random, words: int, extra=None) -> str:
    from vlmpref.data.synthetic import COLUMNS

    objects = list(scene.left_to_right()) + ([extra] if extra else [])
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        for obj in objects:
            place = obj.column or rng.choice(COLUMNS)
            sentences.append(rng.choice([
                f"There is a {obj.color} {obj.shape} on the {place} side of the image.",
                f"The {obj.shape} on the {place} is {obj.color} and it is clearly visible in the picture.",
                f"I can see a {obj.color} {obj.shape} near the {place} of the picture.",
            ]))
    return " ".join(sentences)


def benchmark_rows(n: int, size: tuple[int, int], answer_words: int, seed: int = 0) -> list[dict]:
    """Preference rows in vlmpref's plain format: one image, a question, a long correct and hallucinated answer."""
    from vlmpref.data.synthetic import COLORS, SHAPES, Shape, generate_scenes, render

    rng = random.Random(seed)
    rows = []
    for scene in generate_scenes(n, seed=seed, heldout=False):
        present = {o.shape for o in scene.objects}
        fake = Shape(rng.choice([s for s in SHAPES if s not in present]), rng.choice(list(COLORS)), "")
        rows.append({"image": render(scene, size), "question": QUESTION,
                     "chosen": _long_answer(scene, random.Random(scene.seed), answer_words),
                     "rejected": _long_answer(scene, random.Random(scene.seed), answer_words, extra=fake)})
    return rows


# ---- work per pair (analytic), for tokens and FLOPs


def pair_tokens(processor, dataset) -> dict:
    """Mean tokens per pair: prompt (image tokens included), answers, vision patches."""
    from vlmpref.train.fast.packing import tokenize_pair

    prompt = chosen = rejected = patches = 0
    for row in dataset:
        pair = tokenize_pair(row, processor)
        prompt += len(pair.prompt_ids)
        chosen += len(pair.chosen_ids)
        rejected += len(pair.rejected_ids)
        pv = pair.pixel_inputs.get("pixel_values")
        if pv is not None:
            tiles = pv.shape[0] * pv.shape[1] if pv.dim() == 5 else pv.shape[0]
            patches += tiles * (pv.shape[-1] // processor_patch(processor)) ** 2
    n = len(dataset)
    return {"prompt": prompt / n, "chosen": chosen / n, "rejected": rejected / n, "vision_patches": patches / n}


def processor_patch(processor) -> int:
    return getattr(processor, "_bench_patch", 14)


def parameter_counts(model) -> dict:
    decoder = model.get_decoder()
    lm = sum(p.numel() for n, p in decoder.named_parameters() if "embed" not in n)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    embed = model.get_input_embeddings().weight.numel()
    return {"lm": lm, "vision": total - lm - head - embed, "head": head}


def flops_per_pair(variant: str, tokens: dict, params: dict) -> float:
    """Model FLOPs each engine's algorithm needs per pair (forward = 2 x params x tokens; backward = 2x forward;
    recomputation for gradient checkpointing not counted)."""
    p, c, r, v = tokens["prompt"], tokens["chosen"], tokens["rejected"], tokens["vision_patches"]
    fwd = lambda lm_tokens, head_tokens, vision: 2 * (params["lm"] * lm_tokens + params["head"] * head_tokens
                                                      + params["vision"] * vision)
    if variant == "trl":  # two sequences for the policy (fwd + bwd) and two again for the reference (fwd)
        seqs, head = 2 * p + c + r, 2 * p + c + r
        return 3 * fwd(seqs, head, 2 * v) + fwd(seqs, head, 2 * v)
    shared = p + c + r
    reference = fwd(shared, c + r, v) / EPOCHS
    if variant == "fast-lang":  # vision once per image for all epochs
        return 3 * fwd(shared, c + r, 0) + reference
    return 3 * fwd(shared, c + r, v) + reference


# ---- one variant


class StepTimer:
    """Wall time at the end of every optimizer step, with the GPU drained first."""

    def __init__(self):
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                timer.times.append(time.perf_counter())

        self.times: list[float] = []
        self.callback = _Callback()


def run_variant(variant: str, model_dir: str, dataset, args) -> dict:
    from trl import DPOConfig, DPOTrainer

    from vlmpref.models import load_model, load_processor, lora_config
    from vlmpref.train.fast import FastDPOTrainer

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    processor = load_processor(model_dir)
    variant, _, attention = variant.partition("@")  # "fast-lang:8@flex": FlexAttention over packed pairs
    if attention not in ("", "flex") or (attention and variant.startswith("trl")):
        raise SystemExit(f"unknown variant suffix @{attention}; only fast variants take @flex")
    model = load_model(model_dir, quantization=args.quantization,
                       dtype=torch.bfloat16 if (cuda or args.quantization != "none") else torch.float32,
                       attn_implementation="flex_attention" if attention else None)
    variant, _, packing = variant.partition(":")  # "fast-lang:8" packs 8 pairs per forward
    scope = "language" if variant == "fast-lang" else "all"
    peft_config = lora_config(model, use_dora=True, scope=scope)
    per_step = args.pairs_per_step
    ppf = int(packing) if packing else {"trl": 1, "fast-bs1": 1}.get(variant, args.pairs_per_forward)
    # A fresh folder per variant and run: a reused one would hand over stored reference log-probs
    output_dir = tempfile.mkdtemp(prefix=f"{variant}-{ppf}-", dir=args.work)
    config = DPOConfig(output_dir=output_dir, per_device_train_batch_size=1,
                       gradient_accumulation_steps=per_step, max_steps=1 + args.timed_steps, learning_rate=1e-5,
                       bf16=cuda or args.quantization != "none", use_cpu=not cuda, activation_checkpointing=True,
                       logging_steps=1000, save_strategy="no", report_to=[], max_length=None, seed=0,
                       dataloader_num_workers=0)
    timer = StepTimer()
    started = time.perf_counter()
    if variant == "trl":
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                             peft_config=peft_config, callbacks=[timer.callback])
        setup_extra = 0.0
    else:
        trainer = FastDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                                 peft_config=peft_config, callbacks=[timer.callback], pairs_per_forward=ppf,
                                 image_cache="auto")
        setup_extra = trainer.reference_seconds  # reference pass (+ image cache fill): once for all epochs
    setup = time.perf_counter() - started
    trainer.train()
    timed = timer.times[-1] - timer.times[0]  # the first step (warm-up, allocator growth) is left out
    pairs = args.timed_steps * per_step
    steady = timed / pairs
    amortized = steady + setup_extra / (EPOCHS * len(dataset))
    name = f"{variant}:{ppf}{'@' + attention if attention else ''}" if variant.startswith("fast") else variant
    result = {"variant": name, "attention": getattr(trainer, "attention", "sdpa"), "layout": getattr(trainer, "layout", None), "pairs_per_forward": ppf, "lora_scope": scope, "timed_pairs": pairs,
              "s_per_pair_steady": steady, "s_per_pair": amortized, "one_time_seconds": setup_extra,
              "setup_seconds": setup, "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
              "image_cache": getattr(trainer, "image_cache", None) is not None}
    del trainer, model
    gc.collect()
    return result


# ---- driver


def build_model_dir(name: str, root: Path, smoke: bool) -> str:
    from vlmpref.models.replicas import replica_spec, save_replica
    from vlmpref.models.tiny import TinyModelConfig, save_tiny_model

    out = root / name
    if not (out / "config.json").is_file():
        if smoke:
            save_tiny_model(TinyModelConfig(output_dir=str(out)))
        else:
            save_replica(name, out, device="cuda" if torch.cuda.is_available() else "cpu")
    return str(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smolvlm-256m", "smolvlm-2.2b"], help="Replica names.")
    parser.add_argument("--variants", nargs="+", default=["trl", "fast-exact", "fast-bs1", "fast-lang"],
                        help="trl, fast-exact, fast-bs1, fast-lang; append :N to pack N pairs per forward.")
    parser.add_argument("--pairs", type=int, default=24, help="Distinct pairs in the dataset.")
    parser.add_argument("--pairs-per-step", type=int, default=8, help="Pairs per optimizer step (all variants).")
    parser.add_argument("--timed-steps", type=int, default=2, help="Optimizer steps timed after one warm-up step.")
    parser.add_argument("--pairs-per-forward", type=int, default=4, help="fast-exact / fast-lang packing.")
    parser.add_argument("--image-size", type=int, nargs=2, default=[640, 480])
    parser.add_argument("--answer-words", type=int, default=90)
    parser.add_argument("--quantization", default="4bit")
    parser.add_argument("--work", default=None, help="Scratch folder (replicas, run outputs).")
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    parser.add_argument("--label", default="", help="Recorded with the results (e.g. the git commit).")
    parser.add_argument("--smoke", action="store_true", help="Tiny model, tiny images, CPU: checks the script runs.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.pairs, args.pairs_per_step, args.timed_steps = ["tiny"], 4, 2, 1
        args.pairs_per_forward, args.image_size, args.answer_words = 2, [64, 48], 12
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.work = args.work or tempfile.mkdtemp(prefix="vlmpref-bench-")
    root = Path(args.work)

    from datasets import Dataset

    from vlmpref.data.normalize import normalize
    from vlmpref.models import load_processor

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    report = {"device": device, "torch": torch.__version__, "command": " ".join(sys.argv), "label": args.label,
              "models": {}}
    for name in args.models:
        model_dir = build_model_dir(name, root / "models", args.smoke)
        rows = benchmark_rows(args.pairs, tuple(args.image_size), args.answer_words)
        # Every pair is timed, so identical synthetic pairs stay in (the reference sees the same rows)
        dataset, set_aside, _ = normalize(Dataset.from_list(rows), where="benchmark data", duplicates="keep")
        assert len(set_aside) == 0
        processor = load_processor(model_dir)
        with torch.device("meta"):
            from transformers import AutoConfig, AutoModelForImageTextToText

            skeleton = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
        processor._bench_patch = skeleton.config.vision_config.patch_size
        tokens = pair_tokens(processor, dataset)
        params = parameter_counts(skeleton)
        results = []
        for variant in args.variants:
            print(f"[{name}] {variant} ...", flush=True)
            try:
                result = run_variant(variant, model_dir, dataset, args)
            except Exception as exc:  # one failing variant must not cost the others' device time
                import traceback

                traceback.print_exc()
                print(f"[{name}] {variant} failed: {exc!r}", flush=True)
                gc.collect()
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
                continue
            kind = variant.partition("@")[0].partition(":")[0]
            result["tokens_per_pair"] = (2 * tokens["prompt"] + tokens["chosen"] + tokens["rejected"]
                                         if kind == "trl" else tokens["prompt"] + tokens["chosen"] + tokens["rejected"])
            result["flops_per_pair"] = flops_per_pair(kind, tokens, params)
            result["tflops"] = result["flops_per_pair"] / result["s_per_pair"] / 1e12
            results.append(result)
            print(json.dumps(result), flush=True)
        reference = next((r for r in results if r["variant"] == "trl"), None)
        for r in results:
            r["speedup_vs_trl"] = reference["s_per_pair"] / r["s_per_pair"] if reference else None
            r["memory_vs_trl"] = (r["peak_reserved_gib"] / reference["peak_reserved_gib"]
                                  if reference and reference["peak_reserved_gib"] else None)
        report["models"][name] = {"tokens": tokens, "params": params, "results": results}
    print_table(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: dict) -> None:
    print(f"\n{report['device']}, torch {report['torch']}")
    header = f"{'model':14} {'variant':11} {'s/pair':>8} {'pairs/s x':>9} {'peak GiB':>9} {'tok/pair':>9} {'TFLOP/s':>8}"
    print(header)
    print("-" * len(header))
    for name, entry in report["models"].items():
        for r in entry["results"]:
            peak = f"{r['peak_reserved_gib']:.2f}" if r["peak_reserved_gib"] is not None else "-"
            speed = f"{r['speedup_vs_trl']:.2f}" if r["speedup_vs_trl"] else "-"
            print(f"{name:14} {r['variant']:13} {r['s_per_pair']:8.3f} {speed:>9} {peak:>9} "
                  f"{r['tokens_per_pair']:9.0f} {r['tflops']:8.1f}")


if __name__ == "__main__":
    sys.exit(main())
