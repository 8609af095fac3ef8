"""Fine-tuned checkpoints: one file with the weights, the config that built them and the
metrics they scored, written atomically and read with `weights_only=True`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuner.config import TrainConfig
from tuner.errors import CheckpointError, ConfigError
from tuner.fsutil import atomic_write
from tuner.model import Segmenter, build_segmenter
from tuner.model.backbone import load_weights_file

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
    out_dir: Path, model: Segmenter, config: TrainConfig, metrics: dict[str, Any], epoch: int
) -> Path:
    path = out_dir / CHECKPOINT_NAME
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "metrics": metrics,
        "epoch": epoch,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    atomic_write(
        out_dir / CONFIG_NAME,
        lambda tmp: tmp.write_text(
            json.dumps({"config": config.to_dict(), "epoch": epoch, "metrics": metrics}, indent=2)
        ),
    )
    return path


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
    model = build_segmenter(ckpt.config, pretrained=False)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match its own config: {exc}") from None
    return model.to(device).eval(), ckpt
