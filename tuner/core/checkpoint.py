"""Fine-tuned checkpoints: one file with the weights, the config that built them and the
metrics they scored, written atomically and read with `weights_only=True`."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuner.core.config import TrainConfig
from tuner.core.errors import CheckpointError, ConfigError
from tuner.core.fsutil import atomic_write
from tuner.core.model import Segmenter, build_segmenter
from tuner.core.model.backbone import load_weights_file

FORMAT = "sam-tuner/1"
CHECKPOINT_NAME = "best.pt"
CONFIG_NAME = "config.json"


@dataclass
class Checkpoint:
    config: TrainConfig
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    epoch: int
    path: Path


def save_checkpoint(
    out_dir: Path,
    state_dict: dict[str, torch.Tensor],
    config: TrainConfig,
    metrics: dict[str, Any],
    epoch: int,
) -> Path:
    path = out_dir / CHECKPOINT_NAME
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "metrics": metrics,
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    atomic_write(
        out_dir / CONFIG_NAME,
        lambda tmp: tmp.write_text(
            json.dumps({"config": config.to_dict(), "epoch": epoch, "metrics": metrics}, indent=2)
        ),
    )
    return path


class BestCheckpoint:
    """Keeps the best epoch's checkpoint in `out_dir` while `fit` runs.

    A large model's file takes seconds to write (vit_b: 360 MB), and in a short trial most
    epochs improve on the last, so an improvement is written at once only when the previous
    write is `interval` seconds old; otherwise a copy of the weights waits in memory and is
    written on the next due improvement or by `flush()`, which `fit` calls when it ends,
    however it ends. A killed process loses at most `interval` seconds of improvements; the
    file on disk is always a whole, earlier best (atomic writes)."""

    def __init__(self, out_dir: Path | None, interval: float = 60.0) -> None:
        self.out_dir, self.interval = out_dir, interval
        self.path: Path | None = None
        self._pending: tuple | None = None
        self._last_write = -math.inf

    def offer(self, model: Segmenter, config: TrainConfig, metrics, epoch: int) -> None:
        if self.out_dir is None:
            return
        state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self._pending = (state, config, dict(metrics), epoch)
        if time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def flush(self) -> Path | None:
        if self._pending is not None:
            state, config, metrics, epoch = self._pending
            self.path = save_checkpoint(self.out_dir, state, config, metrics, epoch)
            self._pending, self._last_write = None, time.monotonic()
        return self.path


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    payload = load_weights_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = ""
        if isinstance(payload, dict) and "image_encoder.patch_embed.proj.weight" in payload:
            hint = " (this is an official SAM checkpoint: pass it to `tuner train --checkpoint`)"
        raise CheckpointError(f"{path}: not a sam-tuner checkpoint{hint}")
    try:
        config = TrainConfig.from_dict(payload["config"], source=str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return Checkpoint(config, payload["state_dict"], payload["metrics"], payload["epoch"], path)


def load_segmenter(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint) for a sam-tuner checkpoint."""
    ckpt = load_checkpoint(path)
    model = build_segmenter(ckpt.config, pretrained=False, initialise=False)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match its own config: {exc}") from None
    return model.to(device).eval(), ckpt
