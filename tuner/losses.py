"""Segmentation losses, one registry.

Every loss takes logits (B, K, H, W) and train-id targets (B, H, W) with 255 = ignore, returns a
scalar, and stays finite when a class (or every pixel) is absent from the batch. Adding a loss
is one function plus one `@register` line.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tuner.data.labels import IGNORE_INDEX

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, LossFn] = {}


def register(name: str) -> Callable[[LossFn], LossFn]:
    def add(fn: LossFn) -> LossFn:
        LOSSES[name] = fn
        return fn

    return add


def get_loss(name: str) -> LossFn:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}") from None


def _valid(target: torch.Tensor) -> torch.Tensor:
    return target != IGNORE_INDEX


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """A zero that still carries the graph, for batches with no labelled pixel."""
    return logits.sum() * 0.0


@register("ce")
def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not _valid(target).any():
        return _zero(logits)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


@register("ohem_ce")
def ohem_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, thresh: float = 0.7, min_kept: int = 4096
) -> torch.Tensor:
    """CE over the hard pixels only: those whose true-class probability is below `thresh`,
    but at least the `min_kept` hardest (as mmsegmentation's OHEMPixelSampler)."""
    pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    pixel = pixel[_valid(target)]
    if pixel.numel() == 0:
        return _zero(logits)
    hard = pixel > -torch.log(torch.tensor(thresh, device=pixel.device))
    keep = max(int(hard.sum()), min(min_kept, pixel.numel()))
    return pixel.topk(keep).values.mean()


@register("focal")
def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Down-weights easy pixels by (1 - p_t)^gamma (Lin et al. 2017)."""
    valid = _valid(target)
    if not valid.any():
        return _zero(logits)
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    return loss[valid].mean()


@register("dice")
def dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes; the smoothing term keeps absent classes finite."""
    valid = _valid(target)
    probs = F.softmax(logits, dim=1) * valid.unsqueeze(1)
    one_hot = _one_hot(target, logits.shape[1]) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


@register("ce_dice")
def ce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAMed's mix: 0.2 CE + 0.8 Dice."""
    return 0.2 * cross_entropy(logits, target) + 0.8 * dice(logits, target)


@register("lovasz")
def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lovász-softmax (Berman et al. 2018): a convex surrogate of per-class IoU, averaged over
    the classes present in the batch."""
    num_classes = logits.shape[1]
    probs = F.softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, num_classes)
    labels = target.reshape(-1)
    valid = labels != IGNORE_INDEX
    probs, labels = probs[valid], labels[valid]
    if labels.numel() == 0:
        return _zero(logits)
    losses = []
    for c in labels.unique():
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, order = errors.sort(descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[order])))
    return torch.stack(losses).mean()


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


@register("boundary_ce")
def boundary_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, radius: int = 3, boost: float = 4.0
) -> torch.Tensor:
    """CE with pixels within `radius` of a label boundary weighted (1 + boost): the seed's
    blurry edges are exactly the pixels plain CE under-weights."""
    valid = _valid(target)
    if not valid.any():
        return _zero(logits)
    pixel = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    weight = (1 + boost * label_boundary(target, radius).float()) * valid
    return (pixel * weight).sum() / weight.sum()


def label_boundary(target: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels with a differently labelled (non-ignored) pixel within `radius` (Chebyshev)."""
    size = 2 * radius + 1
    t = target.unsqueeze(1).float()
    ignore = (target == IGNORE_INDEX).unsqueeze(1)
    high = F.max_pool2d(t.masked_fill(ignore, -1), size, stride=1, padding=radius)
    low = -F.max_pool2d((-t).masked_fill(ignore, -1e4), size, stride=1, padding=radius)
    return ((high != low) & ~ignore).squeeze(1)


def _one_hot(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    safe = target.clamp(max=num_classes - 1)
    return F.one_hot(safe, num_classes).permute(0, 3, 1, 2).to(torch.float32)
