"""The options of a training run that decide its memory and time, declared once.

`vlmpref train` (TrainConfig), `vlmpref estimate` (EstimateConfig) and the estimator's RunSettings all extend
`RunOptions`, so a flag has one name, one default and one help text wherever it appears, and a train YAML or
a preset gives the estimate the run's own settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from vlmpref.config import IntOrAuto, LoraScope, Quantization
from vlmpref.errors import VlmprefError
from vlmpref.models.adapters import GUIDE_TARGET_MODULES

Engine = Literal["fast", "trl"]
ImageCache = Literal["auto", "on", "off"]


@dataclass
class RunOptions:
    """Memory and speed (read by vlmpref estimate too)"""

    quantization: Quantization = field(default="4bit", metadata={
        "help": "Base weights as none, 8bit or 4bit (NF4, double quantization, bf16 compute)."})
    use_dora: bool = field(default=True, metadata={"help": "DoRA (weight-decomposed LoRA) instead of plain LoRA."})
    lora_r: int = field(default=8, metadata={"help": "Adapter rank."})
    lora_target_modules: list[str] = field(default_factory=lambda: list(GUIDE_TARGET_MODULES), metadata={
        "help": "Module names that get adapters."})
    lora_scope: LoraScope = field(default="all", metadata={
        "help": "all: every target module, vision tower included (the guide); language: the language model only."})
    engine: Engine = field(default="fast", metadata={
        "help": "fast: vlmpref's shared-prefix engine (same mathematics, less work per pair); trl: TRL's "
                "DPOTrainer exactly as the guide runs it."})
    pairs_per_forward: IntOrAuto = field(default="auto", metadata={
        "help": "fast engine: pairs packed into one forward pass; gradient accumulation is regrouped so the "
                "effective batch stays per_device_train_batch_size x gradient_accumulation_steps. auto: the most "
                "that divides the effective batch and fits the GPU's free memory (vlmpref estimate, with a 15% "
                "margin), half as many if the first step still runs out of memory; on a CPU, within half the free "
                "system memory."})
    image_cache: ImageCache = field(default="auto", metadata={
        "help": "fast engine: encode each image once and reuse its features; auto = on when the vision tower "
                "and connector are frozen (--lora-scope language)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Preference pairs per forward pass."})
    gradient_accumulation_steps: int = field(default=32, metadata={"help": "Forward passes per optimizer step."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations to save memory."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Passes over the training split."})
    image_longest_edge: Optional[int] = field(default=None, metadata={
        "help": "Resize images so their longest edge is this many pixels before tiling; fewer pixels, fewer "
                "tiles and tokens (SmolVLM-Instruct: 384 gives 1 tile, 768 5, the model's 1536 13 for a 4:3 "
                "image); auto keeps the model's setting."})

    @property
    def effective_batch(self) -> int:
        """Pairs per optimizer step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    def check_run_options(self) -> None:
        """One-line errors for values no run can use."""
        for name in ("lora_r", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs"):
            if getattr(self, name) <= 0:
                raise VlmprefError(f"--{name.replace('_', '-')} must be positive, not {getattr(self, name)}.")
        if self.image_longest_edge is not None and self.image_longest_edge <= 0:
            raise VlmprefError(f"--image-longest-edge must be positive, not {self.image_longest_edge}.")
        if self.pairs_per_forward != "auto" and (self.pairs_per_forward <= 0
                                                 or self.effective_batch % self.pairs_per_forward):
            raise VlmprefError(f"--pairs-per-forward must divide the effective batch {self.effective_batch} "
                               "(per-device batch x gradient accumulation), or be auto.")
