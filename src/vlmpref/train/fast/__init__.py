"""The fast DPO engine: shared-prefix packing, reference log-probs once, image-feature cache.

    from vlmpref.train.fast import FastDPOTrainer     # drop-in for trl.DPOTrainer
"""

__all__ = ["FAST_MODEL_TYPES", "FastDPOTrainer", "supports_model"]


def __getattr__(name: str):
    # loaded on first use: importing a light submodule (the loss names) must not load the trainer and TRL
    if name in ("FAST_MODEL_TYPES", "supports_model"):
        from vlmpref.train.fast import forward

        return getattr(forward, name)
    if name == "FastDPOTrainer":
        from vlmpref.train.fast.trainer import FastDPOTrainer

        return FastDPOTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
