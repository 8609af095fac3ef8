"""Fine-tuned checkpoints: one file with the weights, the config that built them and the
metrics they scored, written atomically and read with `weights_only=True`.

Two formats:
- `sam-tuner/2`, a *delta* (what training writes): only the tensors that differ from the base
  weights (head, trained blocks, adapters, resized position tables; see
  `tuner.core.model.base_weights`) and the base's identity. Loading rebuilds the base and
  refuses one whose sha256 differs. A frozen-encoder vit_b trial stores kilobytes, not 360 MB.
- `sam-tuner/1`, whole: every tensor (`tuner export` writes it; older checkpoints are this).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuner.core.config import TrainConfig
from tuner.core.environment import PARAMETER_DTYPES, seed_everything
from tuner.core.errors import CheckpointError, ConfigError
from tuner.core.fsutil import atomic_write
from tuner.core.model import Segmenter, build_segmenter
from tuner.core.model.backbone import load_weights_file
from tuner.core.model.base_weights import BaseWeights, delta_state, from_base

FORMAT = "sam-tuner/1"  # whole model
DELTA_FORMAT = "sam-tuner/2"  # tensors that differ from a named base
CHECKPOINT_NAME = "best.pt"
CONFIG_NAME = "config.json"


@dataclass
class Checkpoint:
    config: TrainConfig
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    epoch: int
    path: Path
    base: BaseWeights | None = None  # set for a delta: `state_dict` holds only the delta

    @property
    def is_delta(self) -> bool:
        return self.base is not None


def save_checkpoint(
    out_dir: Path,
    state_dict: dict[str, torch.Tensor],
    config: TrainConfig,
    metrics: dict[str, Any],
    epoch: int,
    base: BaseWeights | None = None,
    name: str = CHECKPOINT_NAME,
    config_json: bool = True,
) -> Path:
    """Write `state_dict` (a delta against `base`, or with `base` None the whole model) and,
    with `config_json`, config.json beside it."""
    path = out_dir / name
    payload = {
        "format": DELTA_FORMAT if base is not None else FORMAT,
        "config": config.to_dict(),
        "metrics": metrics,
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    if base is not None:
        payload["base"] = base.to_dict()
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    if not config_json:
        return path
    atomic_write(
        out_dir / CONFIG_NAME,
        lambda tmp: tmp.write_text(
            json.dumps({"config": config.to_dict(), "epoch": epoch, "metrics": metrics}, indent=2)
        ),
    )
    return path


class BestCheckpoint:
    """Keeps the best epoch's checkpoint (a delta) in `out_dir` while `fit` runs.

    A large delta (a fully fine-tuned vit_b: 360 MB) takes seconds to write, and in a short
    trial most epochs improve on the last, so an improvement is written at once only when the
    previous write is `interval` seconds old; otherwise a copy of the delta waits in memory and
    is written on the next due improvement or by `flush()`, which `fit` calls when it ends,
    however it ends. A killed process loses at most `interval` seconds of improvements; the
    file on disk is always a whole, earlier best (atomic writes)."""

    def __init__(self, out_dir: Path | None, interval: float = 60.0) -> None:
        self.out_dir, self.interval = out_dir, interval
        self.path: Path | None = None
        self._pending: tuple | None = None
        self._last_write = -math.inf
        self._base: BaseWeights | None = None

    def offer(self, model: Segmenter, config: TrainConfig, metrics, epoch: int) -> None:
        if self.out_dir is None:
            return
        if self._base is None:
            self._base = BaseWeights.of(config)
        delta = delta_state(model, config.model)
        state = {k: v.detach().to("cpu", copy=True) for k, v in delta.items()}
        self._pending = (state, config, dict(metrics), epoch)
        if time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def flush(self) -> Path | None:
        if self._pending is not None:
            state, config, metrics, epoch = self._pending
            self.path = save_checkpoint(self.out_dir, state, config, metrics, epoch, self._base)
            self._pending, self._last_write = None, time.monotonic()
        return self.path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    payload = load_weights_file(path)
    if not isinstance(payload, dict) or payload.get("format") not in (FORMAT, DELTA_FORMAT):
        hint = ""
        if isinstance(payload, dict) and "image_encoder.patch_embed.proj.weight" in payload:
            hint = " (this is an official SAM checkpoint: pass it to `tuner train --checkpoint`)"
        raise CheckpointError(f"{path}: not a sam-tuner checkpoint{hint}")
    try:
        config = TrainConfig.from_dict(payload["config"], source=str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    base = None
    if payload["format"] == DELTA_FORMAT:
        try:
            base = BaseWeights.from_dict(payload["base"])
        except (KeyError, TypeError):
            raise CheckpointError(f"{path}: a delta checkpoint without a valid 'base'") from None
    return Checkpoint(
        config, payload["state_dict"], payload["metrics"], payload["epoch"], path, base
    )


def load_segmenter(
    path: str | Path,
    device: str | torch.device = "cpu",
    base: str | Path | None = None,
    dtype: torch.dtype | None = None,
):
    """(model in eval mode, checkpoint) for a sam-tuner checkpoint, whole or delta. A delta is
    applied to its base, rebuilt from the recorded file (or `base`, where the file has moved)
    and refused when its sha256 is not the recorded one. The model is in the checkpoint's
    `dtype` field's dtype unless `dtype` says otherwise."""
    ckpt = load_checkpoint(path)
    dtype = dtype or PARAMETER_DTYPES[ckpt.config.dtype]
    if ckpt.is_delta:
        model = _rebuild_base(ckpt, base)
        shared = from_base(model, ckpt.config.model)
    else:
        model = build_segmenter(ckpt.config, pretrained=False, initialise=False)
        shared = set()
    model = model.to(dtype)  # before loading: float64 weights are not rounded through float32
    try:
        missing, unexpected = model.load_state_dict(ckpt.state_dict, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match its own config: {exc}") from None
    if unexpected or set(missing) != shared:
        extra = sorted(set(missing) - shared)[:3] or unexpected[:3]
        raise CheckpointError(f"{path}: weights do not match its own config (e.g. {extra})")
    return model.to(device).eval(), ckpt


def _rebuild_base(ckpt: Checkpoint, base_file: str | Path | None) -> Segmenter:
    recorded = ckpt.base
    config = ckpt.config
    if base_file is not None:
        config = config.replace(sam_checkpoint=str(base_file))
    elif recorded.path is not None and config.sam_checkpoint:
        config = config.replace(sam_checkpoint=recorded.path)
    if config.sam_checkpoint and not Path(config.sam_checkpoint).is_file():
        raise CheckpointError(
            f"{ckpt.path}: its base weights {config.sam_checkpoint} are not there; write a "
            f"standalone file with `tuner export --base FILE` (sha256 {recorded.sha256})"
        )
    found = BaseWeights.of(config)
    if found.sha256 != recorded.sha256:
        raise CheckpointError(
            f"{ckpt.path}: trained from base sha256 {recorded.sha256}, but {found.describe()}; "
            "give the base it was trained from to `tuner export --base FILE`"
        )
    seed_everything(config.seed)  # the seeded initialisation `fit` built
    return build_segmenter(config)


def export_checkpoint(path: str | Path, out: Path, base: str | Path | None = None) -> Path:
    """A standalone whole-model checkpoint (`sam-tuner/1`) of any checkpoint: what to ship
    where the base weights are not."""
    model, ckpt = load_segmenter(path, "cpu", base=base)
    state = model.state_dict()
    config = ckpt.config if base is None else ckpt.config.replace(sam_checkpoint=str(base))
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(
        out.parent, state, config, ckpt.metrics, ckpt.epoch, name=out.name, config_json=False
    )
