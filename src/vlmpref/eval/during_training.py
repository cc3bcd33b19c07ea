"""Held-out preference metrics during training, written to the run folder and TensorBoard.

    vlmpref train ... --eval-split "test[:1%]" --eval-steps 20      # the CLI adds HeldOutEvalCallback

At every evaluation the trainer's own eval metrics (TRL: eval_loss, eval_rewards/accuracies,
eval_rewards/margins, ...) and vlmpref's held-out preference metrics with 95% intervals (the ones
`vlmpref eval` reports: per-token and summed log-prob preference, DPO reward accuracy and margin against
the adapter-off reference) go to one line of `OUTPUT_DIR/eval_log.jsonl`, and the latter to TensorBoard
under `OUTPUT_DIR/runs/heldout` as `heldout/<metric>`.

`log_heldout` is a plain function, so an engine that is not a transformers Trainer calls it directly;
`HeldOutEvalCallback` calls it from a Trainer's `on_evaluate`.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

from vlmpref.eval.preference import preference_metrics, score_pairs

EVAL_LOG = "eval_log.jsonl"


def heldout_metrics(model, processor, rows, beta: float = 0.1, batch_size: int = 8) -> dict:
    """Preference metrics of `model` on held-out pairs; with a PEFT adapter, against the adapter-off reference."""
    from peft import PeftModel

    rows = list(rows)
    policy = score_pairs(model, processor, rows, batch_size=batch_size, desc="Held-out pairs")
    reference = None
    if isinstance(model, PeftModel):
        reference = score_pairs(model, processor, rows, batch_size=batch_size, disable_adapter=True,
                                desc="Held-out pairs (adapter off)")
    return preference_metrics(policy, reference, beta=beta)


def log_heldout(model, processor, rows, output_dir: str | Path, step: int, epoch: float | None = None,
                beta: float = 0.1, batch_size: int = 8, trainer_metrics: dict | None = None,
                tensorboard: bool = True) -> dict:
    """Compute the held-out metrics, append them (with the trainer's) to eval_log.jsonl, and log to TensorBoard."""
    metrics = heldout_metrics(model, processor, rows, beta=beta, batch_size=batch_size)
    record = {"step": step, "epoch": epoch, "trainer": dict(trainer_metrics or {}), "heldout": metrics}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / EVAL_LOG).open("a") as f:
        f.write(json.dumps(record) + "\n")
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(out / "runs" / "heldout"))
        for name, metric in metrics.items():
            if metric.get("value") is not None:
                writer.add_scalar(f"heldout/{name}", metric["value"], step)
        writer.close()
    return record


def read_eval_log(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / EVAL_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class HeldOutEvalCallback(TrainerCallback):
    """Run `log_heldout` at every Trainer evaluation, on the trainer's eval dataset unless `rows` are given."""

    def __init__(self, rows=None, batch_size: int | None = None):
        self.rows = rows
        self.batch_size = batch_size

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None,
                    eval_dataloader=None, **kwargs):
        rows = self.rows if self.rows is not None else getattr(eval_dataloader, "dataset", None)
        if rows is None or model is None or processing_class is None:
            return
        if not state.is_world_process_zero:  # a data-parallel run scores the held-out set once, in the main process
            return
        log_heldout(model, processing_class, rows, args.output_dir, state.global_step, state.epoch,
                    beta=getattr(args, "beta", 0.1), batch_size=self.batch_size or args.per_device_eval_batch_size,
                    trainer_metrics=metrics, tensorboard="tensorboard" in (args.report_to or []))
