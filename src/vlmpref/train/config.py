"""`TrainConfig`: every option of `vlmpref train`, with the guide's recipe as the defaults.

Names follow transformers / TRL / PEFT (`learning_rate`, `per_device_train_batch_size`, `beta`, `lora_r`,
`use_dora`, ...), so a TRL user recognizes each flag. The same class feeds the CLI, YAML files and the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

from vlmpref.config import IntOrAuto
from vlmpref.data.images import DEFAULT_MAX_PIXELS
from vlmpref.data.sources import default_split, held_out_split
from vlmpref.errors import VlmprefError
from vlmpref.plan.options import RunOptions
from vlmpref.runs import RUN_CONFIG

LOSS_TYPES = ("sigmoid", "ipo", "hinge", "sft", "robust", "sigmoid_norm", "apo_zero", "apo_down", "bco_pair",
              "nca_pair", "sppo_hard", "discopop")
CONFIG_NAME = RUN_CONFIG
# Options a resumed run may change: they do not change what is computed, only how it is logged, saved,
# loaded or how much memory it takes (pairs per forward keep the effective batch)
SAFE_ON_RESUME = ("logging_steps", "save_steps", "save_total_limit", "eval_steps", "report_to", "dataset_num_proc",
                  "dataloader_num_workers", "cache_memory_gib", "gradient_checkpointing", "pairs_per_forward",
                  "max_set_aside_fraction", "memory_check", "max_gpu_memory")
# Options only the fast engine reads, with the values that mean "not set"
FAST_ONLY = {"pairs_per_forward": "auto", "image_cache": "auto", "cache_memory_gib": 2.0}


@dataclass
class TrainConfig(RunOptions):
    """Options of `vlmpref train`. Defaults reproduce the guide: SmolVLM-Instruct, rlaif-v, 4-bit DoRA DPO.

    The options that decide memory and speed (quantization, adapter, engine, batch, packing, image size) are
    `RunOptions` (plan/options.py), shared with `vlmpref estimate`."""

    resume_file: ClassVar[str] = CONFIG_NAME  # what `--resume FOLDER` reads the options from

    # ---- what to train on
    model: str = field(default="HuggingFaceTB/SmolVLM-Instruct", metadata={"path": "in", 
        "help": "Base model: Hub id or local folder (any AutoModelForImageTextToText checkpoint)."})
    dataset: str = field(default="HuggingFaceH4/rlaif-v_formatted", metadata={"path": "in", 
        "help": "Preference data: Hub id, save_to_disk folder, folder of data files, or a .jsonl/.json/.parquet file."})
    split: Optional[str] = field(default=None, metadata={
        "help": "Training split, slicing allowed (train[:90%]); auto: the whole train split (a single file is its "
                "one split), or the guide's train[:6%] for HuggingFaceH4/rlaif-v_formatted."})
    eval_dataset: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Held-out preference data for evaluation during training; defaults to --dataset when "
                "--eval-split is given."})
    eval_split: Optional[str] = field(default=None, metadata={
        "help": "Held-out split, e.g. test[:1%]; auto with --eval-dataset: its held-out split, as `vlmpref eval` "
                "picks it."})
    output_dir: str = field(default="runs/dpo", metadata={"path": "out", 
        "help": "Folder for the adapter, processor, resolved config, logs and checkpoints."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    overwrite: bool = field(default=False, metadata={
        "help": "Start a new run in a non-empty --output-dir (its checkpoints are not used; --resume continues "
                "a run instead)."})
    resume: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Continue the run in this output folder from its last complete checkpoint, with its saved "
                f"options ({CONFIG_NAME}); only {', '.join('--' + k.replace('_', '-') for k in SAFE_ON_RESUME)} may "
                "be changed by flags."})

    # ---- model and adapter
    lora_alpha: int = field(default=8, metadata={"help": "Adapter scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the adapter input."})
    init_lora_weights: str = field(default="gaussian", metadata={"help": "PEFT init of the adapter (gaussian, true, pissa, ...)."})
    attn_implementation: Optional[str] = field(default=None, metadata={
        "help": "Attention kernel; auto picks flash_attention_2 when installed on a GPU, else sdpa."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code to run."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights, which can run code."})

    # ---- optimization (TRL DPOConfig names)
    cache_memory_gib: float = field(default=2.0, metadata={
        "help": "fast engine: image features kept in memory before spilling to OUTPUT_DIR/image_features."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak learning rate (TRL's DPO default)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps; -1 uses the epochs."})
    per_device_eval_batch_size: int = field(default=1, metadata={"help": "Pairs per evaluation forward pass."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "Learning-rate schedule (transformers names)."})
    warmup_steps: float = field(default=0.0, metadata={
        "help": "Linear warm-up: a number of steps, or a share of all steps when below 1 (transformers' rule)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    beta: float = field(default=0.1, metadata={"help": "DPO temperature: how far the policy may move from the reference."})
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"], metadata={
        "help": f"Loss or losses to sum: {', '.join(LOSS_TYPES)}. 'sigmoid sft' adds a likelihood term on chosen "
                "answers (RPO), which keeps a small model's answers well-formed."})
    loss_weights: Optional[list[float]] = field(default=None, metadata={"help": "Weight of each --loss-type."})
    max_length: Optional[int] = field(default=None, metadata={
        "help": "Longest prompt+answer sequence in tokens, image tokens included; auto keeps everything. Pairs are "
                "measured before training: see --truncation. Image tokens are never cut."})
    truncation: Literal["answer", "skip"] = field(default="answer", metadata={
        "help": "Pairs over --max-length: answer keeps the row and cuts the answer tokens past the limit (TRL's "
                "keep_start); skip sets the row aside. A prompt that leaves no room for an answer is always set "
                "aside. Both are counted in the summary."})
    bf16: Optional[bool] = field(default=None, metadata={
        "help": "bf16 mixed precision; auto uses it on GPUs that support it and with quantized weights."})
    seed: int = field(default=42, metadata={"help": "Seed for adapter init, data order and dropout."})

    # ---- logging, checkpoints, evaluation
    logging_steps: int = field(default=10, metadata={"help": "Log every N optimizer steps."})
    save_steps: int = field(default=10, metadata={"help": "Save a checkpoint every N optimizer steps."})
    save_total_limit: Optional[int] = field(default=1, metadata={"help": "Checkpoints to keep (oldest deleted)."})
    eval_steps: Optional[int] = field(default=None, metadata={"help": "Evaluate on the held-out split every N steps."})
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "Loggers: tensorboard, wandb, trackio, or none."})
    dataset_num_proc: Optional[int] = field(default=None, metadata={
        "help": "Processes for data checking and RGB conversion; auto uses up to 8 CPU cores."})
    dataloader_num_workers: IntOrAuto = field(default="auto", metadata={
        "help": "Background processes that prepare batches (image processing, tokens); auto: on a GPU, the fast "
                "engine uses up to 4 (one CPU core left free) so the next batch is ready when the GPU is; TRL, as "
                "the guide runs it, and any CPU run use none."})
    allow_outside_paths: bool = field(default=False, metadata={
        "help": "Allow image paths in a local dataset to point outside its folder."})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "Set aside images with more pixels than this (decompression bombs); raise it for huge images."})
    keep_duplicates: bool = field(default=False, metadata={
        "help": "Train on exact duplicate rows (same image pixels, prompt and answers); by default every copy "
                "after the first is set aside. Counted either way."})
    max_set_aside_fraction: float = field(default=0.5, metadata={
        "help": "Stop before training when more than this share of the rows was set aside (bad images, empty "
                "answers, ...); 1 never stops, 0 stops at the first bad row."})
    max_gpu_memory: Optional[float] = field(default=None, metadata={
        "help": "Use at most this many GiB of the GPU (a shared card, or to plan for a smaller one): caps "
                "PyTorch's allocations, and auto packing and the memory check plan within it; auto uses what is "
                "free."})
    memory_check: bool = field(default=True, metadata={
        "help": "On a GPU, estimate the memory the run needs before loading the model and stop with ways to fit "
                "when the free memory is too small."})

    # ---- memory preset
    preset: Optional[str] = field(default=None, metadata={
        "help": "Memory preset (6gb, 8gb, 12gb, 24gb, 80gb, or a preset YAML file) choosing quantization, adapter "
                "targets, image resolution, batch and checkpointing; --config and flags override it. From Python, "
                "vlmpref.config.resolve(TrainConfig, preset=...) applies it."})

    @classmethod
    def follow_given(cls, values: dict, given: dict) -> None:
        """A --dataset flag replaces the config file's dataset, and with it the file's options that described that
        dataset (its splits and held-out set), in place, before the flags are applied.

        The held-out set then comes from the new data: its held-out split (test, validation, ...) when it has one,
        else none (training then runs without evaluation; `vlmpref train` says so before it starts).
        """
        new, old = given.get("dataset"), values.get("dataset")
        if not new or old in (None, new):
            return
        wanted_eval = bool(values.get("eval_dataset")) and "eval_dataset" not in given
        for name in ("split", "eval_dataset", "eval_split"):
            if name not in given:
                values.pop(name, None)
        if not wanted_eval:
            return
        if "eval_split" in given:
            values["eval_dataset"] = new
        elif held_out_split(new):
            values["eval_dataset"], values["eval_split"] = new, held_out_split(new)
        else:  # nothing to hold out: the file's evaluation options have no set to run on
            for name in ("eval_steps", "per_device_eval_batch_size"):
                if name not in given:
                    values.pop(name, None)

    def __post_init__(self):
        self.check_run_options()
        for name in ("learning_rate", "per_device_eval_batch_size", "logging_steps", "save_steps"):
            if getattr(self, name) <= 0:
                raise VlmprefError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}.")
        if self.beta <= 0:
            raise VlmprefError(f"--beta must be positive, not {self.beta}.")
        if self.max_steps == 0 or self.max_steps < -1:
            raise VlmprefError("--max-steps must be positive, or -1 to train for --num-train-epochs.")
        if not 0 <= self.lora_dropout < 1:
            raise VlmprefError(f"--lora-dropout must be in [0, 1), not {self.lora_dropout}.")
        unknown = [t for t in self.loss_type if t not in LOSS_TYPES]
        if unknown:
            raise VlmprefError(f"Unknown --loss-type {unknown[0]}; choose from {', '.join(LOSS_TYPES)}.")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise VlmprefError(f"--loss-weights has {len(self.loss_weights)} values for {len(self.loss_type)} "
                               "loss types; give one weight per --loss-type.")
        if self.eval_split and not self.eval_dataset:
            self.eval_dataset = self.dataset
        if self.eval_dataset and not self.eval_split:
            self.eval_split = default_split(self.eval_dataset, "eval")
        if self.split is None:
            self.split = default_split(self.dataset, "train")
        self._check_ignored_options()
        from vlmpref.train.fast.losses import LOSS_TYPES as FAST_LOSS_TYPES  # torch: not needed for --help

        if self.engine == "fast" and not set(self.loss_type) <= FAST_LOSS_TYPES:
            raise VlmprefError(f"The fast engine has no {sorted(set(self.loss_type) - FAST_LOSS_TYPES)[0]} loss; "
                               "use --engine trl for it.")
        if self.report_to == ["none"]:
            self.report_to = []
        if self.max_length is not None and self.max_length <= 0:
            raise VlmprefError(f"--max-length must be positive, not {self.max_length}.")
        if self.max_image_pixels <= 0:
            raise VlmprefError(f"--max-image-pixels must be positive, not {self.max_image_pixels}.")
        if not 0 <= self.max_set_aside_fraction <= 1:
            raise VlmprefError(f"--max-set-aside-fraction must be between 0 and 1, not {self.max_set_aside_fraction}.")
        if self.resume and self.overwrite:
            raise VlmprefError("--resume continues the run in its folder and --overwrite starts a new one there; "
                               "give only one of them.")
        if self.dataloader_num_workers != "auto" and self.dataloader_num_workers < 0:
            raise VlmprefError(f"--dataloader-num-workers must be 0 or more, or auto, not {self.dataloader_num_workers}.")
        if self.max_gpu_memory is not None and self.max_gpu_memory <= 0:
            raise VlmprefError(f"--max-gpu-memory must be positive, not {self.max_gpu_memory}.")
        from vlmpref.train.reporting import check_report_to

        check_report_to(self.report_to)

    def fast_only_options(self) -> list[str]:
        """Fast-engine options given a value of their own (flags as the user types them)."""
        return [f"--{name.replace('_', '-')}" for name, unset in FAST_ONLY.items() if getattr(self, name) != unset]

    def _check_ignored_options(self) -> None:
        """An option the chosen path would not read is a mistake to point out, not to pass over."""
        if self.engine == "trl" and self.fast_only_options():
            raise VlmprefError(f"{', '.join(self.fast_only_options())} only apply to the fast engine, and --engine "
                               "trl was chosen; remove them or use --engine fast.")
        if self.engine == "fast" and self.lora_scope == "all":
            if self.image_cache == "on":
                raise VlmprefError("--image-cache on needs a frozen vision tower, but --lora-scope all puts adapters "
                                   "on it; use --lora-scope language, or leave --image-cache at auto.")
            if self.cache_memory_gib != FAST_ONLY["cache_memory_gib"] and self.image_cache != "on":
                raise VlmprefError("--cache-memory-gib sizes the image-feature cache, which is off with --lora-scope "
                                   "all; remove it or use --lora-scope language.")
        if self.image_cache == "off" and self.cache_memory_gib != FAST_ONLY["cache_memory_gib"]:
            raise VlmprefError("--cache-memory-gib sizes the image-feature cache, which --image-cache off turns off; "
                               "remove one of them.")
        if self.max_length is None and self.truncation != "answer":
            raise VlmprefError("--truncation says what to do with pairs over --max-length, which is not set; give "
                               "--max-length or remove --truncation.")
        if not self.eval_dataset:
            for name, unset in (("eval_steps", None), ("per_device_eval_batch_size", 1)):
                if getattr(self, name) != unset:
                    raise VlmprefError(f"--{name.replace('_', '-')} applies to a held-out set, and none was given; "
                                       "add --eval-split (and --eval-dataset if it is another dataset) or remove it.")
