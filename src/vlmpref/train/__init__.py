"""Stage 3 of the pipeline: DPO training of an adapter.

    from vlmpref.train import TrainConfig, train
    result = train(TrainConfig(model="runs/tiny", dataset="runs/shapes", split="train", max_steps=20,
                               output_dir="runs/dpo"))
    result.model                     # the trained PeftModel; the adapter is also in runs/dpo
"""

from vlmpref.train.config import TrainConfig
from vlmpref.train.run import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
