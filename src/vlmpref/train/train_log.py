"""OUTPUT_DIR/train_log.jsonl: every training and evaluation log of a run, one JSON line each, as it happens.

Whatever `--report-to` says, `vlmpref train` appends each log to this file the moment the trainer logs it, so
a run can be watched while it trains (`vlmpref ui` draws its curves from it) and read back after a crash.

    {"step": 10, "epoch": 0.5, "loss": 0.69, "rewards/margins": 0.01, "rewards/accuracies": 0.5, ...}
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback

TRAIN_LOG = "train_log.jsonl"


class JsonlLog(TrainerCallback):
    """Append each log (training and evaluation metrics) to `path` as one JSON line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        record = {"step": state.global_step, "epoch": state.epoch,
                  **{k: v for k, v in logs.items() if isinstance(v, (int, float, str, bool))}}
        with self.path.open("a") as f:  # opened per line, so each line reaches the file when it is logged
            f.write(json.dumps(record) + "\n")


def read_train_log(output_dir: str | Path) -> list[dict]:
    """A run's logs in step order: from train_log.jsonl, else from train_summary.json's log history.

    A resumed run logs again the steps after its checkpoint; the later line of a step wins. Training,
    evaluation and end-of-run lines of one step are kept apart.
    """
    folder = Path(output_dir)
    path = folder / TRAIN_LOG
    records: list[dict] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
    elif (folder / "train_summary.json").is_file():
        records = json.loads((folder / "train_summary.json").read_text()).get("log_history", [])
    by_step: dict[tuple, dict] = {}
    for record in records:
        kind = ("eval" if any(k.startswith("eval_") for k in record) else
                "end" if "train_runtime" in record else "train")
        by_step[record.get("step", 0), kind] = record
    return [by_step[key] for key in sorted(by_step, key=lambda key: key[0])]
