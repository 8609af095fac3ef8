"""Semantic segmentation metrics over a whole validation set.

The update/compute interface is torchmetrics'; the confusion matrix itself is one bincount kept
on the model's device. (torchmetrics' MulticlassConfusionMatrix does the same bincount but costs
about 2 s of import per process, measured here, which every trial worker and CLI call would
pay.) IoU follows the official Cityscapes evaluation: pixels whose ground truth is 255 are
ignored entirely, and a class with an empty union is NaN and left out of the mean; a test
checks it against `evalPixelLevelSemanticLabeling`. The boundary F-score (Csurka et al. 2013)
has no library implementation: per class, the predicted and ground-truth boundary pixels that
lie within `tolerance` pixels of each other.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from tuner.core.data.boundary import label_boundary
from tuner.core.data.labels import IGNORE_INDEX, NUM_CLASSES
from tuner.core.stats import PerImage


class SegmentationMetrics:
    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        boundary_tolerance: int = 2,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_classes = num_classes
        self.tolerance = boundary_tolerance
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
        # Per class: [pred boundary px near gt boundary, pred boundary px,
        #             gt boundary px near pred boundary, gt boundary px]
        self.boundary = torch.zeros(4, num_classes, dtype=torch.float64, device=device)
        self._updates: list[tuple[torch.Tensor, torch.Tensor]] = []  # counts of each update

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (B, H, W) train ids; target may hold 255. `evaluate` passes one image
        per call, so the counts of each call are the per-image counts (`per_image`)."""
        valid = target != IGNORE_INDEX
        index = target[valid].long() * self.num_classes + pred[valid].long()
        confusion = torch.bincount(index, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        boundary = self._boundary_counts(pred, target)
        self.confusion += confusion
        self.boundary += boundary
        self._updates.append((confusion.cpu(), boundary.cpu()))

    def per_image(self) -> PerImage:
        """Counts of each update: what the bootstrap resamples (`tuner.core.stats`)."""
        if not self._updates:
            k = self.num_classes
            return PerImage(np.zeros((0, k, k), np.int64), np.zeros((0, 4, k)))
        confusion, boundary = zip(*self._updates)
        return PerImage(torch.stack(confusion).numpy(), torch.stack(boundary).numpy())

    def _boundary_counts(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per class: boundary pixels of the prediction and of the truth, and how many of each
        lie within `tolerance` pixels of the other's boundary of the same class.

        "Near a boundary of class k" is one bit per class in an int32 mask, dilated by shifts
        (a separable OR over the square window): a few passes over (B, H, W) integers instead
        of max-pooling a (B, 19, H, W) float map per image."""
        pred = pred.masked_fill(target == IGNORE_INDEX, IGNORE_INDEX)
        gt_edge, pred_edge = label_boundary(target, 1), label_boundary(pred, 1)
        gt_near = _dilate_bits(_class_bits(target, gt_edge), self.tolerance)
        pred_near = _dilate_bits(_class_bits(pred, pred_edge), self.tolerance)
        pred_class, gt_class = pred[pred_edge].long(), target[gt_edge].long()
        pred_hit = (gt_near[pred_edge] >> pred_class) & 1
        gt_hit = (pred_near[gt_edge] >> gt_class) & 1
        k = self.num_classes
        return torch.stack(
            [
                torch.bincount(pred_class, weights=pred_hit.double(), minlength=k),
                torch.bincount(pred_class, minlength=k).double(),
                torch.bincount(gt_class, weights=gt_hit.double(), minlength=k),
                torch.bincount(gt_class, minlength=k).double(),
            ]
        )[:, :k]

    def compute(self) -> dict[str, Any]:
        cm = self.confusion.to(torch.float64)
        tp = cm.diag()
        union = cm.sum(0) + cm.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.nan)
        labelled = cm.sum()
        near_gt, n_pred, near_pred, n_gt = self.boundary
        precision = torch.where(n_pred > 0, near_gt / n_pred.clamp(min=1), 0.0)
        recall = torch.where(n_gt > 0, near_pred / n_gt.clamp(min=1), 0.0)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = torch.where((n_pred + n_gt) > 0, f1, torch.nan)
        return {
            "miou": _nanmean(iou),
            "pixel_acc": float(tp.sum() / labelled) if labelled > 0 else math.nan,
            "boundary_f1": _nanmean(f1),
            "per_class_iou": _as_list(iou),
            "per_class_boundary_f1": _as_list(f1),
        }


def _class_bits(labels: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int32: bit k set on the boundary pixels of class k."""
    bits = torch.ones_like(labels, dtype=torch.int32) << labels.clamp(max=30).int()
    return bits.masked_fill(~edge, 0)


def _dilate_bits(bits: torch.Tensor, radius: int) -> torch.Tensor:
    """OR of every bit mask within `radius` pixels (Chebyshev), rows then columns."""
    for dim in (-1, -2):
        out = bits.clone()
        length = bits.shape[dim]
        for shift in range(1, min(radius, length - 1) + 1):
            out.narrow(dim, shift, length - shift).bitwise_or_(bits.narrow(dim, 0, length - shift))
            out.narrow(dim, 0, length - shift).bitwise_or_(bits.narrow(dim, shift, length - shift))
        bits = out
    return bits


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def _as_list(values: torch.Tensor) -> list[float | None]:
    """Per-class values as JSON-safe floats; None for classes with nothing to score."""
    return [None if math.isnan(v) else float(v) for v in values.tolist()]
