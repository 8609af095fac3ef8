"""How much a validation score can be trusted: bootstrap intervals over validation images, and
the paired comparison of two configurations on the same images (and, where there are several,
over their seeds).

Everything starts from per-image counts: a 19x19 confusion matrix and the boundary counts of
each validation image (`PerImage`). A resample draws images with replacement; its mIoU is the
mIoU of the summed matrices (exactly how the whole set is scored), computed for all resamples
at once as a (resamples x images) @ (images x 361) product.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


@dataclass(frozen=True)
class PerImage:
    """The counts of each validation image: confusion (N, K, K), truth rows and prediction
    columns; boundary (N, 4, K): predicted boundary px near a true one, predicted boundary px,
    true boundary px near a predicted one, true boundary px."""

    confusion: np.ndarray
    boundary: np.ndarray

    def save(self, path: Path) -> None:
        np.savez_compressed(path, confusion=self.confusion, boundary=self.boundary)

    @classmethod
    def load(cls, path: Path) -> PerImage:
        with np.load(path, allow_pickle=False) as data:
            return cls(data["confusion"], data["boundary"])

    @property
    def images(self) -> int:
        return len(self.confusion)


def miou(confusion: np.ndarray) -> np.ndarray:
    """mIoU of (..., K, K) summed confusion matrices; classes with an empty union are left out,
    as the official Cityscapes evaluation does."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(-1) + confusion.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        return np.nanmean(iou, axis=-1)


def boundary_f1(boundary: np.ndarray) -> np.ndarray:
    """Mean boundary F-score of (..., 4, K) summed boundary counts (as SegmentationMetrics)."""
    near_gt, n_pred, near_pred, n_gt = np.moveaxis(boundary, -2, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, near_gt / np.maximum(n_pred, 1), 0.0)
        recall = np.where(n_gt > 0, near_pred / np.maximum(n_gt, 1), 0.0)
        total = precision + recall
        f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
        f1 = np.where(n_pred + n_gt > 0, f1, np.nan)
        return np.nanmean(f1, axis=-1)


def resample_weights(images: int, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """(resamples, images): how often each image is drawn in each resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(images, np.full(images, 1 / images), size=resamples).astype(np.float64)


def _scores(per_image: PerImage, weights: np.ndarray) -> dict[str, np.ndarray]:
    n, k = per_image.confusion.shape[:2]
    confusion = weights @ per_image.confusion.reshape(n, -1).astype(np.float64)
    boundary = weights @ per_image.boundary.reshape(n, -1).astype(np.float64)
    return {
        "miou": miou(confusion.reshape(-1, k, k)),
        "boundary_f1": boundary_f1(boundary.reshape(-1, 4, k)),
    }


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    low, high = np.nanpercentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bootstrap(
    per_image: PerImage, resamples: int = RESAMPLES, seed: int = 0
) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of mIoU and boundary F1 over resampled validation images."""
    scores = _scores(per_image, resample_weights(per_image.images, resamples, seed))
    return {name: interval(values) for name, values in scores.items()}


@dataclass(frozen=True)
class Difference:
    """mean(A) - mean(B) of one metric, with its 95 % interval."""

    mean: float
    low: float
    high: float

    @property
    def separable(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_difference(
    a: list[PerImage],
    b: list[PerImage],
    metric: str = "miou",
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Difference:
    """A minus B on the same resampled images. `a` and `b` hold one PerImage per run (seed) of
    each configuration; each resample also draws which run stands for each, so the interval
    holds both sources of noise: which images, and which seed."""
    images = a[0].images
    if any(p.images != images for p in [*a, *b]):
        raise ValueError("paired comparison needs the same validation images on both sides")
    weights = resample_weights(images, resamples, seed)
    runs_a = np.stack([_scores(p, weights)[metric] for p in a])  # (runs, resamples)
    runs_b = np.stack([_scores(p, weights)[metric] for p in b])
    rng = np.random.default_rng(seed + 1)
    pick_a = rng.integers(len(a), size=resamples)
    pick_b = rng.integers(len(b), size=resamples)
    columns = np.arange(resamples)
    diff = runs_a[pick_a, columns] - runs_b[pick_b, columns]
    low, high = interval(diff)
    return Difference(float(np.nanmean(diff)), low, high)
