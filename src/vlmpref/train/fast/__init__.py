"""The fast DPO engine: shared-prefix packing, reference log-probs once, image-feature cache.

    from vlmpref.train.fast import FastDPOTrainer     # drop-in for trl.DPOTrainer
"""

from vlmpref.train.fast.forward import FAST_MODEL_TYPES, supports_model
from vlmpref.train.fast.trainer import FastDPOTrainer

__all__ = ["FAST_MODEL_TYPES", "FastDPOTrainer", "supports_model"]
