"""Pictures of predictions: Cityscapes colours, overlays and boundary-error maps."""

from __future__ import annotations

import numpy as np
import torch

from tuner.core.data.boundary import label_boundary
from tuner.core.data.labels import IGNORE_INDEX, decode_target


def overlay(image: np.ndarray, train_ids: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the label colours over the photo; ignored pixels show the photo only."""
    colors = decode_target(train_ids).astype(np.float32)
    mix = image.astype(np.float32) * (1 - alpha) + colors * alpha
    mix[train_ids == IGNORE_INDEX] = image[train_ids == IGNORE_INDEX]
    return mix.round().astype(np.uint8)


def error_map(image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Dimmed photo; wrong pixels red, and wrong pixels on a true class boundary yellow, so
    blurry edges stand out from whole-object confusions."""
    out = (image.astype(np.float32) * 0.35).astype(np.uint8)
    valid = truth != IGNORE_INDEX
    wrong = (pred != truth) & valid
    edge = label_boundary(torch.from_numpy(truth.astype(np.int64))[None], radius=2)[0].numpy()
    out[wrong] = (220, 40, 40)
    out[wrong & edge] = (255, 220, 0)
    return out
