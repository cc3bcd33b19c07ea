"""`vlmpref estimate`: will a training run fit my GPU, and how long will it take?

    vlmpref estimate --model HuggingFaceTB/SmolVLM-Instruct --gpu rtx-4070
    vlmpref estimate --config configs/smolvlm-instruct/dpo-guide.yaml --gpu 8gb
    vlmpref estimate --model smolvlm-256m --preset 6gb              # no --gpu: a table of common cards
    vlmpref estimate --list-gpus

Settings carry `vlmpref train`'s option names, so a train YAML or a preset gives them; the model is read from
its config only (a Hub id, a local folder, or a replica name: smolvlm-256m, smolvlm-500m, smolvlm-2.2b).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from rich.console import Console
from rich.table import Table

from vlmpref.errors import VlmprefError
from vlmpref.terminal import make_console
from vlmpref.models.adapters import GUIDE_TARGET_MODULES
from vlmpref.models.estimate import CALIBRATION, Estimate, RunSettings, estimate, parse_image_size, plan_packing
from vlmpref.models.gpus import GPUS, Gpu, find_gpu
from vlmpref.models.shapes import ModelShape, describe_model
from vlmpref.config import PRESETS, IntOrAuto, preset_values
from vlmpref.train.config import TrainConfig

_TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
# cards shown when no --gpu is given: one per common memory size
TABLE_GPUS = ("rtx-4050-laptop", "rtx-4060", "rtx-4070", "rtx-4080", "rtx-4090", "l4", "a100-80gb", "h100")


@dataclass
class EstimateConfig:
    """Options of `vlmpref estimate`."""

    # keys of a `vlmpref train` YAML that do not change the estimate, read past silently
    borrowed_keys: ClassVar[tuple[str, ...]] = tuple(f.name for f in dataclasses.fields(TrainConfig))

    model: str = field(default="HuggingFaceTB/SmolVLM-Instruct", metadata={
        "help": "Model: Hub id (only its config is read), local folder, or replica name (smolvlm-256m, "
                "smolvlm-500m, smolvlm-2.2b)."})
    gpu: Optional[str] = field(default=None, metadata={
        "help": "GPU: a name from --list-gpus (rtx-4070, a100-80gb, ...) or a memory size such as 12gb; auto uses "
                "this machine's GPU, or shows a table of common cards when there is none."})
    config: Optional[str] = field(default=None, metadata={
        "help": "YAML file with these options; a `vlmpref train` config works too."})
    preset: Optional[str] = field(default=None, metadata={
        "help": "Take the settings of a memory preset (6gb, 8gb, 12gb, 24gb, 80gb); flags override it."})
    quantization: Literal["none", "8bit", "4bit"] = field(default="4bit", metadata={
        "help": "Base weights as none (bf16), 8bit or 4bit (NF4)."})
    use_dora: bool = field(default=True, metadata={"help": "DoRA instead of plain LoRA."})
    lora_r: int = field(default=8, metadata={"help": "Adapter rank."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(GUIDE_TARGET_MODULES), metadata={
        "help": "Module names that get adapters."})
    lora_scope: Literal["all", "language"] = field(default="all", metadata={
        "help": "all: vision tower included (the guide); language: the language model only."})
    engine: Literal["fast", "trl"] = field(default=_TRAIN_DEFAULTS["engine"], metadata={
        "help": "Training engine, as in `vlmpref train`: fast (shared-prefix packing) or trl (TRL's DPOTrainer)."})
    image_cache: Literal["auto", "on", "off"] = field(default="auto", metadata={
        "help": "fast engine: reuse cached image features (no vision tower in training); auto = on with "
                "--lora-scope language."})
    pairs_per_forward: IntOrAuto = field(default="auto", metadata={
        "help": "fast engine: pairs packed into one forward pass; auto: the most that fit the card, as `vlmpref "
                "train` chooses them."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Preference pairs per forward pass."})
    gradient_accumulation_steps: int = field(default=32, metadata={"help": "Forward passes per optimizer step."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations to save memory."})
    image_longest_edge: Optional[int] = field(default=None, metadata={
        "help": "Resize images to this longest edge (pixels) before tiling; auto keeps the model's setting."})
    image_size: str = field(default="640x480", metadata={"help": "Typical image size of the data, WIDTHxHEIGHT."})
    prompt_tokens: int = field(default=20, metadata={"help": "Tokens of the chat markup and question, image excluded."})
    answer_tokens: int = field(default=120, metadata={
        "help": "Tokens of the longer answer of a pair (about 1.3 per English word)."})
    pairs: int = field(default=5000, metadata={"help": "Preference pairs per epoch, for the time estimate."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Epochs, for the time estimate."})
    list_gpus: bool = field(default=False, metadata={"help": "List the GPUs the estimate knows and exit."})
    as_json: bool = field(default=False, metadata={"help": "Print the estimate as JSON."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own config code to run."})

    def __post_init__(self):
        for name in ("pairs", "per_device_train_batch_size", "gradient_accumulation_steps", "lora_r"):
            if getattr(self, name) <= 0:
                raise VlmprefError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}.")
        if self.num_train_epochs <= 0:
            raise VlmprefError(f"--num-train-epochs must be positive, not {self.num_train_epochs}.")


def run_settings(cfg) -> RunSettings:
    """RunSettings from an EstimateConfig (or anything with the same option names, such as a TrainConfig)."""
    width, height = parse_image_size(getattr(cfg, "image_size", "640x480"))
    return RunSettings(
        quantization=cfg.quantization, use_dora=cfg.use_dora, lora_r=cfg.lora_r,
        lora_target_modules=tuple(cfg.lora_target_modules), lora_scope=cfg.lora_scope, image_width=width,
        image_height=height, image_longest_edge=cfg.image_longest_edge,
        prompt_tokens=getattr(cfg, "prompt_tokens", 20), answer_tokens=getattr(cfg, "answer_tokens", 120),
        batch_size=cfg.per_device_train_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        gradient_checkpointing=cfg.gradient_checkpointing, engine=getattr(cfg, "engine", "trl"),
        image_cache=getattr(cfg, "image_cache", "auto"), pairs_per_forward=_packing(cfg),
        epochs=cfg.num_train_epochs)


def _packing(cfg) -> int | None:
    """Pairs per forward as set, None for auto (planned per card by `with_auto_packing`)."""
    value = getattr(cfg, "pairs_per_forward", None)
    return None if value == "auto" else value


def with_auto_packing(shape: ModelShape, settings: RunSettings, gpu: Gpu, cfg) -> tuple[RunSettings, str | None]:
    """`settings` with the pairs per forward `vlmpref train` would choose on `gpu` when packing is auto."""
    if settings.engine != "fast" or getattr(cfg, "pairs_per_forward", None) != "auto":
        return settings, None
    budget = gpu.memory_gib - CALIBRATION["cuda_context_gib"]
    plan = plan_packing(shape, settings, settings.batch_size * settings.gradient_accumulation_steps, budget, gpu.name)
    return dataclasses.replace(settings, pairs_per_forward=plan.pairs_per_forward), plan.reason


def preset_settings(name: str, base: RunSettings) -> RunSettings:
    """`base` with a preset's choices applied."""
    values = preset_values(name)
    mapping = {"per_device_train_batch_size": "batch_size"}
    changes = {}
    for key, value in values.items():
        key = mapping.get(key, key)
        if key in {f.name for f in dataclasses.fields(RunSettings)}:
            changes[key] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **changes)


def preset_for(shape: ModelShape, settings: RunSettings, gpu: Gpu) -> tuple[str, Estimate] | None:
    """The largest preset whose settings fit `gpu`, with its estimate."""
    for name in reversed(PRESETS):
        try:
            est = estimate(shape, preset_settings(name, settings), gpu)
        except VlmprefError:
            return None  # preset files not found: no suggestion
        if est.fits:
            return name, est
    return None


def local_gpu() -> Gpu | None:
    """This machine's first CUDA GPU, matched to the table by name when possible."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / 2**30
    name = props.name.lower()
    # a table card matches when its model words (those with digits, "4070", "a100", "pcie") are in the name
    for gpu in sorted(GPUS.values(), key=lambda g: -len(g.name)):
        words = [w for w in gpu.name.lower().split() if any(c.isdigit() for c in w) and not w.endswith("gb")]
        words += [w for w in ("pcie", "laptop", "ti", "super") if w in gpu.name.lower().split()]
        if words and all(w in name for w in words) and abs(gpu.memory_gib - memory) < 2:
            return dataclasses.replace(gpu, memory_gib=round(memory, 1))
    return Gpu(props.name, round(memory, 1), 50.0, 500.0, "throughput not in the table; assumed an RTX 4070's")


def run_estimate(cfg: EstimateConfig, console: Console | None = None) -> dict:
    console = console or make_console()
    if cfg.list_gpus:
        _print_gpus(console)
        return {}
    settings = run_settings(cfg)
    shape = describe_model(cfg.model, cfg.trust_remote_code)
    gpu = find_gpu(cfg.gpu) if cfg.gpu else local_gpu()
    cards = [gpu] if gpu else [GPUS[key] for key in TABLE_GPUS]
    planned = [with_auto_packing(shape, settings, card, cfg) for card in cards]
    estimates = [estimate(shape, card_settings, card) for (card_settings, _), card in zip(planned, cards)]
    report = _as_dict(estimates[0], cfg, cards)
    report["gpus"] = [_gpu_dict(est, cfg) for est in estimates]
    suggestion = None
    if gpu and not estimates[0].fits:
        suggestion = preset_for(shape, settings, gpu)
        report["preset_that_fits"] = suggestion[0] if suggestion else None
    if cfg.as_json:
        print(json.dumps(report, indent=2))
        return report
    _print_estimate(console, estimates[0], cfg)
    if gpu and planned[0][1]:
        console.print(f"Packing: {planned[0][1]}.", soft_wrap=True)
    if gpu:
        _print_verdict(console, estimates[0], cfg, suggestion)
    else:
        _print_table(console, estimates, cfg)
    for note in estimates[0].notes:
        console.print(f"[dim]note: {note}[/]")
    return report


# ---- printing


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def _settings_lines(est: Estimate, cfg: EstimateConfig) -> list[str]:
    s, shape = est.settings, est.shape
    lang, vision = shape.part_params("text") / 1e6, shape.part_params("vision") / 1e6
    adapter = "DoRA" if s.use_dora else "LoRA"
    where = "language model + vision tower" if s.lora_scope == "all" else "language model"
    per_pair = ("x2 per pair (chosen, rejected), and again for the reference" if s.engine == "trl"
                else "one packed sequence per pair")
    cache = ", image features cached" if s.cached_images else ""
    return [
        f"[bold]{shape.name}[/]: {shape.params / 1e6:,.0f}M parameters (language {lang:,.0f}M, vision {vision:,.0f}M)",
        f"image {s.image_width}x{s.image_height} -> {est.image.tiles} tile(s), {est.image.tokens:,} tokens; "
        f"sequence {est.sequence_tokens:,} tokens, {per_pair}{cache}",
        f"{s.quantization} base, {adapter} r={s.lora_r} on {where}: {est.trainable_params / 1e6:.2f}M trainable; "
        f"batch {s.batch_size} x {s.gradient_accumulation_steps} accumulation"
        f"{f', {s.pairs_in_forward} pair(s) per forward' if s.engine == 'fast' else ''}, gradient checkpointing "
        f"{'on' if s.gradient_checkpointing else 'off'}, engine {s.engine}",
    ]


def _print_estimate(console: Console, est: Estimate, cfg: EstimateConfig) -> None:
    for line in _settings_lines(est, cfg):
        console.print(line, soft_wrap=True)
    table = Table(title="Peak GPU memory", title_justify="left", caption=f"peak during {est.memory.peak_phase}",
                  caption_justify="left")
    table.add_column("")
    table.add_column("GiB", justify="right")
    rows = est.memory.rows()
    for name, gib in rows[:-1]:
        table.add_row(name, f"{gib:.2f}")
    table.add_row("[bold]= torch peak reserved[/]", f"[bold]{est.memory.reserved_gib:.2f}[/]")
    table.add_row(*[rows[-1][0], f"{rows[-1][1]:.2f}"])
    table.add_row("[bold]= GPU memory needed[/]", f"[bold]{est.memory.total_gib:.2f}[/]")
    console.print(table)


def _time_line(est: Estimate, cfg: EstimateConfig) -> str:
    epoch = est.epoch_seconds(cfg.pairs)
    return (f"~{est.seconds_per_pair:.2f} s/pair ({est.bound}): {cfg.pairs:,} pairs -> {_hours(epoch)} per epoch, "
            f"{_hours(epoch * cfg.num_train_epochs)} for {cfg.num_train_epochs:g} epochs")


def _print_verdict(console: Console, est: Estimate, cfg: EstimateConfig, suggestion) -> None:
    if est.fits:
        console.print(f"[green]{est.gpu.name}: fits[/], {est.free_gib:.1f} GiB to spare.")
    else:
        console.print(f"[red]{est.gpu.name}: does not fit[/], {-est.free_gib:.1f} GiB short.")
        if suggestion:
            name, fitted = suggestion
            console.print(f"--preset {name} fits: {fitted.memory.total_gib:.1f} GiB "
                          f"({fitted.image.tiles} tile(s) per image, {fitted.settings.quantization}, "
                          f"{'DoRA' if fitted.settings.use_dora else 'LoRA'} on {fitted.settings.lora_scope}).")
        else:
            console.print("No preset fits this card for this model; try a smaller model (smolvlm-256m).")
    console.print(f"Time: {_time_line(est, cfg)}", soft_wrap=True)


def _print_table(console: Console, estimates: list[Estimate], cfg: EstimateConfig) -> None:
    table = Table(title=f"On common GPUs ({cfg.pairs:,} pairs per epoch)", title_justify="left")
    fast = estimates[0].settings.engine == "fast"
    for column in ("GPU", "memory GiB", "fits", "spare GiB", "s/pair", "per epoch") + (("pairs/forward",) if fast else ()):
        table.add_column(column, justify="left" if column in ("GPU", "fits") else "right")
    for est in estimates:
        table.add_row(est.gpu.name, f"{est.gpu.memory_gib:g}", "[green]yes[/]" if est.fits else "[red]no[/]",
                      f"{est.free_gib:.1f}", f"{est.seconds_per_pair:.2f}", _hours(est.epoch_seconds(cfg.pairs)),
                      *([str(est.settings.pairs_in_forward)] if fast else []))
    console.print(table)
    console.print("Pass --gpu NAME for one card and the preset that fits it.")


def _print_gpus(console: Console) -> None:
    table = Table(title="GPUs known to vlmpref estimate", title_justify="left")
    for column in ("--gpu", "name", "memory GiB", "bf16 TFLOP/s", "GB/s"):
        table.add_column(column)
    for key, gpu in GPUS.items():
        table.add_row(key, gpu.name, f"{gpu.memory_gib:g}", f"{gpu.bf16_tflops:g}", f"{gpu.bandwidth_gbs:g}")
    console.print(table)
    console.print("Any other card: --gpu 12gb (its memory).")


def _gpu_dict(est: Estimate, cfg: EstimateConfig) -> dict:
    return {"gpu": est.gpu.name, "memory_gib": est.gpu.memory_gib, "fits": est.fits,
            "free_gib": round(est.free_gib, 2), "seconds_per_pair": round(est.seconds_per_pair, 3),
            "epoch_hours": round(est.epoch_seconds(cfg.pairs) / 3600, 2),
            "pairs_per_forward": est.settings.pairs_in_forward if est.settings.engine == "fast" else None}


def _as_dict(est: Estimate, cfg: EstimateConfig, cards) -> dict:
    memory = {name: round(gib, 3) for name, gib in est.memory.rows()}
    return {
        "model": est.shape.name, "params": est.shape.params, "trainable_params": est.trainable_params,
        "image": dataclasses.asdict(est.image), "sequence_tokens": est.sequence_tokens,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(est.settings).items()},
        "memory_gib": memory, "reserved_gib": round(est.memory.reserved_gib, 3),
        "total_gib": round(est.memory.total_gib, 3), "peak_phase": est.memory.peak_phase,
        "flops_per_pair": est.flops_per_pair, "seconds_per_pair": round(est.seconds_per_pair, 3),
        "bound": est.bound, "pairs": cfg.pairs, "num_train_epochs": cfg.num_train_epochs,
    }
