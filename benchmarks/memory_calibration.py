"""Measure peak GPU memory and speed of real training steps, and compare them with `vlmpref estimate`.

    python benchmarks/memory_calibration.py --part 1 --output calib-1.json     # SmolVLM-Instruct 2.2B settings
    python benchmarks/memory_calibration.py --part 2 --output calib-2.json     # 256M settings, presets
    python benchmarks/memory_calibration.py --compare benchmarks/results/*.json   # estimate vs measured table
    python benchmarks/memory_calibration.py --fit benchmarks/results/*.json       # refit estimate's coefficients
    python benchmarks/memory_calibration.py --smoke --output /tmp/smoke.json   # CPU, tiny model, 1 step

Each setting runs in its own process, so its peak is its own: the replica (random weights from the published
config) is written with save_replica and loaded back through `load_model`, so quantization takes the real path,
then `vlmpref.train.train` runs a few DPO steps on synthetic pairs (640x480 images, ~90-word answers). The
process records `torch.cuda.max_memory_reserved()` (peak since the model was loaded, as `train` reports it)
and seconds per pair over the steps after the first. Each part fits in about 8 minutes on one H200; settings
that would overrun --budget are skipped and say so. Results are written after every setting.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# ---- the settings: (replica, overrides of TrainConfig / RunSettings)
RECIPE = dict(quantization="4bit", use_dora=True, lora_scope="all", per_device_train_batch_size=1,
              gradient_checkpointing=True, image_longest_edge=None)
PARTS = {
    1: [
        ("smolvlm-2.2b", {}),  # the guide's recipe (DESIGN: 7.12 GiB, 1.56 s/pair)
        ("smolvlm-2.2b", dict(use_dora=False)),
        ("smolvlm-2.2b", dict(lora_scope="language")),
        ("smolvlm-2.2b", dict(image_longest_edge=384)),  # 1 tile
        ("smolvlm-2.2b", dict(quantization="none")),
        ("smolvlm-2.2b", dict(per_device_train_batch_size=4)),
        ("smolvlm-2.2b", dict(quantization="none", use_dora=False, lora_scope="language", image_longest_edge=768,
                              per_device_train_batch_size=2)),
        ("smolvlm-2.2b", dict(gradient_checkpointing=False, image_longest_edge=768)),
    ],
    2: [
        ("smolvlm-256m", {}),  # DESIGN: 4.45 GiB, 1.54 s/pair
        ("smolvlm-256m", dict(quantization="none")),
        ("smolvlm-256m", dict(quantization="none", per_device_train_batch_size=4)),
        ("smolvlm-256m", dict(use_dora=False, lora_scope="language", image_longest_edge=384)),
        ("smolvlm-256m", dict(quantization="none", use_dora=False, gradient_checkpointing=False)),
        ("smolvlm-2.2b", dict(use_dora=False, lora_scope="language", image_longest_edge=768)),  # preset 6gb
        ("smolvlm-2.2b", dict(use_dora=False, lora_scope="language", image_longest_edge=1152)),  # preset 8gb
        ("smolvlm-2.2b", dict(quantization="none", per_device_train_batch_size=4)),  # preset 24gb
    ],
}
SMOKE = [("tiny", dict(quantization="4bit", per_device_train_batch_size=1)),
         ("tiny", dict(quantization="none", use_dora=False, lora_scope="language", per_device_train_batch_size=2))]

WORDS = ("the a red blue green yellow purple circle square triangle cross shape image shows left right middle "
         "there is are of and with on in one two three large small next to above below color").split()


# ---- data and models


def synthetic_pairs(folder: Path, pairs: int, words: int, size=(640, 480), seed: int = 0) -> Path:
    """Preference pairs with noise images (never all-zero: Idefics3 drops all-zero images as padding)."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    rng = random.Random(seed)

    def answer() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."

    rows = []
    for i in range(pairs):
        pixels = np.random.RandomState(seed + i).randint(1, 255, (size[1], size[0], 3), dtype=np.uint8)
        rows.append({"images": [Image.fromarray(pixels)],
                     "prompt": [{"role": "user", "content": [{"type": "image"},
                                                             {"type": "text", "text": "Describe this image in detail."}]}],
                     "chosen": [{"role": "assistant", "content": [{"type": "text", "text": answer()}]}],
                     "rejected": [{"role": "assistant", "content": [{"type": "text", "text": answer()}]}]})
    Dataset.from_list(rows).save_to_disk(str(folder))
    return folder


def build_model(name: str, folder: Path) -> Path:
    if name == "tiny":
        from vlmpref.models.tiny import TinyModelConfig, save_tiny_model

        return save_tiny_model(TinyModelConfig(output_dir=str(folder), overwrite=True))
    import torch

    from vlmpref.models.replicas import save_replica

    # random init of 2.2B parameters takes a minute on CPU cores and a second on the GPU
    path = save_replica(name, folder, device="cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the children measure their own peaks; the parent keeps only its context
    return path


def token_counts(model_dir: Path, data_dir: Path, image_longest_edge: int | None) -> dict:
    """Prompt+image tokens and the longer answer's tokens, as the model's processor counts them."""
    from datasets import load_from_disk

    from vlmpref.generate import prompt_text
    from vlmpref.models import load_processor
    from vlmpref.plan.shapes import set_image_longest_edge

    processor = load_processor(str(model_dir))
    if image_longest_edge:
        set_image_longest_edge(processor, image_longest_edge)
    row = load_from_disk(str(data_dir))[0]
    text = prompt_text(processor, row["prompt"])
    prompt = processor(text=[text], images=[row["images"]], return_tensors="pt")
    image_id = processor.image_token_id
    n_prompt = int(prompt["input_ids"].shape[1])
    n_image = int((prompt["input_ids"] == image_id).sum())
    answers = [len(processor.tokenizer(m[0]["content"][0]["text"] + processor.tokenizer.eos_token)["input_ids"])
               for m in (row["chosen"], row["rejected"])]
    return {"prompt_and_image": n_prompt, "image_placeholders": n_image, "answer": max(answers),
            "tiles": int(prompt["pixel_values"].shape[1])}


# ---- one setting (child process)


def run_one(spec: dict) -> dict:
    import torch
    from transformers import TrainerCallback

    from vlmpref.train import TrainConfig, train

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.started)

    settings = {**RECIPE, **spec["overrides"]}
    timer = StepTimer()
    cfg = TrainConfig(model=spec["model_dir"], dataset=spec["data_dir"], split="train", output_dir=spec["out_dir"],
                      overwrite=True, max_steps=spec["steps"], gradient_accumulation_steps=1, learning_rate=1e-5,
                      logging_steps=1, save_steps=10_000, report_to=["none"], dataset_num_proc=1, seed=0,
                      engine=spec.get("engine", "trl"), **settings)
    result = train(cfg, callbacks=[timer])
    cuda = torch.cuda.is_available()
    measured = timer.times[1:] or timer.times
    pairs = settings["per_device_train_batch_size"]
    return {
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "seconds_per_pair": sum(measured) / len(measured) / pairs,
        "step_seconds": timer.times,
        "steps": result.summary["steps"],
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }


# ---- estimate side


def estimated(name: str, model_dir: Path, overrides: dict, tokens: dict, engine: str) -> dict:
    from vlmpref.plan.estimate import RunSettings, adapted_linears, estimate
    from vlmpref.plan.shapes import describe_model, image_tokens

    settings = {**RECIPE, **overrides}
    shape = describe_model(str(model_dir))
    image = image_tokens(shape, 640, 480, settings["image_longest_edge"])
    run = RunSettings(quantization=settings["quantization"], use_dora=settings["use_dora"],
                      lora_scope=settings["lora_scope"], image_longest_edge=settings["image_longest_edge"],
                      per_device_train_batch_size=settings["per_device_train_batch_size"],
                      gradient_checkpointing=settings["gradient_checkpointing"], engine=engine,
                      prompt_tokens=max(tokens["prompt_and_image"] - image.tokens, 0), answer_tokens=tokens["answer"])
    est = estimate(shape, run, "h200")
    m = est.memory
    block = (est.image.tiles * shape.patches_per_tile * shape.vision.intermediate * 4
             if not run.cached_images else 0)
    return {"reserved_gib": m.reserved_gib, "total_gib": m.total_gib, "seconds_per_pair": est.seconds_per_pair,
            "peak_phase": m.peak_phase, "tiles": est.image.tiles, "sequence_tokens": est.sequence_tokens,
            "parts_gib": {k: v for k, v in m.rows()}, "bound": est.bound, "image_block_gib": block / 2**30,
            "adapted_modules": len(adapted_linears(shape, run))}


# ---- the driver


def describe(name: str, overrides: dict) -> str:
    s = {**RECIPE, **overrides}
    edge = s["image_longest_edge"] or "full"
    return (f"{name} {s['quantization']} {'DoRA' if s['use_dora'] else 'LoRA'} {s['lora_scope']} "
            f"bs{s['per_device_train_batch_size']} edge {edge} {'GC' if s['gradient_checkpointing'] else 'noGC'}")


def run_all(args) -> list[dict]:
    settings = SMOKE if args.smoke else [s for part in args.part for s in PARTS[part]]
    if args.only:
        settings = [settings[i] for i in args.only]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="vlmpref-calib-"))
    started = time.time()
    records: list[dict] = []
    data_dir = synthetic_pairs(work / "data", pairs=16, words=90 if not args.smoke else 12)
    model_dirs: dict[str, Path] = {}
    for i, (name, overrides) in enumerate(settings):
        label = describe(name, overrides)
        record = {"setting": label, "replica": name, "overrides": overrides, "engine": args.engine}
        left = args.budget - (time.time() - started)
        if left < args.min_seconds:
            record["status"] = f"skipped: {left:.0f} s left of the {args.budget:.0f} s budget"
            records.append(record)
            _write(args.output, records)
            print(f"[{i + 1}/{len(settings)}] {label}: {record['status']}", flush=True)
            continue
        if name not in model_dirs:
            model_dirs[name] = build_model(name, work / name)
        spec = {"model_dir": str(model_dirs[name]), "data_dir": str(data_dir), "out_dir": str(work / f"out{i}"),
                "overrides": overrides, "steps": 1 if args.smoke else args.steps, "engine": args.engine}
        t0 = time.time()
        try:
            record["measured"] = _child(spec, timeout=min(left, args.timeout)) if not args.smoke else run_one(spec)
            record["status"] = "ok"
        except Exception as exc:  # a failed setting is recorded, the rest still run
            record["status"] = f"failed: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__}"
        record["wall_seconds"] = round(time.time() - t0, 1)
        tokens = token_counts(model_dirs[name], data_dir, {**RECIPE, **overrides}["image_longest_edge"])
        record["tokens"] = tokens
        record["estimate"] = estimated(name, model_dirs[name], overrides, tokens, args.engine)
        records.append(record)
        _write(args.output, records)
        print(f"[{i + 1}/{len(settings)}] {_line(record)}", flush=True)
    return records


def _child(spec: dict, timeout: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])})
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError((out.stderr or out.stdout).strip()[-2000:] or f"exit status {out.returncode}")


def _write(path: str | None, records: list[dict]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(records, indent=2))


def _pct(estimate: float | None, measured: float | None) -> str:
    if not estimate or not measured:
        return "  n/a "
    return f"{100 * (estimate / measured - 1):+6.1f}%"


def _line(record: dict) -> str:
    if record.get("status") != "ok":
        return f"{record['setting']}: {record.get('status')}"
    m, e = record["measured"], record["estimate"]
    mem = f"{m['peak_reserved_gib']:.2f}" if m["peak_reserved_gib"] is not None else "n/a"
    return (f"{record['setting']:52s} memory {mem:>6s} GiB est {e['reserved_gib']:6.2f} "
            f"{_pct(e['reserved_gib'], m['peak_reserved_gib'])} | {m['seconds_per_pair']:.2f} s/pair "
            f"est {e['seconds_per_pair']:.2f} {_pct(e['seconds_per_pair'], m['seconds_per_pair'])}")


def print_table(records: list[dict]) -> None:
    print("\nestimate vs measured (peak reserved memory, seconds per pair)")
    for record in records:
        print("  " + _line(record))


# ---- comparing with, and refitting, the estimate

# DESIGN.md's measured baseline (TRL recipe, H200; 2 x 1210 tokens per pair): (replica, RunSettings changes, GiB, s)
DESIGN_ROWS = [("smolvlm-2.2b", {}, 7.12, 1.56), ("smolvlm-2.2b", dict(use_dora=False), 6.83, 1.02),
               ("smolvlm-2.2b", dict(per_device_train_batch_size=4), 19.71, 0.77),
               ("smolvlm-2.2b", dict(image_longest_edge=384), 2.49, 1.51), ("smolvlm-256m", {}, 4.45, 1.54)]
# what --fit may change, with bounds that keep each coefficient physically sensible: (low, high)
FIT_BOUNDS = {
    ("text_backward", ("trl", "dora"), 0): (20, 80), ("text_backward", ("trl", "dora"), 1): (8, 30),
    ("text_backward", ("fast", "dora"), 0): (40, 160), ("text_backward", ("fast", "dora"), 1): (16, 24),
    ("vision_backward", "dora", 0): (30, 90), ("vision_backward", "dora", 1): (8, 30),
    ("vision_backward", "lora", 0): (15, 60), ("vision_backward", "lora", 1): (6, 30),
    ("vision_forward", 0): (6, 20), ("vision_forward", 1): (4, 12),
    ("logit_chunk_bytes",): (12, 18), ("fragmentation",): (0.02, 0.10),
    ("allocator_fixed_gib",): (0.1, 0.5), ("image_blocks",): (0, 8),
}


def measured_rows(paths: list[str]) -> list[dict]:
    """One row per measured run in calibration records (this script) or `bench_dpo.py` reports: its label,
    source, RunSettings for `estimate`, and the measured peak reserved GiB and seconds per pair."""
    from vlmpref.plan.estimate import RunSettings
    from vlmpref.plan.shapes import image_tokens

    rows = []
    for path in paths:
        data = json.loads(Path(path).read_text())
        source = Path(path).name
        if isinstance(data, list):  # calibration records: `vlmpref train` on synthetic pairs
            for r in data:
                if r.get("status") != "ok" or not r["measured"].get("peak_reserved_gib"):
                    continue
                s = {**RECIPE, **r["overrides"]}
                shape = _shape(r["replica"])
                image = image_tokens(shape, 640, 480, s["image_longest_edge"])
                settings = RunSettings(
                    quantization=s["quantization"], use_dora=s["use_dora"], lora_scope=s["lora_scope"],
                    image_longest_edge=s["image_longest_edge"], per_device_train_batch_size=s["per_device_train_batch_size"],
                    gradient_checkpointing=s["gradient_checkpointing"], engine=r.get("engine", "trl"),
                    prompt_tokens=max(r["tokens"]["prompt_and_image"] - image.tokens, 0),
                    answer_tokens=r["tokens"]["answer"])
                rows.append(dict(label=f"{source} {r['setting']} {settings.engine}", source=source,
                                 model=r["replica"], settings=settings, gib=r["measured"]["peak_reserved_gib"],
                                 seconds=r["measured"]["seconds_per_pair"]))
            continue
        command = data.get("command", "").split()  # a bench_dpo.py report

        def option(name, default):
            return command[command.index(name) + 1] if name in command else default

        width = int(option("--image-size", 640))
        height = int(command[command.index("--image-size") + 2]) if "--image-size" in command else 480
        for name, entry in data["models"].items():
            shape = _shape(name)
            image = image_tokens(shape, width, height)
            tokens = entry["tokens"]
            for r in entry["results"]:
                fast = r["variant"] != "trl"
                settings = RunSettings(
                    quantization=option("--quantization", "4bit"), use_dora=True, lora_scope=r["lora_scope"],
                    engine="fast" if fast else "trl", pairs_per_forward=r["pairs_per_forward"] if fast else "auto",
                    image_width=width, image_height=height, prompt_tokens=round(tokens["prompt"]) - image.tokens,
                    answer_tokens=round(max(tokens["chosen"], tokens["rejected"])), num_train_epochs=5)
                variant = r["variant"]
                if fast and ":" not in variant:  # the first reports named the packing only in pairs_per_forward
                    variant = f"{variant}:{r['pairs_per_forward']}"
                label = f"{source} {name} {variant}"
                rows.append(dict(label=label, source=source, model=name, settings=settings,
                                 gib=r["peak_reserved_gib"], seconds=r["s_per_pair"]))
    return rows


def design_rows() -> list[dict]:
    from vlmpref.plan.estimate import RunSettings

    return [dict(label=f"DESIGN.md {name} {changes or 'recipe'}", source="DESIGN.md", model=name,
                 settings=RunSettings(engine="trl", prompt_tokens=16, answer_tokens=110, **changes), gib=gib, seconds=seconds)
            for name, changes, gib, seconds in DESIGN_ROWS]


@functools.lru_cache(maxsize=None)
def _shape(name: str):
    from vlmpref.plan.shapes import describe_model

    return describe_model(name)


def _estimates(rows: list[dict]) -> list:
    from vlmpref.plan.estimate import estimate

    return [estimate(_shape(r["model"]), r["settings"], "h200") for r in rows]


def compare(rows: list[dict], no_time: str | None = None) -> None:
    """Print estimate against measurement as a markdown table."""
    print("| row | measured GiB | estimate GiB | error | measured s/pair | estimate s/pair | error | peak during |")
    print("|---|---|---|---|---|---|---|---|")
    for r, est in zip(rows, _estimates(rows)):
        timed = not (no_time and re.search(no_time, r["label"]))
        error = _pct(est.seconds_per_pair, r["seconds"]).strip() if timed else "n/a"
        seconds = f"{r['seconds']:.2f}" if timed else f"({r['seconds']:.2f})"
        seconds = f"{seconds} | {est.seconds_per_pair:.2f} | {error}"
        print(f"| {r['label']} | {r['gib']:.2f} | {est.memory.reserved_gib:.2f} | "
              f"{_pct(est.memory.reserved_gib, r['gib']).strip()} | {seconds} | {est.memory.peak_phase} |")


def _set(key: tuple, value: float) -> None:
    from vlmpref.plan.estimate import CALIBRATION as cal

    if len(key) == 1:
        cal[key[0]] = value
    elif len(key) == 2:
        cal[key[0]] = tuple(value if i == key[1] else v for i, v in enumerate(cal[key[0]]))
    else:
        cal[key[0]][key[1]] = tuple(value if i == key[2] else v for i, v in enumerate(cal[key[0]][key[1]]))


def _get(key: tuple) -> float:
    from vlmpref.plan.estimate import CALIBRATION as cal

    value = cal[key[0]]
    for part in key[1:]:
        value = value[part]
    return value


def fit(rows: list[dict]) -> None:
    """Refit the memory coefficients in FIT_BOUNDS: the smallest largest |estimate / measured - 1| over `rows`
    (SLSQP on the epigraph form), staying near the current values; prints them and the rows after the fit."""
    import numpy as np
    try:
        from scipy.optimize import minimize
    except ImportError:
        sys.exit("--fit needs scipy (pip install scipy); --compare does not.")

    keys = list(FIT_BOUNDS)
    low, high = (np.array([FIT_BOUNDS[k][i] for k in keys], float) for i in (0, 1))
    before = [_get(k) for k in keys]
    now = np.clip(before, low, high)

    def errors(y):
        for key, value in zip(keys, low + (high - low) * y[:-1]):
            _set(key, float(value))
        return np.array([est.memory.reserved_gib / r["gib"] - 1 for r, est in zip(rows, _estimates(rows))])

    start = (now - low) / (high - low)
    result = minimize(lambda y: y[-1] + 1e-3 * np.sum((y[:-1] - start) ** 2), np.append(start, 0.2), method="SLSQP",
                      bounds=[(0, 1)] * (len(keys) + 1),
                      constraints=[dict(type="ineq", fun=lambda y: np.concatenate([y[-1] - errors(y),
                                                                                   y[-1] + errors(y)]))],
                      options=dict(maxiter=300, ftol=1e-7))
    worst = np.max(np.abs(errors(result.x)))
    print(f"memory coefficients ({result.message}; largest error {100 * worst:.1f}%):")
    for key, value, old in zip(keys, low + (high - low) * result.x[:-1], before):
        print(f"  {' '.join(map(str, key)):36s} {value:8.3f}  (now {old:g}, bounds {FIT_BOUNDS[key]})")
    compare(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--part", type=int, nargs="+", default=[1], choices=sorted(PARTS),
                        help="Which list of settings to run (each fits in about 8 minutes on an H200).")
    parser.add_argument("--only", type=int, nargs="+", help="Run only these settings of the part (0-based).")
    parser.add_argument("--engine", default="trl", choices=["trl", "fast"], help="Training engine to measure.")
    parser.add_argument("--steps", type=int, default=4, help="Training steps per setting; the first is not timed.")
    parser.add_argument("--budget", type=float, default=480.0, help="Seconds for the whole part; later settings "
                        "are skipped when less than --min-seconds remain.")
    parser.add_argument("--min-seconds", type=float, default=45.0, help="Time one setting needs at least.")
    parser.add_argument("--timeout", type=float, default=240.0, help="Seconds one setting may take.")
    parser.add_argument("--output", help="JSON file for the records (written after every setting).")
    parser.add_argument("--workdir", help="Folder for replicas, data and runs (default: a temporary folder).")
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny model, 1 step, no CUDA needed.")
    parser.add_argument("--compare", nargs="+", metavar="JSON", help="Print estimate against measurement for "
                        "calibration records and bench_dpo.py reports, as a markdown table.")
    parser.add_argument("--fit", nargs="+", metavar="JSON", help="Refit the memory coefficients to these files.")
    parser.add_argument("--history", metavar="REGEX", help="Rows (by label) to leave out of --fit and --compare, "
                        "e.g. runs measured before a change of the engine.")
    parser.add_argument("--no-time", metavar="REGEX", help="Rows (by label) whose time is not comparable.")
    parser.add_argument("--design", action="store_true", help="Add DESIGN.md's measured baseline rows.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        print("RESULT " + json.dumps(run_one(json.loads(args.child))), flush=True)
        return
    if args.compare or args.fit:
        rows = measured_rows(args.compare or args.fit)
        if args.history:
            rows = [r for r in rows if not re.search(args.history, r["label"])]
        rows += design_rows() if args.design else []
        fit(rows) if args.fit else compare(rows, args.no_time)
        return
    records = run_all(args)
    print_table(records)
    if args.output:
        print(f"records written to {args.output}")


if __name__ == "__main__":
    main()
