"""Pictures of predictions: Cityscapes colours, overlays, their colour key and boundary-error
maps."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from tuner.core.data.boundary import label_boundary
from tuner.core.data.labels import CLASS_NAMES, IGNORE_INDEX, PALETTE

# Overlays use the official palette except for the vehicles: car, truck, bus, train and
# motorcycle are near-identical blues there (CIEDE2000 11-12 between car and truck, and between
# bus and train), which a blend over a photo makes worse. Here every vehicle class is at least
# 18 from every other class's colour. `*_color.png` keeps the official palette.
OVERLAY_PALETTE = PALETTE.copy()
for _name, _rgb in {
    "car": (0, 0, 142),  # official
    "truck": (0, 220, 255),
    "bus": (140, 85, 0),
    "train": (0, 120, 100),
    "motorcycle": (150, 0, 255),
}.items():
    OVERLAY_PALETTE[CLASS_NAMES.index(_name)] = _rgb


def overlay(
    image: np.ndarray, train_ids: np.ndarray, alpha: float = 0.55, palette: np.ndarray = PALETTE
) -> np.ndarray:
    """Blend the label colours over the photo; ignored pixels show the photo only."""
    colors = palette[train_ids].astype(np.float32)
    mix = image.astype(np.float32) * (1 - alpha) + colors * alpha
    mix[train_ids == IGNORE_INDEX] = image[train_ids == IGNORE_INDEX]
    return mix.round().astype(np.uint8)


# The colour key ------------------------------------------------------------------------------
KEY_CLASSES = "classes"  # the PNG text field of a key that lists its classes, comma-separated


def classes_present(train_ids: np.ndarray) -> list[tuple[int, float]]:
    """(train id, share of the labelled pixels) of each class present, largest share first."""
    counts = np.bincount(train_ids.ravel(), minlength=256)[: len(CLASS_NAMES)]
    total = max(int(counts.sum()), 1)
    present = [(k, counts[k] / total) for k in np.flatnonzero(counts)]
    return sorted(present, key=lambda item: -item[1])


def colour_key(train_ids: np.ndarray) -> tuple[Image.Image, PngInfo]:
    """A legend of the classes present: each one's `_color.png` (official) swatch, its overlay
    swatch and its name with its share of the pixels. The class names also ride in the PNG's
    text field `classes`, for programs."""
    present = classes_present(train_ids)
    font = ImageFont.load_default()
    swatch, row, left = 14, 20, 8
    headers = ("color", "overlay", "class (share of pixels)")
    columns = (left, left + 44, left + 96)
    canvas = Image.new("RGB", (300, row * (len(present) + 1) + 8), "white")
    draw = ImageDraw.Draw(canvas)
    for x, text in zip(columns, headers):
        draw.text((x, 5), text, fill="black", font=font)
    for index, (k, share) in enumerate(present, start=1):
        y = 4 + index * row
        for x, palette in zip(columns, (PALETTE, OVERLAY_PALETTE)):
            box = [x, y, x + swatch, y + swatch]
            draw.rectangle(box, fill=tuple(int(c) for c in palette[k]), outline="black")
        draw.text((columns[2], y + 2), f"{CLASS_NAMES[k]} ({share:.1%})", fill="black", font=font)
    info = PngInfo()
    info.add_text(KEY_CLASSES, ", ".join(CLASS_NAMES[k] for k, _ in present))
    return canvas, info


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
