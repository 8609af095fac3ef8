"""What a fine-tuned segmenter shares with the weights it started from, so a checkpoint can
hold only the rest (a *delta*) and name its base.

A frozen encoder block is, tensor for tensor, the base it was loaded from: an official
`sam_vit_*.pth`, the shipped `sam_tiny` stand-in, or a seeded random initialisation. Storing it
again in every trial is what made a 100-trial vit_h study write 250 GB. A delta holds
everything else: the head, the blocks that trained, adapters, buffers, and position tables
resized for the crop (their shape is no longer the base's).

The base is identified by its model name, the sha256 of its file (or of its tensors, for a
seeded initialisation) and the path it was loaded from; loading a delta against another base is
refused (`tuner.core.checkpoint`).

    >>> from tuner.core.config import TrainConfig
    >>> from tuner.core.model import build_segmenter
    >>> config = TrainConfig(model="sam_tiny", head="linear", freeze_depth=6, image_size=(256, 256))
    >>> model = build_segmenter(config)
    >>> sorted({name.split(".")[0] for name in delta_state(model, "sam_tiny")})  # encoder: base's
    ['head']
    >>> BaseWeights.of(config).model
    'sam_tiny'
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tuner.core.cache import fingerprint_tensors
from tuner.core.model.segmenter import Segmenter
from tuner.core.registry import ENCODERS

# An adapter keeps the module it wraps under `<module>.base.` (LoRA's Linear, AdaptFormer's
# MLP): without that, the base's own name.
_WRAPPED = re.compile(r"\.base(?=\.)")


@dataclass(frozen=True)
class BaseWeights:
    """The weights a run started from."""

    model: str
    sha256: str
    path: str | None  # the weights file; None for a seeded random initialisation
    seed: int | None = None  # the initialisation's seed, when there is no file

    @classmethod
    def of(cls, config) -> BaseWeights:
        """The base a TrainConfig builds from (`build_segmenter`'s choice of source)."""
        source = config.sam_checkpoint or ENCODERS[config.model].weights
        if source:
            path = Path(source).resolve()
            return cls(config.model, file_sha256(path), str(path))
        return cls(config.model, seeded_sha256(config.model, config.seed), None, config.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> BaseWeights:
        return cls(**values)

    def describe(self) -> str:
        where = self.path or f"seeded initialisation (seed {self.seed})"
        return f"{self.model} from {where}, sha256 {self.sha256}"


def file_sha256(path: Path) -> str:
    """sha256 of a weights file, remembered per (path, size, mtime) in this process: vit_h's
    2.5 GB take seconds to hash, and every trial of a study saves against the same file."""
    stat = os.stat(path)
    return _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def seeded_sha256(model: str, seed: int) -> str:
    """sha256 of the tensors of `model`'s random initialisation under `seed` (as `fit` seeds
    before building)."""
    from tuner.core.model.backbone import build_sam

    devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):  # every generator restored afterwards
        torch.manual_seed(seed)
        return fingerprint_tensors(build_sam(model).state_dict())


@functools.lru_cache(maxsize=8)
def base_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the base's encoder tensors under the segmenter's names (built on the meta
    device: nothing is allocated)."""
    from tuner.core.model.backbone import _build_sam_modules

    with torch.device("meta"):
        sam = _build_sam_modules(model)
    return {
        f"encoder.{name}": tuple(tensor.shape)
        for name, tensor in sam.image_encoder.state_dict().items()
    }


def from_base(
    model: Segmenter, model_name: str, state: dict[str, torch.Tensor] | None = None
) -> set[str]:
    """State-dict keys of `model` (whose `state` a caller may already hold) whose tensors are
    the base's, untouched: frozen encoder parameters with the base's name and shape."""
    shapes = base_shapes(model_name)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return {
        name
        for name, tensor in (state if state is not None else model.state_dict()).items()
        if name in frozen and shapes.get(_WRAPPED.sub("", name)) == tuple(tensor.shape)
    }


def delta_state(model: Segmenter, model_name: str) -> dict[str, torch.Tensor]:
    """The state-dict entries a checkpoint must hold: all but `from_base`'s."""
    state = model.state_dict()
    shared = from_base(model, model_name, state)
    return {name: t for name, t in state.items() if name not in shared}
