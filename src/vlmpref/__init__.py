"""vlmpref: preference-tune (DPO) small vision-language models on one GPU, and prove the gain.

Python API (the CLI is a thin layer over the same functions and config dataclasses):

    from vlmpref.data import load_preference_data
    from vlmpref.models import load_model, load_processor
    from vlmpref.train import TrainConfig, train
    from vlmpref.generate import generate_batch, user_prompt

Stages import only from earlier stages: data -> models -> train -> generate -> eval -> report.
"""

__version__ = "0.1.0"

from vlmpref._torchvision import declare_missing_ops_on_import

declare_missing_ops_on_import()  # before anything imports torchvision (see the module), without importing torch now
