"""What the fast engine computes once and reuses: reference log-probs and image features.

Reference log-probs are two floats per pair, written to the run folder so a resumed run reuses them.
Image features (what the frozen vision tower + connector give the language model) are kept in memory up to
a byte budget, least recently used first out, and spilled to disk; keys are the image content and the
model/processor that produced them, so a changed model or resolution never reuses stale features.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def images_key(images) -> str:
    """Content hash of a pair's images (mode, size and pixels)."""
    digest = hashlib.sha1()
    for image in images:
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


def model_fingerprint(model, processor, extra: str = "") -> str:
    """What decides the image features: the weights' origin and quantization, and the image preprocessing."""
    config = model.config
    quant = getattr(config, "quantization_config", None)
    image_processor = getattr(processor, "image_processor", None)
    parts = [getattr(config, "_name_or_path", ""), type(model).__name__, str(quant.to_dict() if quant else None),
             str(model.get_input_embeddings().weight.dtype),
             json.dumps(image_processor.to_dict() if image_processor is not None else {}, sort_keys=True, default=str),
             str(getattr(processor, "image_seq_len", "")), extra]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]


class ImageFeatureCache:
    """Image features by content key: in memory up to `max_memory_bytes`, the rest on disk under `folder`."""

    def __init__(self, folder: str | Path | None, namespace: str, max_memory_bytes: int = 2 * 2**30):
        self.folder = Path(folder) / namespace if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.max_memory_bytes = max_memory_bytes
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.spilled = 0

    def __contains__(self, key: str) -> bool:
        return key in self._memory or (self.folder is not None and (self.folder / f"{key}.safetensors").is_file())

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.folder is not None:
            path = self.folder / f"{key}.safetensors"
            if path.is_file():
                self.hits += 1
                features = load_file(path)["features"]
                self._remember(key, features)
                return features
        self.misses += 1
        return None

    def put(self, key: str, features: torch.Tensor) -> None:
        self._remember(key, features.detach().to("cpu").contiguous())

    def _remember(self, key: str, features: torch.Tensor) -> None:
        if key in self._memory:
            return
        self._memory[key] = features
        self._bytes += features.numel() * features.element_size()
        while self._bytes > self.max_memory_bytes and len(self._memory) > 1:
            old_key, old = self._memory.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
            if self.folder is not None:
                path = self.folder / f"{old_key}.safetensors"
                if not path.is_file():
                    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # processes of a data-parallel run share the folder
                    save_file({"features": old}, str(tmp))
                    tmp.rename(path)  # atomic: a half-written file is never read
                    self.spilled += 1

    @property
    def memory_bytes(self) -> int:
        return self._bytes


class ReferenceLogps:
    """Reference (adapter off) summed log-probs of chosen and rejected, per pair id, saved with the run."""

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint
        self.chosen: dict[int, float] = {}
        self.rejected: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self.chosen)

    def add(self, pair_ids, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        for i, c, r in zip(pair_ids, chosen.tolist(), rejected.tolist()):
            self.chosen[int(i)], self.rejected[int(i)] = c, r

    def lookup(self, pair_ids) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.tensor([self.chosen[i] for i in pair_ids], dtype=torch.float64),
                torch.tensor([self.rejected[i] for i in pair_ids], dtype=torch.float64))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"fingerprint": self.fingerprint, "chosen": self.chosen, "rejected": self.rejected}))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str) -> "ReferenceLogps | None":
        """The saved values if they were computed for the same data and model, else None."""
        path = Path(path)
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if data.get("fingerprint") != fingerprint:
            return None
        out = cls(fingerprint)
        out.chosen = {int(k): v for k, v in data["chosen"].items()}
        out.rejected = {int(k): v for k, v in data["rejected"].items()}
        return out
