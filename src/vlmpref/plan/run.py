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
from typing import Optional

from rich.console import Console
from rich.table import Table

from vlmpref.errors import VlmprefError
from vlmpref.plan.estimate import CALIBRATION, Estimate, RunSettings, estimate, parse_image_size, run_settings
from vlmpref.plan.gpus import GPUS, Gpu, find_gpu, local_gpu
from vlmpref.plan.options import RunOptions
from vlmpref.plan.presets import preset_that_fits
from vlmpref.plan.shapes import ModelShape, describe_model
from vlmpref.terminal import make_console

# cards shown when no --gpu is given: one per common memory size
TABLE_GPUS = ("rtx-4050-laptop", "rtx-4060", "rtx-4070", "rtx-4080", "rtx-4090", "l4", "a100-80gb", "h100")


@dataclass
class EstimateConfig(RunOptions):
    """Options of `vlmpref estimate`: the run's options (RunOptions, as `vlmpref train` names them) and the data's
    typical sizes. A `vlmpref train` YAML gives them too; its other keys are read past (see the CLI table)."""

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
    image_size: str = field(default="640x480", metadata={"help": "Typical image size of the data, WIDTHxHEIGHT."})
    prompt_tokens: int = field(default=20, metadata={"help": "Tokens of the chat markup and question, image excluded."})
    answer_tokens: int = field(default=120, metadata={
        "help": "Tokens of the longer answer of a pair (about 1.3 per English word)."})
    pairs: int = field(default=5000, metadata={"help": "Preference pairs per epoch, for the time estimate."})
    num_gpus: int = field(default=1, metadata={
        "help": "GPUs of a data-parallel run (accelerate launch / torchrun): memory per GPU, wall time on all of them."})
    list_gpus: bool = field(default=False, metadata={"help": "List the GPUs the estimate knows and exit."})
    as_json: bool = field(default=False, metadata={"help": "Print the estimate as JSON."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own config code to run."})

    def __post_init__(self):
        self.check_run_options()
        if self.pairs <= 0:
            raise VlmprefError(f"--pairs must be positive, not {self.pairs}.")
        if self.num_gpus < 1:
            raise VlmprefError(f"--num-gpus must be 1 or more, not {self.num_gpus}.")
        if self.gradient_accumulation_steps % self.num_gpus:
            raise VlmprefError(f"--gradient-accumulation-steps {self.gradient_accumulation_steps} cannot be shared by "
                               f"{self.num_gpus} GPUs (each process takes an equal part of it); use a multiple of "
                               f"{self.num_gpus}.")

    def settings(self) -> RunSettings:
        """What one GPU's process runs: with --num-gpus N, its share (1/N) of the accumulation steps."""
        width, height = parse_image_size(self.image_size)
        settings = run_settings(self, image_width=width, image_height=height, prompt_tokens=self.prompt_tokens,
                                answer_tokens=self.answer_tokens)
        return dataclasses.replace(settings, gradient_accumulation_steps=self.gradient_accumulation_steps // self.num_gpus)


# Data parallel: one all-reduce of the adapters' gradients per optimizer step. Assumed link: PCIe 4.0 x16 as a
# ring all-reduce sees it (~20 GB/s); NVLink is faster. Scaling itself is not measured yet (benchmarks/RESULTS.md).
ALLREDUCE_GBS = 20.0


def epoch_seconds(est: Estimate, cfg: EstimateConfig) -> float:
    """Wall time of one epoch on `cfg.num_gpus` GPUs: each takes 1/N of the pairs at the one-GPU rate, plus the
    gradient all-reduce of each optimizer step (a ring moves 2 (N-1)/N of the gradient bytes)."""
    pairs_per_gpu = cfg.pairs / cfg.num_gpus
    if cfg.num_gpus == 1:
        return est.epoch_seconds(cfg.pairs)
    steps = cfg.pairs / (cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps)
    gradient_bytes = est.trainable_params * 4  # float32 (QLoRA's bf16 adapters send half: this errs long)
    allreduce = 2 * (cfg.num_gpus - 1) / cfg.num_gpus * gradient_bytes / (ALLREDUCE_GBS * 1e9)
    return est.epoch_seconds(pairs_per_gpu) + steps * allreduce


def with_auto_packing(shape: ModelShape, settings: RunSettings, gpu: Gpu) -> tuple[RunSettings, str | None]:
    """`settings` with the pairs per forward `vlmpref train` would choose on `gpu` when packing is auto."""
    if settings.engine != "fast" or settings.pairs_per_forward != "auto":
        return settings, None
    from vlmpref.plan.autopack import plan_packing  # imports torch: here, so `vlmpref estimate --help` stays quick

    budget = gpu.memory_gib - CALIBRATION["cuda_context_gib"]
    plan = plan_packing(shape, settings, settings.effective_batch, budget, gpu.name)
    return dataclasses.replace(settings, pairs_per_forward=plan.pairs_per_forward), plan.reason


def run_estimate(cfg: EstimateConfig, console: Console | None = None) -> dict:
    console = console or make_console()
    if cfg.list_gpus:
        _print_gpus(console)
        return {}
    settings = cfg.settings()
    shape = describe_model(cfg.model, cfg.trust_remote_code)
    gpu = find_gpu(cfg.gpu) if cfg.gpu else local_gpu()
    cards = [gpu] if gpu else [GPUS[key] for key in TABLE_GPUS]
    planned = [with_auto_packing(shape, settings, card) for card in cards]
    estimates = [estimate(shape, card_settings, card) for (card_settings, _), card in zip(planned, cards)]
    report = _as_dict(estimates[0], cfg, cards)
    report["gpus"] = [_gpu_dict(est, cfg) for est in estimates]
    suggestion = None
    if gpu and not estimates[0].fits:
        suggestion = preset_that_fits(shape, settings, gpu)
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
        f"batch {s.per_device_train_batch_size} x {s.gradient_accumulation_steps} accumulation"
        f"{f', {s.pairs_in_forward} pair(s) per forward' if s.engine == 'fast' else ''}, gradient checkpointing "
        f"{'on' if s.gradient_checkpointing else 'off'}, engine {s.engine}",
    ]


def _print_estimate(console: Console, est: Estimate, cfg: EstimateConfig) -> None:
    for line in _settings_lines(est, cfg):
        console.print(line, soft_wrap=True)
    if cfg.num_gpus > 1:
        console.print(f"data parallel on {cfg.num_gpus} GPUs: each process runs {cfg.gradient_accumulation_steps // cfg.num_gpus}"
                      f" of the {cfg.gradient_accumulation_steps} accumulation steps; the memory below is per GPU",
                      soft_wrap=True)
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
    epoch = epoch_seconds(est, cfg)
    where = (f" on {cfg.num_gpus} GPUs (each its 1/{cfg.num_gpus} of the pairs, plus one gradient all-reduce per "
             f"step at ~{ALLREDUCE_GBS:g} GB/s; scaling assumed, not measured)" if cfg.num_gpus > 1 else "")
    return (f"~{est.seconds_per_pair:.2f} s/pair per GPU ({est.bound}): {cfg.pairs:,} pairs -> {_hours(epoch)} per "
            f"epoch{where}, {_hours(epoch * cfg.num_train_epochs)} for {cfg.num_train_epochs:g} epochs")


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
    gpus = f", {cfg.num_gpus} of each" if cfg.num_gpus > 1 else ""
    table = Table(title=f"On common GPUs ({cfg.pairs:,} pairs per epoch{gpus})", title_justify="left")
    fast = estimates[0].settings.engine == "fast"
    for column in ("GPU", "memory GiB", "fits", "spare GiB", "s/pair", "per epoch") + (("pairs/forward",) if fast else ()):
        table.add_column(column, justify="left" if column in ("GPU", "fits") else "right")
    for est in estimates:
        table.add_row(est.gpu.name, f"{est.gpu.memory_gib:g}", "[green]yes[/]" if est.fits else "[red]no[/]",
                      f"{est.free_gib:.1f}", f"{est.seconds_per_pair:.2f}", _hours(epoch_seconds(est, cfg)),
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
            "epoch_hours": round(epoch_seconds(est, cfg) / 3600, 2), "num_gpus": cfg.num_gpus,
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
