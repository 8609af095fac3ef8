"""Whole-image and sliding-window inference, and evaluation over a dataset.

The encoder is built for one token grid (the training crop), so every forward sees exactly a
crop-sized input: smaller images are padded, larger ones are covered by overlapping windows
whose logits are averaged (mmsegmentation's `slide` mode).
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from tuner.core.data.transforms import EvalSet
from tuner.core.environment import autocast, loss_precision, placement
from tuner.core.metrics import SegmentationMetrics

OVERLAP = 1 / 3  # of neighbouring sliding windows

# forward(window, window_number) -> logits; the default is model(window).
WindowForward = Callable[[torch.Tensor, int], torch.Tensor]


def window_starts(length: int, window: int, stride: int) -> list[int]:
    if length <= window:
        return [0]
    starts = list(range(0, length - window, stride))
    return [*starts, length - window]


def pad_to_crop(images: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Pad (..., H, W) on the bottom and right up to the crop size (0 = the mean colour)."""
    pad_h, pad_w = max(crop[0] - images.shape[-2], 0), max(crop[1] - images.shape[-1], 0)
    return F.pad(images, (0, pad_w, 0, pad_h), value=0.0) if pad_h or pad_w else images


def windows(height: int, width: int, crop: tuple[int, int], overlap: float = OVERLAP):
    """(top, left) of crop-sized windows covering a padded image, `overlap` apart."""
    ch, cw = crop
    stride_h, stride_w = max(1, int(ch * (1 - overlap))), max(1, int(cw * (1 - overlap)))
    for top in window_starts(height, ch, stride_h):
        for left in window_starts(width, cw, stride_w):
            yield top, left


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    crop: tuple[int, int],
    overlap: float = OVERLAP,
    forward: WindowForward | None = None,
) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, K, H, W) float logits."""
    height, width = images.shape[-2:]
    images = pad_to_crop(images, crop)
    full_h, full_w = images.shape[-2:]
    ch, cw = crop
    logits = counts = None
    for number, (top, left) in enumerate(windows(full_h, full_w, crop, overlap)):
        window = images[:, :, top : top + ch, left : left + cw]
        with autocast(images.device):
            out = loss_precision(model(window) if forward is None else forward(window, number))
        if logits is None:
            logits = out.new_zeros((out.shape[0], out.shape[1], full_h, full_w))
            counts = out.new_zeros((1, 1, full_h, full_w))
        logits[:, :, top : top + ch, left : left + cw] += out
        counts[:, :, top : top + ch, left : left + cw] += 1
    return (logits / counts)[:, :, :height, :width]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    crop: tuple[int, int],
    device: torch.device,
    boundary_tolerance: int = 2,
    on_prediction: Callable[[int, torch.Tensor], None] | None = None,
    num_workers: int = 0,
    forward: Callable[[int, torch.Tensor, int], torch.Tensor] | None = None,
    metrics: SegmentationMetrics | None = None,
) -> dict:
    """Metrics of `model` on every image of `dataset` (a CityscapesDataset or alike).

    `on_prediction(index, train_ids)` sees each (H, W) prediction, e.g. to write PNGs.
    `forward(index, window, window_number)` replaces `model(window)`, e.g. to read the frozen
    prefix of each window from the cache. Pass `metrics` to keep the accumulator (and its
    per-image counts) afterwards.
    """
    was_training = model.training
    set_mode(model, training=False)
    if metrics is None:
        metrics = SegmentationMetrics(boundary_tolerance=boundary_tolerance, device=device)
    loader = DataLoader(EvalSet(dataset), batch_size=1, num_workers=num_workers)
    input_dtype = placement(model)[1]
    try:
        for image, label, index in loader:
            image, label = image.to(device, input_dtype), label.to(device)
            hook = None if forward is None else functools.partial(forward, int(index[0]))
            pred = predict_logits(model, image, crop, forward=hook).argmax(1)
            metrics.update(pred, label)
            if on_prediction is not None:
                on_prediction(int(index[0]), pred[0].cpu())
    finally:
        set_mode(model, was_training)
    return metrics.compute()


def set_mode(model: nn.Module, training: bool) -> None:
    """train()/eval(), except on exported (quantized) graphs, whose mode is fixed at export."""
    with contextlib.suppress(NotImplementedError):
        model.train(training)


@torch.no_grad()
def latency_ms(
    model: nn.Module, crop: tuple[int, int], device: torch.device, budget_s: float = 2.0
) -> float:
    """Median milliseconds of one forward pass of a crop-sized image (batch 1, eval mode)
    after warming up, on `device`: what the model costs per window where it ran. Fast models
    get 3 warm-up and 10 timed passes; slow ones as many as fit in `budget_s`, at least 3."""
    was_training = model.training
    set_mode(model, training=False)
    image = torch.zeros(1, 3, *crop, device=device, dtype=placement(model)[1])

    def timed_pass() -> float:
        start = time.perf_counter()
        with autocast(device):
            model(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    try:
        first = timed_pass()
        for _ in range(2 if first < budget_s / 10 else 0):
            timed_pass()
        times = [timed_pass() for _ in range(min(10, max(3, int(budget_s / first))))]
    finally:
        set_mode(model, was_training)
    return statistics.median(times) * 1000


_MEASURED_MS: dict[tuple, float] = {}


def architecture_latency_ms(
    model: nn.Module,
    crop: tuple[int, int],
    device: torch.device,
    as_deployed: Callable[[nn.Module], nn.Module] | None = None,
) -> float:
    """`latency_ms` of `as_deployed(model)` (default: the model itself), measured once per
    architecture of `model` (parameter names and shapes), crop, device and thread count in this
    process. Speed does not depend on the weights, and one measurement of vit_b at 512 on 2 CPU
    cores took 20 s, more than a cached trial's training; `as_deployed` runs only on a miss."""
    shapes = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    key = (shapes, tuple(crop), str(device), placement(model)[1], torch.get_num_threads())
    if key not in _MEASURED_MS:
        deployed = as_deployed(model) if as_deployed is not None else model
        _MEASURED_MS[key] = latency_ms(deployed, crop, device)
    return _MEASURED_MS[key]
