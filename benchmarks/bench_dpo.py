"""Side-by-side DPO benchmark: TRL's DPOTrainer (the guide's recipe) against vlmpref's fast engine.

    python benchmarks/bench_dpo.py --models smolvlm-256m smolvlm-2.2b --out runs/bench.json   # one GPU
    python benchmarks/bench_dpo.py --variants trl fast-exact fast-lang --memory-cap 8 12       # as on 8 / 12 GB cards
    python benchmarks/bench_dpo.py --whole-command 48 --memory-cap 12 --variants               # `vlmpref train` timed
    python benchmarks/bench_dpo.py --models qwen2.5-vl-3b qwen3-vl-2b gemma-3-4b-it internvl3-2b       # other families
    python benchmarks/bench_dpo.py --smoke                                                     # CPU, seconds
    python benchmarks/bench_dpo.py --smoke --smoke-architecture qwen2_vl                       # a family's tiny model

Both engines train the same random-weight replica (SmolVLM, Qwen2.5-VL-3B, Qwen3-VL-2B, Gemma-3-4B-it or
InternVL3-2B configs, models/replicas.py, loaded through vlmpref's normal 4-bit path), on the same synthetic pairs (640x480 images, ~15-word questions, ~90-word answers), with the same
hyperparameters (4-bit NF4, bf16, gradient checkpointing, 8 pairs per optimizer step). For each variant it
prints s/pair, pairs/s relative to TRL in the same run, peak reserved GPU memory, tokens processed per pair
and achieved TFLOP/s. Variants:

  trl         TRL 1.16 DPOTrainer, DoRA on q/k/v/o/gate/up/down (vision included), batch 1: the reference
  fast-exact  the same trainable parameters, no image cache; reference log-probs once (cost amortized over
              the guide's 5 epochs); pairs per forward chosen as `vlmpref train` chooses them (auto), or N
              with `fast-exact:N`
  fast-bs1    fast-exact with one pair per forward (the memory floor)
  fast-lang   language-model-only DoRA, image features and reference log-probs cached (amortized over 5 epochs)
  ...@flex    (suffix, fast variants) the model loaded with FlexAttention: all pairs of a forward in one packed
              row under a block mask, instead of one padded row per pair under a dense mask (sdpa)

`--memory-cap GIB ...` runs every variant once per cap, standing for a card of that many GiB: PyTorch may
reserve the cap minus this process's CUDA context (torch.cuda.set_per_process_memory_fraction), and auto
packing plans within it. Ratios are taken against the TRL row of the same cap. `--whole-command N` also times
the whole `vlmpref train` command (start, model load, data check, one-time pass, one epoch of N pairs, save)
for the shipped configs dpo-guide-trl.yaml, dpo-guide.yaml and dpo-language-only.yaml with no tuning flags.

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
        if pv is not None and pv.dim() == 2:  # Qwen's dynamic resolution: one row per patch
            patches += pv.shape[0]
        elif pv is not None:
            tiles = pv.shape[0] * pv.shape[1] if pv.dim() == 5 else pv.shape[0]
            patches += tiles * (pv.shape[-1] // processor_patch(processor)) ** 2
    n = len(dataset)
    return {"prompt": prompt / n, "chosen": chosen / n, "rejected": rejected / n, "vision_patches": patches / n}


def processor_patch(processor) -> int:
    patch = getattr(processor, "_bench_patch", 14)
    return patch[0] if isinstance(patch, (list, tuple)) else patch  # InternVL gives [height, width]


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


def context_gib() -> float:
    """GiB the CUDA context takes outside PyTorch's allocator (measured once, before any tensor is allocated)."""
    free, total = torch.cuda.mem_get_info()
    return (total - free - torch.cuda.memory_reserved()) / 2**30


def apply_cap(cap: float | None, context: float) -> float | None:
    """Let PyTorch reserve at most `cap` minus the CUDA context: a card of `cap` GiB. Returns that budget."""
    if cap is None or not torch.cuda.is_available():
        if torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(1.0)
        return None
    budget = cap - context
    torch.cuda.set_per_process_memory_fraction(budget * 2**30 / torch.cuda.get_device_properties(0).total_memory)
    return budget


def run_variant(variant: str, model_dir: str, dataset, args, budget: float | None = None) -> dict:
    from trl import DPOConfig, DPOTrainer

    from vlmpref.models import load_model, load_processor, lora_config
    from vlmpref.train import TrainConfig
    from vlmpref.train.engines import loader_workers
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
    # no :N on a fast variant: auto, as `vlmpref train` packs by default
    ppf = int(packing) if packing else {"trl": 1, "fast-bs1": 1}.get(variant, "auto")
    # A fresh folder per variant and run: a reused one would hand over stored reference log-probs
    output_dir = tempfile.mkdtemp(prefix=f"{variant}-{ppf}-", dir=args.work)
    config = DPOConfig(output_dir=output_dir, per_device_train_batch_size=1,
                       gradient_accumulation_steps=per_step, max_steps=1 + args.timed_steps, learning_rate=1e-5,
                       bf16=cuda or args.quantization != "none", use_cpu=not cuda, activation_checkpointing=True,
                       logging_steps=1000, save_strategy="no", report_to=[], max_length=None, seed=0,
                       # the fast variants prepare batches as `vlmpref train` does by default; TRL as the guide
                       dataloader_num_workers=0 if variant == "trl" else loader_workers(TrainConfig()),
                       dataloader_persistent_workers=variant != "trl" and loader_workers(TrainConfig()) > 0)
    timer = StepTimer()
    started = time.perf_counter()
    if variant == "trl":
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                             peft_config=peft_config, callbacks=[timer.callback])
        setup_extra = 0.0
    else:
        trainer = FastDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                                 peft_config=peft_config, callbacks=[timer.callback], pairs_per_forward=ppf,
                                 memory_budget_gib=budget, image_cache="auto")
        setup_extra = trainer.reference_seconds  # reference pass (+ image cache fill): once for all epochs
    setup = time.perf_counter() - started
    trainer.train()
    timed = timer.times[-1] - timer.times[0]  # the first step (warm-up, allocator growth) is left out
    pairs = args.timed_steps * per_step
    steady = timed / pairs
    amortized = steady + setup_extra / (EPOCHS * len(dataset))
    used = getattr(trainer, "pairs_per_forward", ppf)  # after auto packing and any out-of-memory fallback
    shown = f"auto={used}" if ppf == "auto" else ppf
    name = f"{variant}:{shown}{'@' + attention if attention else ''}" if variant.startswith("fast") else variant
    packing_plan = getattr(trainer, "packing", None)
    result = {"variant": name, "attention": getattr(trainer, "attention", "sdpa"),
              "layout": getattr(trainer, "layout", None), "pairs_per_forward": used,
              "packing": packing_plan.as_dict() if packing_plan else None, "memory_cap_gib": args.current_cap,
              "lora_scope": scope, "timed_pairs": pairs,
              "s_per_pair_steady": steady, "s_per_pair": amortized, "one_time_seconds": setup_extra,
              "setup_seconds": setup, "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
              "image_cache": getattr(trainer, "image_cache", None) is not None,
              "fused_dora": getattr(trainer, "fused_dora", None), "compile_seconds": getattr(trainer, "compile_seconds", None),
              "loader_workers": config.dataloader_num_workers}
    del trainer, model
    gc.collect()
    return result


# ---- driver


def build_model_dir(name: str, root: Path, smoke: bool, architecture: str = "idefics3") -> str:
    from vlmpref.models.replicas import replica_spec, save_replica
    from vlmpref.models.tiny import TinyModelConfig, save_tiny_model

    out = root / name
    if not (out / "config.json").is_file():
        if smoke:
            save_tiny_model(TinyModelConfig(output_dir=str(out), architecture=architecture))
        else:
            save_replica(name, out, device="cuda" if torch.cuda.is_available() else "cpu")
    return str(out)


def whole_command(model_dir: str, dataset, root: Path, pairs: int, cap: float | None) -> list[dict]:
    """`vlmpref train --config <shipped config>` with no tuning flags, one epoch on `pairs` pairs, timed from the
    command's start to its exit; the config's Hub model and data are swapped for the replica and a local copy."""
    import subprocess

    import yaml

    data_dir = root / f"whole-command-data-{pairs}"
    if not data_dir.exists():
        dataset.select(range(min(pairs, len(dataset)))).save_to_disk(str(data_dir))
    configs = Path(__file__).resolve().parents[1] / "configs" / "smolvlm-instruct"
    out = []
    for config in ("dpo-guide-trl.yaml", "dpo-guide.yaml", "dpo-language-only.yaml"):
        values = yaml.safe_load((configs / config).read_text())
        for key in ("eval_dataset", "eval_split", "eval_steps", "split"):  # no Hub eval set; the whole local split
            values.pop(key, None)
        values.update(model=model_dir, dataset=str(data_dir), num_train_epochs=1, report_to=["none"],
                      output_dir=str(root / f"whole-{config[:-5]}-{cap}"), overwrite=True)
        if cap is not None:
            values["max_gpu_memory"] = cap - (context_gib() if torch.cuda.is_available() else 0.0)
        local = root / f"whole-{config}"
        local.write_text(yaml.safe_dump(values))
        command = [sys.executable, "-m", "vlmpref", "train", "--config", str(local)]
        print(f"[whole command] {config} ...", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        summary_path = Path(values["output_dir"]) / "train_summary.json"
        summary = json.loads(summary_path.read_text()) if done.returncode == 0 and summary_path.is_file() else {}
        row = {"config": config, "returncode": done.returncode, "wall_seconds": round(seconds, 1),
               "memory_cap_gib": cap, "engine": summary.get("engine"), "pairs_trained": summary.get("pairs_trained"),
               "pairs_per_forward": summary.get("pairs_per_forward"), "one_time_seconds": summary.get("one_time_seconds"),
               "train_seconds": summary.get("train_seconds"), "peak_memory_gib": summary.get("peak_memory_gib"),
               "last_line": done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:],
               "stderr_tail": done.stderr[-3000:] if done.returncode else None}  # why it failed
        print(json.dumps(row), flush=True)
        out.append(row)
    trl = next((r for r in out if r["engine"] == "trl" and r["returncode"] == 0), None)
    for row in out:
        row["speedup_vs_trl"] = trl["wall_seconds"] / row["wall_seconds"] if trl and row["returncode"] == 0 else None
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smolvlm-256m", "smolvlm-2.2b"], help="Replica names.")
    parser.add_argument("--variants", nargs="*", default=["trl", "fast-exact", "fast-bs1", "fast-lang"],
                        help="trl, fast-exact, fast-bs1, fast-lang; append :N to pack N pairs per forward (else auto).")
    parser.add_argument("--pairs", type=int, default=24, help="Distinct pairs in the dataset.")
    parser.add_argument("--pairs-per-step", type=int, default=8, help="Pairs per optimizer step (all variants).")
    parser.add_argument("--timed-steps", type=int, default=2, help="Optimizer steps timed after one warm-up step.")
    parser.add_argument("--memory-cap", type=float, nargs="+", default=None,
                        help="Run every variant once per cap, as on a card of that many GiB (see above).")
    parser.add_argument("--whole-command", type=int, default=0, metavar="PAIRS",
                        help="Also time `vlmpref train` with the shipped configs, one epoch of this many pairs.")
    parser.add_argument("--image-size", type=int, nargs=2, default=[640, 480])
    parser.add_argument("--answer-words", type=int, default=90)
    parser.add_argument("--quantization", default="4bit")
    parser.add_argument("--work", default=None, help="Scratch folder (replicas, run outputs).")
    parser.add_argument("--out", default=None, help="Write the results as JSON here.")
    parser.add_argument("--label", default="", help="Recorded with the results (e.g. the git commit).")
    parser.add_argument("--smoke", action="store_true", help="Tiny model, tiny images, CPU: checks the script runs.")
    parser.add_argument("--smoke-architecture", default="idefics3",
                        help="With --smoke: the tiny model's family (idefics3, smolvlm, llava, qwen2_vl, qwen2_5_vl, "
                             "qwen3_vl, gemma3, internvl).")
    args = parser.parse_args(argv)
    if args.smoke:
        tiny = "tiny" if args.smoke_architecture == "idefics3" else f"tiny-{args.smoke_architecture}"
        args.models, args.pairs, args.pairs_per_step, args.timed_steps = [tiny], 4, 2, 1
        args.image_size, args.answer_words = [64, 48], 12
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.work = args.work or tempfile.mkdtemp(prefix="vlmpref-bench-")
    root = Path(args.work)

    from datasets import Dataset

    from vlmpref.data.normalize import normalize
    from vlmpref.models import load_processor

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    context = context_gib() if cuda else 0.0
    caps = args.memory_cap or [None]
    report = {"device": device, "torch": torch.__version__, "command": " ".join(sys.argv), "label": args.label,
              "cuda_context_gib": round(context, 3), "models": {}}
    for name in args.models:
        model_dir = build_model_dir(name, root / "models", args.smoke, args.smoke_architecture)
        rows = benchmark_rows(max(args.pairs, args.whole_command), tuple(args.image_size), args.answer_words)
        # Every pair is timed, so identical synthetic pairs stay in (the reference sees the same rows)
        dataset, set_aside, _ = normalize(Dataset.from_list(rows), where="benchmark data", duplicates="keep")
        assert len(set_aside) == 0
        processor = load_processor(model_dir)
        with torch.device("meta"):
            from transformers import AutoConfig, AutoModelForImageTextToText

            skeleton = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(model_dir))
        processor._bench_patch = skeleton.config.vision_config.patch_size
        timed = dataset.select(range(args.pairs))
        tokens = pair_tokens(processor, timed)
        params = parameter_counts(skeleton)
        results = []
        for cap in caps:
            args.current_cap = cap
            budget = apply_cap(cap, context)
            for variant in args.variants:
                print(f"[{name}] {variant}{f' (cap {cap:g} GiB)' if cap else ''} ...", flush=True)
                try:
                    result = run_variant(variant, model_dir, timed, args, budget)
                except Exception as exc:  # one failing variant must not cost the others' device time
                    import traceback

                    traceback.print_exc()
                    print(f"[{name}] {variant} failed: {exc!r}", flush=True)
                    results.append({"variant": variant, "memory_cap_gib": cap, "failed": repr(exc)[:300]})
                    gc.collect()
                    torch.cuda.empty_cache() if cuda else None
                    continue
                kind = variant.partition("@")[0].partition(":")[0]
                result["tokens_per_pair"] = (2 * tokens["prompt"] + tokens["chosen"] + tokens["rejected"]
                                             if kind == "trl" else tokens["prompt"] + tokens["chosen"] + tokens["rejected"])
                result["flops_per_pair"] = flops_per_pair(kind, tokens, params)
                result["tflops"] = result["flops_per_pair"] / result["s_per_pair"] / 1e12
                results.append(result)
                print(json.dumps(result), flush=True)
        for r in results:
            if "failed" in r:
                continue
            reference = next((t for t in results if t["variant"] == "trl" and "failed" not in t
                              and t["memory_cap_gib"] == r["memory_cap_gib"]), None)
            r["speedup_vs_trl"] = reference["s_per_pair"] / r["s_per_pair"] if reference else None
            r["memory_vs_trl"] = (r["peak_reserved_gib"] / reference["peak_reserved_gib"]
                                  if reference and reference["peak_reserved_gib"] else None)
        entry = {"tokens": tokens, "params": params, "results": results}
        if args.whole_command:
            apply_cap(None, context)  # the command caps itself (--max-gpu-memory)
            entry["whole_command"] = whole_command(model_dir, dataset, root, args.whole_command, caps[0])
        report["models"][name] = entry
    print_table(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def print_table(report: dict) -> None:
    print(f"\n{report['device']}, torch {report['torch']}")
    header = (f"{'model':14} {'cap':>5} {'variant':16} {'s/pair':>8} {'pairs/s x':>9} {'peak GiB':>9} {'tok/pair':>9} "
              f"{'TFLOP/s':>8}")
    print(header)
    print("-" * len(header))
    for name, entry in report["models"].items():
        for r in entry["results"]:
            cap = f"{r['memory_cap_gib']:g}" if r.get("memory_cap_gib") else "-"
            if "failed" in r:
                print(f"{name:14} {cap:>5} {r['variant']:16} failed: {r['failed'][:60]}")
                continue
            peak = f"{r['peak_reserved_gib']:.2f}" if r["peak_reserved_gib"] is not None else "-"
            speed = f"{r['speedup_vs_trl']:.2f}" if r["speedup_vs_trl"] else "-"
            print(f"{name:14} {cap:>5} {r['variant']:16} {r['s_per_pair']:8.3f} {speed:>9} {peak:>9} "
                  f"{r['tokens_per_pair']:9.0f} {r['tflops']:8.1f}")
        for r in entry.get("whole_command", []):
            speed = f"{r['speedup_vs_trl']:.2f}x" if r["speedup_vs_trl"] else "-"
            print(f"{name:14} whole `vlmpref train --config {r['config']}`: {r['wall_seconds']:.1f} s ({speed}), "
                  f"engine {r['engine']}, {r['pairs_per_forward']} pairs/forward, one-time {r['one_time_seconds']} s")


if __name__ == "__main__":
    sys.exit(main())
