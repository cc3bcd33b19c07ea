"""Let torchvision's pure-Python parts import when its C++ ops cannot load.

PyPI serves torchvision built against CUDA torch. On a CPU build of torch its ops library does not load, and
torchvision then fails on import at an unguarded fake registration of `torchvision::nms` / `qnms`
(pytorch/vision#9085), which breaks every transformers import that reaches it. vlmpref needs only torchvision's
image transforms (transformers' video processors, which the Qwen2-VL, Qwen3-VL and InternVL processors hold), so
it declares the two ops' schemas when, and only when, the ops library fails to load.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_LIBRARY = None  # the declared schemas live as long as this reference


class _BeforeTorchvision:
    """An import hook that declares the ops just before torchvision is first imported (or looked up).

    Declaring them needs torch; doing it at `import vlmpref` would cost every `vlmpref --help` torch's import.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            declare_missing_ops()
        return None  # the ordinary finders import it


def declare_missing_ops_on_import() -> None:
    """Run `declare_missing_ops` when torchvision is first imported; at once if it already was."""
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())


def declare_missing_ops() -> bool:
    """Declare torchvision::nms and ::qnms if torchvision is installed, not yet imported, and its ops cannot load.
    Returns True when it declared them."""
    global _LIBRARY
    if _LIBRARY is not None or "torchvision" in sys.modules:
        return False
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    libraries = [p for folder in spec.submodule_search_locations for p in Path(folder).glob("_C*.so")]
    if not libraries:
        return False
    import torch

    try:
        torch.ops.load_library(str(libraries[0]))  # torchvision's own import then finds it loaded
        return False
    except (OSError, RuntimeError):
        pass
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _LIBRARY.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True
