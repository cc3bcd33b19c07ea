"""Where one training step's time goes: kernel launches, CPU against GPU time, the top kernels, per pair.

    python benchmarks/profile_step.py --models smolvlm-256m smolvlm-2.2b --out runs/profile.json   # one GPU
    python benchmarks/profile_step.py --smoke                                                        # CPU, seconds

For each model and variant (the same names as bench_dpo.py: trl, fast-exact[:N], fast-bs1, fast-lang[:N];
without :N the fast variants pack as `vlmpref train` does) it trains one warm-up optimizer step, then records
one step under torch.profiler and reports, per pair:

- kernel launches (GPU kernels run, memory copies and fills not counted),
- wall time of the step, the GPU's busy time (the union of kernel intervals) and the share it was idle,
- CPU time in the training process's operators (self time, summed),
- the top kernels by GPU time, with their launch counts,
- the top CPU-side operators by self time.

Results (GPU runs) are kept in benchmarks/RESULTS.md, before and after each engine change.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_dpo import apply_cap, benchmark_rows, build_model_dir, context_gib  # noqa: E402


def _busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (microseconds in, seconds out)."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total / 1e6


def summarize(prof, wall: float, pairs: int, top: int) -> dict:
    """Per-pair launches, busy GPU time and the top kernels / CPU operators of a profiled step."""
    kernels = defaultdict(lambda: [0, 0.0])
    intervals, launches = [], 0
    cpu = defaultdict(lambda: [0, 0.0])
    cpu_total = 0.0
    for event in prof.events():
        device = str(getattr(event, "device_type", "")).split(".")[-1]
        if device == "CUDA":
            name = event.name
            if name.startswith(("Memcpy", "Memset")) or "memcpy" in name.lower() and "kernel" not in name.lower():
                continue
            launches += 1
            span = event.time_range
            intervals.append((span.start, span.end))
            kernels[name][0] += 1
            kernels[name][1] += (span.end - span.start) / 1e6
        elif device == "CPU":
            self_us = getattr(event, "self_cpu_time_total", 0.0)
            cpu[event.name][0] += 1
            cpu[event.name][1] += self_us / 1e6
            cpu_total += self_us / 1e6
    busy = _busy_seconds(intervals)
    gpu_total = sum(v[1] for v in kernels.values())
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][1])[:top]
    cpu_ranked = sorted(cpu.items(), key=lambda kv: -kv[1][1])[:top]
    return {
        "pairs": pairs, "wall_s_per_pair": wall / pairs, "gpu_busy_s_per_pair": busy / pairs,
        "gpu_idle_share": 1 - busy / wall if wall else None, "cpu_op_s_per_pair": cpu_total / pairs,
        "launches_per_pair": launches / pairs, "kernel_s_per_pair": gpu_total / pairs,
        "top_kernels": [{"name": n[:120], "launches_per_pair": c / pairs, "ms_per_pair": 1e3 * t / pairs,
                         "share": t / gpu_total if gpu_total else None} for n, (c, t) in ranked],
        "top_cpu_ops": [{"name": n[:120], "calls_per_pair": c / pairs, "ms_per_pair": 1e3 * t / pairs}
                        for n, (c, t) in cpu_ranked],
    }


class ProfileStep:
    """A Trainer callback that profiles the optimizer step after `warmup` steps."""

    def __init__(self, warmup: int = 1):
        from transformers import TrainerCallback

        outer = self
        self.prof = None
        self.wall = 0.0

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == warmup and outer.prof is None:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    activities = [torch.profiler.ProfilerActivity.CPU]
                    if torch.cuda.is_available():
                        activities.append(torch.profiler.ProfilerActivity.CUDA)
                    outer.prof = torch.profiler.profile(activities=activities)
                    outer.prof.__enter__()
                    outer.started = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if outer.prof is not None and outer.wall == 0.0:
                    if torch.cuda.is_available():
                        torch.cuda.synchronize()
                    outer.wall = time.perf_counter() - outer.started
                    outer.prof.__exit__(None, None, None)

        self.callback = _Callback()


def profile_variant(variant: str, model_dir: str, dataset, args, budget) -> dict:
    from trl import DPOConfig, DPOTrainer

    from vlmpref.models import load_model, load_processor, lora_config
    from vlmpref.train.fast import FastDPOTrainer

    cuda = torch.cuda.is_available()
    processor = load_processor(model_dir)
    model = load_model(model_dir, quantization=args.quantization,
                       dtype=torch.bfloat16 if (cuda or args.quantization != "none") else torch.float32)
    kind, _, packing = variant.partition(":")
    scope = "language" if kind == "fast-lang" else "all"
    peft_config = lora_config(model, use_dora=True, scope=scope)
    ppf = int(packing) if packing else {"trl": 1, "fast-bs1": 1}.get(kind, "auto")
    config = DPOConfig(output_dir=tempfile.mkdtemp(prefix=f"{kind}-", dir=args.work), per_device_train_batch_size=1,
                       gradient_accumulation_steps=args.pairs_per_step, max_steps=2, learning_rate=1e-5,
                       bf16=cuda or args.quantization != "none", use_cpu=not cuda, activation_checkpointing=True,
                       logging_steps=1000, save_strategy="no", report_to=[], max_length=None, seed=0)
    profiler = ProfileStep(warmup=1)
    if kind == "trl":
        trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                             peft_config=peft_config, callbacks=[profiler.callback])
    else:
        trainer = FastDPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor,
                                 peft_config=peft_config, callbacks=[profiler.callback], pairs_per_forward=ppf,
                                 memory_budget_gib=budget)
    trainer.train()
    result = summarize(profiler.prof, profiler.wall, args.pairs_per_step, args.top)
    result.update(variant=variant if kind == "trl" else f"{kind}:{getattr(trainer, 'pairs_per_forward', ppf)}",
                  lora_scope=scope, one_time_s_per_pair=getattr(trainer, "reference_seconds", 0.0) / len(dataset),
                  peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30 if cuda else None)
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def print_report(report: dict) -> None:
    for name, results in report["models"].items():
        print(f"\n## {name} ({report['device']})\n")
        print("| variant | wall s/pair | GPU busy s/pair | GPU idle | CPU op s/pair | launches/pair | one-time s/pair |")
        print("|---|---|---|---|---|---|---|")
        for r in results:
            if "failed" in r:
                print(f"| {r['variant']} | failed: {r['failed'][:80]} | | | | | |")
                continue
            idle = f"{r['gpu_idle_share']:.0%}" if r["gpu_idle_share"] is not None else "-"
            print(f"| {r['variant']} | {r['wall_s_per_pair']:.3f} | {r['gpu_busy_s_per_pair']:.3f} | {idle} | "
                  f"{r['cpu_op_s_per_pair']:.3f} | {r['launches_per_pair']:,.0f} | {r['one_time_s_per_pair']:.3f} |")
        for r in results:
            if "failed" in r:
                continue
            print(f"\n{name} {r['variant']}: top kernels (ms/pair, launches/pair, share of GPU time)")
            for k in r["top_kernels"][:8]:
                print(f"  {k['ms_per_pair']:8.2f}  {k['launches_per_pair']:7.0f}  {k['share'] or 0:5.1%}  {k['name'][:90]}")
            print(f"{name} {r['variant']}: top CPU operators (self ms/pair, calls/pair)")
            for k in r["top_cpu_ops"][:6]:
                print(f"  {k['ms_per_pair']:8.2f}  {k['calls_per_pair']:7.0f}  {k['name'][:90]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smolvlm-256m", "smolvlm-2.2b"], help="Replica names.")
    parser.add_argument("--variants", nargs="+", default=["trl", "fast-exact", "fast-lang"])
    parser.add_argument("--pairs", type=int, default=16, help="Distinct pairs in the dataset.")
    parser.add_argument("--pairs-per-step", type=int, default=8, help="Pairs per optimizer step (profiled: one).")
    parser.add_argument("--memory-cap", type=float, default=None, help="As bench_dpo.py: a card of this many GiB.")
    parser.add_argument("--top", type=int, default=15, help="Kernels and operators listed per variant.")
    parser.add_argument("--image-size", type=int, nargs=2, default=[640, 480])
    parser.add_argument("--answer-words", type=int, default=90)
    parser.add_argument("--quantization", default="4bit")
    parser.add_argument("--work", default=None)
    parser.add_argument("--out", default=None, help="Write the profile as JSON here.")
    parser.add_argument("--label", default="")
    parser.add_argument("--smoke", action="store_true", help="Tiny model, tiny images, CPU.")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.pairs, args.pairs_per_step, args.image_size, args.answer_words = ["tiny"], 4, 2, [64, 48], 12
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    os.environ.setdefault("TQDM_DISABLE", "1")
    args.work = args.work or tempfile.mkdtemp(prefix="vlmpref-profile-")
    from datasets import Dataset

    from vlmpref.data.normalize import normalize

    cuda = torch.cuda.is_available()
    budget = apply_cap(args.memory_cap, context_gib() if cuda else 0.0)
    report = {"device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
              "torch": torch.__version__, "command": " ".join(sys.argv), "label": args.label, "models": {}}
    for name in args.models:
        model_dir = build_model_dir(name, Path(args.work) / "models", args.smoke)
        rows = benchmark_rows(args.pairs, tuple(args.image_size), args.answer_words)
        dataset, _, _ = normalize(Dataset.from_list(rows), where="profile data", duplicates="keep")
        results = []
        for variant in args.variants:
            print(f"[{name}] {variant} ...", flush=True)
            try:
                results.append(profile_variant(variant, model_dir, dataset, args, budget))
            except Exception as exc:  # one failing variant must not cost the others' device time
                import traceback

                traceback.print_exc()
                results.append({"variant": variant, "failed": repr(exc)[:300]})
                gc.collect()
        report["models"][name] = results
    print_report(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
