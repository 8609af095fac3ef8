"""Joint image/label transforms and the datasets that apply them.

Augmentation is a pure function of (seed, epoch, index): every trial of a study sees exactly
the same crops, flips and colours (common random numbers), which makes trial comparisons fairer
and lets a future frozen-prefix cache reuse activations across trials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tuner.data.labels import IGNORE_INDEX

# SAM's pixel statistics (segment_anything.modeling.Sam.pixel_mean / pixel_std), 0-255 scale.
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


@dataclass(frozen=True)
class Augment:
    crop: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    color_jitter: float = 0.2


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float on the 0-255 scale."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


def normalize(image: torch.Tensor) -> torch.Tensor:
    return (image - PIXEL_MEAN.to(image.device)) / PIXEL_STD.to(image.device)


def eval_pair(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return normalize(image_tensor(image)), torch.from_numpy(label.astype(np.int64))


def train_pair(
    image: np.ndarray, label: np.ndarray, aug: Augment, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, colour jitter, crop (padding labels with 255) and horizontal flip."""
    img = image_tensor(image).unsqueeze(0)
    lab = torch.from_numpy(label.astype(np.float32))[None, None]
    scale = rng.uniform(*aug.scale_range)
    size = (max(1, round(label.shape[0] * scale)), max(1, round(label.shape[1] * scale)))
    if size != tuple(label.shape):
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)
        lab = F.interpolate(lab, size=size, mode="nearest")
    img = _jitter(img[0], aug.color_jitter, rng)
    img = normalize(img)
    lab = lab[0, 0].long()

    ch, cw = aug.crop
    pad_h, pad_w = max(ch - size[0], 0), max(cw - size[1], 0)
    if pad_h or pad_w:
        img = F.pad(img, (0, pad_w, 0, pad_h), value=0.0)  # 0 after normalising = mean colour
        lab = F.pad(lab, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
    top = int(rng.integers(0, lab.shape[0] - ch + 1))
    left = int(rng.integers(0, lab.shape[1] - cw + 1))
    img = img[:, top : top + ch, left : left + cw]
    lab = lab[top : top + ch, left : left + cw]
    if aug.hflip and rng.random() < 0.5:
        img, lab = img.flip(-1), lab.flip(-1)
    return img.contiguous(), lab.contiguous()


def _jitter(img: torch.Tensor, strength: float, rng: np.random.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation, each by a factor in [1 - s, 1 + s]."""
    if strength <= 0:
        return img
    b, c, s = rng.uniform(1 - strength, 1 + strength, 3)
    img = img * b
    gray = img.mean(0, keepdim=True)
    img = (img - gray.mean()) * c + gray.mean()
    gray = img.mean(0, keepdim=True)
    img = gray + (img - gray) * s
    return img.clamp(0, 255)


class AugmentedSet(Dataset):
    """Training view of a dataset; call `set_epoch` before each epoch."""

    def __init__(self, dataset, aug: Augment, seed: int = 0) -> None:
        self.dataset, self.aug, self.seed, self.epoch = dataset, aug, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = self.dataset[index]
        return train_pair(image, label, self.aug, rng)


class EvalSet(Dataset):
    """Whole, unaugmented images with their labels and their index."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        img, lab = eval_pair(image, label)
        return img, lab, index
