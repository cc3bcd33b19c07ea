"""Common GPUs: memory and dense bf16 tensor throughput, for `vlmpref estimate`.

    from vlmpref.plan.gpus import find_gpu, local_gpu
    find_gpu("rtx-4070")          # Gpu(name='RTX 4070 12GB', memory_gib=12.0, bf16_tflops=58.3, ...)
    find_gpu("24gb")              # a generic 24 GiB card
    local_gpu()                   # this machine's first CUDA GPU, or None

Memory is what the driver reports (nvidia-smi MiB / 1024). Throughput is the vendor's dense (not sparse) bf16
tensor-core peak with fp32 accumulation, the mode PyTorch uses; GeForce cards run it at half their fp16-accumulate
rate. Bandwidth is the memory bandwidth in GB/s. No card reaches either peak in training: `estimate` applies
efficiency factors measured on an H200 (benchmarks/ESTIMATE_VS_MEASURED.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass

from vlmpref.errors import VlmprefError


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float
    bandwidth_gbs: float
    note: str = ""


# key: (name, memory GiB, dense bf16 TFLOP/s with fp32 accumulation, memory bandwidth GB/s, note)
_TABLE = [
    # ---- 6 GB
    ("rtx-3050-6gb", "RTX 3050 6GB", 6.0, 13.5, 168, ""),
    ("rtx-3060-laptop", "RTX 3060 Laptop 6GB", 6.0, 25.0, 336, "laptop clocks vary with power limit"),
    ("rtx-4050-laptop", "RTX 4050 Laptop 6GB", 6.0, 24.0, 192, "laptop clocks vary with power limit"),
    # ---- 8 GB
    ("rtx-3060-ti", "RTX 3060 Ti 8GB", 8.0, 32.4, 448, ""),
    ("rtx-3070", "RTX 3070 8GB", 8.0, 40.6, 448, ""),
    ("rtx-4060", "RTX 4060 8GB", 8.0, 30.2, 272, ""),
    ("rtx-4060-ti-8gb", "RTX 4060 Ti 8GB", 8.0, 44.1, 288, ""),
    ("rtx-4070-laptop", "RTX 4070 Laptop 8GB", 8.0, 30.0, 256, "laptop clocks vary with power limit"),
    # ---- 10-12 GB
    ("rtx-3080", "RTX 3080 10GB", 10.0, 59.5, 760, ""),
    ("rtx-3060", "RTX 3060 12GB", 12.0, 25.6, 360, ""),
    ("rtx-3080-12gb", "RTX 3080 12GB", 12.0, 61.0, 912, ""),
    ("rtx-4070", "RTX 4070 12GB", 12.0, 58.3, 504, ""),
    ("rtx-4070-super", "RTX 4070 SUPER 12GB", 12.0, 71.0, 504, ""),
    ("rtx-4070-ti", "RTX 4070 Ti 12GB", 12.0, 80.2, 504, ""),
    # ---- 16 GB
    ("rtx-4060-ti-16gb", "RTX 4060 Ti 16GB", 16.0, 44.1, 288, ""),
    ("rtx-4070-ti-super", "RTX 4070 Ti SUPER 16GB", 16.0, 88.2, 672, ""),
    ("rtx-4080", "RTX 4080 16GB", 16.0, 97.5, 717, ""),
    ("rtx-4080-super", "RTX 4080 SUPER 16GB", 16.0, 104.4, 736, ""),
    ("t4", "Tesla T4 16GB", 15.0, 65.0, 320, "no native bf16: the figure is its fp16 rate"),
    # ---- 24-32 GB
    ("rtx-3090", "RTX 3090 24GB", 24.0, 71.0, 936, ""),
    ("rtx-3090-ti", "RTX 3090 Ti 24GB", 24.0, 80.0, 1008, ""),
    ("rtx-4090", "RTX 4090 24GB", 24.0, 165.2, 1008, ""),
    ("rtx-5090", "RTX 5090 32GB", 31.5, 209.5, 1792, ""),
    ("l4", "NVIDIA L4 24GB", 22.5, 121.0, 300, ""),
    ("a10", "NVIDIA A10 24GB", 22.5, 125.0, 600, ""),
    # ---- 40-48 GB
    ("a100-40gb", "A100 40GB", 40.0, 312.0, 1555, ""),
    ("rtx-a6000", "RTX A6000 48GB", 48.0, 154.8, 768, ""),
    ("l40s", "NVIDIA L40S 48GB", 44.5, 362.0, 864, ""),
    # ---- 80 GB and up
    ("a100-80gb", "A100 80GB", 80.0, 312.0, 2039, ""),
    ("h100", "H100 SXM 80GB", 79.6, 989.0, 3350, ""),
    ("h100-pcie", "H100 PCIe 80GB", 79.6, 756.0, 2000, ""),
    ("h200", "H200 141GB", 140.4, 989.0, 4800, ""),
]

GPUS: dict[str, Gpu] = {key: Gpu(name, mem, tflops, bw, note) for key, name, mem, tflops, bw, note in _TABLE}
# Spellings people use
ALIASES = {"3060": "rtx-3060", "4060": "rtx-4060", "4070": "rtx-4070", "4080": "rtx-4080", "3090": "rtx-3090",
           "4090": "rtx-4090", "5090": "rtx-5090", "a100": "a100-80gb", "h100-sxm": "h100"}


def _key(text: str) -> str:
    text = re.sub(r"^(nvidia|geforce|tesla)[\s_-]+", "", text.strip().lower())
    return re.sub(r"[\s_]+", "-", text)


def generic_gpu(memory_gib: float, name: str | None = None) -> Gpu:
    """A card known only by its memory (and maybe its name); throughput is a mid-range consumer card's (RTX 4070)."""
    return Gpu(name or f"{memory_gib:g} GiB GPU", float(memory_gib), 50.0, 500.0,
               "throughput assumed; name a card from `vlmpref estimate --list-gpus` for a better time estimate")


def local_gpu() -> Gpu | None:
    """This machine's first CUDA GPU, matched to the table by name when possible."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    memory = props.total_memory / 2**30
    name = props.name.lower()
    # a table card matches when its model words (those with digits, "4070", "a100", "pcie") are in the name
    for gpu in sorted(GPUS.values(), key=lambda g: -len(g.name)):
        words = [w for w in gpu.name.lower().split() if any(c.isdigit() for c in w) and not w.endswith("gb")]
        words += [w for w in ("pcie", "laptop", "ti", "super") if w in gpu.name.lower().split()]
        if words and all(w in name for w in words) and abs(gpu.memory_gib - memory) < 2:
            return dataclasses.replace(gpu, memory_gib=round(memory, 1))
    return generic_gpu(round(memory, 1), name=props.name)


def find_gpu(name: str) -> Gpu:
    """A card from the table by key, alias or name (`rtx-4070`, `4070`, `RTX 4070`), or `24gb` for a generic one."""
    key = _key(name)
    key = ALIASES.get(key, key)
    if key.startswith("rtx") and not key.startswith("rtx-"):
        key = "rtx-" + key[3:]
    if key in GPUS:
        return GPUS[key]
    by_name = {_key(g.name): k for k, g in GPUS.items()}
    if key in by_name:
        return GPUS[by_name[key]]
    size = re.fullmatch(r"(\d+(?:\.\d+)?)\s*-?(gb|gib)", key)
    if size:
        if float(size.group(1)) <= 0:
            raise VlmprefError(f"GPU memory must be positive, not '{name}'; give the card's memory, such as 12gb.")
        return generic_gpu(float(size.group(1)))
    near = difflib.get_close_matches(key, list(GPUS) + list(by_name), n=1, cutoff=0.5)
    hint = f"did you mean {by_name.get(near[0], near[0])}? " if near else ""
    raise VlmprefError(f"Unknown GPU '{name}'; {hint}name one from `vlmpref estimate --list-gpus`, or give its "
                       "memory such as 12gb.")
