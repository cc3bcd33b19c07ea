"""Stage 3 of the pipeline: DPO training of an adapter.

    from vlmpref.train import TrainConfig, train
    result = train(TrainConfig(model="runs/tiny", dataset="runs/shapes", split="train", max_steps=20,
                               output_dir="runs/dpo"))
    result.model                     # the trained PeftModel; the adapter is also in runs/dpo
"""

from vlmpref.train.config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    # the trainer (torch, transformers, TRL) loads on first use, so reading TrainConfig for `--help` stays quick
    if name in ("TrainResult", "train"):
        from vlmpref.train import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
