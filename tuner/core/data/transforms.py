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

from tuner.core.data.labels import IGNORE_INDEX

# SAM's pixel statistics (segment_anything.modeling.Sam.pixel_mean / pixel_std), 0-255 scale.
PIXEL_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
PIXEL_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


@dataclass(frozen=True)
class Augment:
    crop: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    color_jitter: float = 0.2

    @classmethod
    def of(cls, config) -> Augment:
        """The augmentation a TrainConfig asks for."""
        return cls(
            tuple(config.image_size), tuple(config.scale_range), config.hflip, config.color_jitter
        )


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float on the 0-255 scale."""
    # The conversion copies, so a read-only array (a decoded file) is fine and torch never
    # sees a non-writable buffer.
    return torch.from_numpy(np.asarray(image, dtype=np.float32, order="C")).permute(2, 0, 1)


def normalize(image: torch.Tensor) -> torch.Tensor:
    return (image - PIXEL_MEAN.to(image.device)) / PIXEL_STD.to(image.device)


def eval_pair(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return normalize(image_tensor(image)), torch.from_numpy(label.astype(np.int64))


@dataclass(frozen=True)
class View:
    """The random choices of one augmented view: drawn once, applied to image and label alike
    (so a label can be cropped without touching its image, e.g. when the image's features
    come from the frozen-prefix cache)."""

    size: tuple[int, int]  # (H, W) after scaling
    jitter: tuple[float, float, float] | None  # brightness, contrast, saturation factors
    top: int
    left: int
    flip: bool


def draw_view(shape: tuple[int, int], aug: Augment, rng: np.random.Generator) -> View:
    """Random scale, colour jitter, crop position and flip, in that order of draws."""
    scale = rng.uniform(*aug.scale_range)
    size = (max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale)))
    jitter = None
    if aug.color_jitter > 0:
        s = aug.color_jitter
        jitter = tuple(float(f) for f in rng.uniform(1 - s, 1 + s, 3))
    ch, cw = aug.crop
    top = int(rng.integers(0, max(size[0], ch) - ch + 1))
    left = int(rng.integers(0, max(size[1], cw) - cw + 1))
    flip = bool(aug.hflip and rng.random() < 0.5)
    return View(size, jitter, top, left, flip)  # type: ignore[arg-type]


def view_image(image: np.ndarray, view: View, crop: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> the view's (3, crop) normalised tensor (mean colour where padded)."""
    img = image_tensor(image).unsqueeze(0)
    if view.size != tuple(image.shape[:2]):
        img = F.interpolate(
            img, size=view.size, mode="bilinear", align_corners=False, antialias=True
        )
    img = normalize(_jitter(img[0], view.jitter))
    return _crop_and_flip(img, view, crop, fill=0.0)  # 0 after normalising = mean colour


def view_label(label: np.ndarray, view: View, crop: tuple[int, int]) -> torch.Tensor:
    """(H, W) train ids -> the view's (crop) int64 labels (255 where padded)."""
    lab = torch.from_numpy(label.astype(np.float32))[None, None]
    if view.size != tuple(label.shape):
        lab = F.interpolate(lab, size=view.size, mode="nearest")
    return _crop_and_flip(lab[0, 0].long(), view, crop, fill=IGNORE_INDEX)


def _crop_and_flip(x: torch.Tensor, view: View, crop: tuple[int, int], fill) -> torch.Tensor:
    ch, cw = crop
    pad_h, pad_w = max(ch - x.shape[-2], 0), max(cw - x.shape[-1], 0)
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), value=fill)
    x = x[..., view.top : view.top + ch, view.left : view.left + cw]
    return (x.flip(-1) if view.flip else x).contiguous()


def train_pair(
    image: np.ndarray, label: np.ndarray, aug: Augment, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale, colour jitter, crop (padding labels with 255) and horizontal flip."""
    view = draw_view(label.shape, aug, rng)
    return view_image(image, view, aug.crop), view_label(label, view, aug.crop)


def _jitter(img: torch.Tensor, factors: tuple[float, float, float] | None) -> torch.Tensor:
    """Brightness, contrast and saturation, each scaled by its factor."""
    if factors is None:
        return img
    b, c, s = factors
    img = img * b
    gray = img.mean(0, keepdim=True)
    img = (img - gray.mean()) * c + gray.mean()
    gray = img.mean(0, keepdim=True)
    img = gray + (img - gray) * s
    return img.clamp(0, 255)


def view_number(epoch: int, aug_views: int | None) -> int:
    """Which augmented view an epoch uses: a fresh one per epoch, or one of `aug_views`
    reused in turn, which bounds how many views the frozen-prefix cache stores."""
    return epoch if aug_views is None else epoch % aug_views


class AugmentedSet(Dataset):
    """Training view of a dataset; call `set_epoch` before each epoch.

    The augmentation is a pure function of (seed, view, index): every trial of a study sees
    the same views in the same order (common random numbers).
    """

    def __init__(self, dataset, aug: Augment, seed: int = 0, aug_views: int | None = None):
        self.dataset, self.aug, self.seed, self.aug_views = dataset, aug, seed, aug_views
        self.view = 0

    def set_epoch(self, epoch: int) -> None:
        self.view = view_number(epoch, self.aug_views)

    def __len__(self) -> int:
        return len(self.dataset)

    def draw(self, index: int, shape: tuple[int, int]) -> View:
        return draw_view(shape, self.aug, np.random.default_rng([self.seed, self.view, index]))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.dataset[index]
        view = self.draw(index, label.shape)
        return view_image(image, view, self.aug.crop), view_label(label, view, self.aug.crop)


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
