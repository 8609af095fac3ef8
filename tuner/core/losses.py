"""Segmentation losses, registered in `tuner.core.registry.LOSSES`.

Every loss takes logits (B, K, H, W) and train-id targets (B, H, W) with 255 = ignore, returns a
scalar, and stays finite when a class (or every pixel) is absent from the batch. Adding a loss
is one function plus one decorator, in any module that is imported::

    >>> import torch
    >>> from tuner.core.registry import LOSSES
    >>> @LOSSES.register("squared_error")
    ... def squared_error(logits, target):
    ...     onehot = torch.nn.functional.one_hot(target.clamp(max=18), 19).permute(0, 3, 1, 2)
    ...     keep = (target != 255).unsqueeze(1)
    ...     return ((logits.softmax(1) - onehot) ** 2 * keep).mean()
    >>> logits, target = torch.zeros(1, 19, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    >>> round(float(get_loss("squared_error")(logits, target)), 4)
    0.0499
    >>> del LOSSES["squared_error"]

It is then a valid `--loss`, a valid choice in a search space, and part of `choices: all`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tuner.core.data.boundary import label_boundary
from tuner.core.data.labels import IGNORE_INDEX
from tuner.core.registry import LOSSES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def get_loss(name: str) -> LossFn:
    return LOSSES.get_or_fail(name, "loss")


def _valid(target: torch.Tensor) -> torch.Tensor:
    return target != IGNORE_INDEX


def _zero(logits: torch.Tensor) -> torch.Tensor:
    """A zero that still carries the graph, for batches with no labelled pixel."""
    return logits.sum() * 0.0


@LOSSES.register("ce")
def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if not _valid(target).any():
        return _zero(logits)
    return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)


@LOSSES.register("ohem_ce")
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


@LOSSES.register("focal")
def focal(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Down-weights easy pixels by (1 - p_t)^gamma (Lin et al. 2017)."""
    valid = _valid(target)
    if not valid.any():
        return _zero(logits)
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target.clamp(max=logits.shape[1] - 1).unsqueeze(1)).squeeze(1)
    loss = -((1 - log_pt.exp()) ** gamma) * log_pt
    return loss[valid].mean()


@LOSSES.register("dice")
def dice(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes; the smoothing term keeps absent classes finite.

    Per class: intersection = sum of p(true class) over its pixels, total = sum of p over valid
    pixels + its pixel count. Computed from the true class's probabilities and one batched
    product, not from a one-hot tensor of B x C x H x W floats."""
    batch, num_classes = logits.shape[:2]
    valid = _valid(target)
    probs = F.softmax(logits, dim=1)
    mask = valid.reshape(batch, -1, 1).to(probs.dtype)
    predicted = torch.bmm(probs.reshape(batch, num_classes, -1), mask).sum((0, 2))
    true_class = target.masked_fill(~valid, 0).unsqueeze(1)
    p_true = probs.gather(1, true_class).squeeze(1)[valid]
    classes = target[valid]
    intersection = probs.new_zeros(num_classes).index_add(0, classes, p_true)
    total = predicted + torch.bincount(classes, minlength=num_classes).to(probs.dtype)
    return 1 - ((2 * intersection + smooth) / (total + smooth)).mean()


@LOSSES.register("ce_dice")
def ce_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SAMed's mix: 0.2 CE + 0.8 Dice."""
    return 0.2 * cross_entropy(logits, target) + 0.8 * dice(logits, target)


@LOSSES.register("lovasz")
def lovasz_softmax(logits: torch.Tensor, target: torch.Tensor, bins: int = 16384) -> torch.Tensor:
    """Lovász-softmax (Berman et al. 2018): a convex surrogate of per-class IoU, averaged over
    the classes present in the batch.

    The reference implementation sorts every class's errors (C sorts of B*H*W values), which
    made a `lovasz` trial 2.5x slower than a CE one. Here the errors are bucketed into `bins`
    levels instead: the Lovász extension only needs each error's rank, and elements that share
    a bucket get the bucket's average gradient weight (a valid subgradient). The value differs
    from the sorted one by at most 1/bins per class; a test checks both against the sort.
    """
    valid = target != IGNORE_INDEX
    if not valid.any():
        return _zero(logits)
    probs = F.softmax(logits, dim=1)
    weights, constant = _lovasz_weights(probs.detach(), target, valid, bins)
    # loss = sum over classes and pixels of weight * error, where error = p for background
    # elements and 1 - p for foreground ones; `weights` already carries the sign, so the
    # differentiable part is a single dot product.
    return torch.dot(weights.view(-1), probs.reshape(-1)) + constant


@torch.no_grad()
def _lovasz_weights(
    probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per element, d(loss)/d(p); plus the part of the loss that does not depend on p."""
    num_classes = probs.shape[1]
    true_class = target.masked_fill(~valid, 0).unsqueeze(1)
    # Bucket of every element's probability, offset per class: (B, C, H, W) int64 keys. The
    # offsets are whole numbers the float type holds exactly, and p * (bins - 1) <= bins - 1,
    # so rounding can never carry a key into the next class's range.
    exact = probs if num_classes * bins < 2**24 else probs.double()
    offsets = torch.arange(num_classes, device=probs.device, dtype=exact.dtype) * bins
    key = torch.addcmul(offsets.view(1, -1, 1, 1), exact, exact.new_tensor(bins - 1))
    key = key.to(torch.int32)  # half the bytes of int64 in the passes over all C x P elements
    sentinel = num_classes * bins  # ignored pixels: a bucket of weight 0
    key.masked_fill_(~valid.unsqueeze(1), sentinel)
    # Each valid pixel has one foreground element (its true class), whose error is 1 - p: its
    # bucket is the mirror of its probability's bucket.
    raw = key.gather(1, true_class).squeeze(1)[valid].long()
    cls = torch.div(raw, bins, rounding_mode="floor")
    mirrored = cls * bins + (bins - 1) - (raw - cls * bins)
    size = num_classes * bins
    counts = torch.bincount(key.view(-1), minlength=size + 1)[:size]
    counts = counts - torch.bincount(raw, minlength=size) + torch.bincount(mirrored, minlength=size)
    fg = torch.bincount(mirrored, minlength=size)
    # Walk the buckets from the largest error down: the Jaccard loss after each bucket.
    total = counts.view(num_classes, bins).double().flip(1)
    fg_desc = fg.view(num_classes, bins).double().flip(1)
    cum_fg, cum_all = fg_desc.cumsum(1), total.cumsum(1)
    gts = cum_fg[:, -1:]
    jaccard = 1 - (gts - cum_fg) / (gts + cum_all - cum_fg).clamp(min=1)
    step = jaccard - F.pad(jaccard, (1, 0))[:, :-1]
    per_element = torch.where(total > 0, step / total.clamp(min=1), 0.0).flip(1)
    present = gts[:, 0] > 0
    per_element = per_element * present.unsqueeze(1) / present.sum().clamp(min=1)
    table = F.pad(per_element.reshape(-1).to(probs.dtype), (0, 1))  # + the sentinel's 0
    weights = table.index_select(0, key.view(-1)).view(key.shape)
    fg_weight = table.take(mirrored)
    # Foreground elements enter as (1 - p): coefficient -w on p, and +w as a constant.
    signed = torch.zeros_like(target, dtype=probs.dtype)
    signed[valid] = -fg_weight
    weights.scatter_(1, true_class, signed.unsqueeze(1))
    return weights, fg_weight.sum()


@LOSSES.register("boundary_ce")
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
