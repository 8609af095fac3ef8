"""Content hashes: what a feature set's key is made of."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of names, shapes, dtypes and bytes: the weights a computation really used,
    whether they came from a checkpoint, a seeded initialisation or a resized table."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def key_digest(key: Mapping[str, Any]) -> str:
    """The folder name of a key: a hash of its canonical JSON."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
