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

import torch
import torch.nn.functional as F

from tuner.data.labels import IGNORE_INDEX, NUM_CLASSES
from tuner.losses import label_boundary


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

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (B, H, W) train ids; target may hold 255."""
        valid = target != IGNORE_INDEX
        index = target[valid].long() * self.num_classes + pred[valid].long()
        self.confusion += torch.bincount(index, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )
        self.boundary += self._boundary_counts(pred, target)

    def _boundary_counts(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ignore = target == IGNORE_INDEX
        pred = pred.masked_fill(ignore, IGNORE_INDEX)
        gt_edge = _class_edges(target, self.num_classes)
        pred_edge = _class_edges(pred, self.num_classes)
        size = 2 * self.tolerance + 1
        near_gt = F.max_pool2d(gt_edge, size, stride=1, padding=self.tolerance) > 0
        near_pred = F.max_pool2d(pred_edge, size, stride=1, padding=self.tolerance) > 0
        pred_b, gt_b = pred_edge > 0, gt_edge > 0
        dims = (0, 2, 3)
        return torch.stack(
            [
                (pred_b & near_gt).sum(dims),
                pred_b.sum(dims),
                (gt_b & near_pred).sum(dims),
                gt_b.sum(dims),
            ]
        ).to(torch.float64)

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
        self.boundary.zero_()


def _class_edges(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K, H, W) float: 1 where a pixel of class k touches a differently labelled
    (non-ignored) pixel. Boundaries against ignored pixels do not count."""
    edge = label_boundary(labels, radius=1)
    one_hot = F.one_hot(labels.clamp(max=num_classes), num_classes + 1)[..., :num_classes]
    return (one_hot.permute(0, 3, 1, 2) & edge.unsqueeze(1)).to(torch.float32)


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~values.isnan()]
    return float(kept.mean()) if kept.numel() else math.nan


def _as_list(values: torch.Tensor) -> list[float | None]:
    """Per-class values as JSON-safe floats; None for classes with nothing to score."""
    return [None if math.isnan(v) else float(v) for v in values.tolist()]
