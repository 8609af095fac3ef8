"""What one trial will cost, measured before it runs: a few timed steps of the real model on
this device (never a constant), and shapes (features per view, checkpoint bytes).

`measure_trial` builds the trial's model exactly as `fit` does and times, at the trial's own
micro-batch:
- the frozen prefix of one image (what a cache miss computes, and a hit skips);
- one optimizer step from the prefix's features (or from images, when nothing is cached);
- one evaluation window, from features and from the image;
- decoding and augmenting one training image.

`tuner.search.plan` multiplies these by a study's trials, views and windows.

    >>> from tuner.core.config import TrainConfig
    >>> data = DataShape.assumed(train=8, val=2, size=(64, 128))
    >>> config = TrainConfig(head="linear", freeze_depth=6, image_size=(64, 128), batch_size=2)
    >>> cost = measure_trial(config, data, torch.device("cpu"), budget_s=0.5)
    >>> cost.feature_shape  # sam_tiny's neck at stride 16: the whole encoder is frozen
    (128, 4, 8)
    >>> cost.step_seconds > 0 and cost.checkpoint_bytes < 100_000  # head and resized tables
    True
"""

from __future__ import annotations

import itertools
import math
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tuner.core.cache import FeatureSet
from tuner.core.config import TrainConfig
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.transforms import Augment, EvalSet, draw_view, view_image, view_label
from tuner.core.environment import (
    PARAMETER_DTYPES,
    autocast,
    configure_threads,
    loss_precision,
)
from tuner.core.inference import OVERLAP, windows
from tuner.core.losses import get_loss
from tuner.core.metrics import SegmentationMetrics
from tuner.core.model import build_segmenter
from tuner.core.model.base_weights import delta_state

# torch.save's bytes beyond the tensors' own: per tensor (zip entry, alignment, pickled name)
# and per file (config, metrics). Fitted on sam_tiny deltas of 7 to 95 tensors (tests/test_plan.py).
_SAVE_BYTES_PER_TENSOR = 304
_SAVE_BYTES_PER_FILE = 3_000


@dataclass(frozen=True)
class DataShape:
    """What a study's cost depends on in its data: how many images, and how large."""

    train_images: int
    val_sizes: tuple[tuple[int, int], ...]  # (H, W) of each validation image
    train_size: tuple[int, int]  # (H, W) of a training image
    root: Path | None = None  # where the images are; None for assumed data

    @classmethod
    def of(cls, root: Path, train_limit: int | None = None, val_limit: int | None = None):
        train = CityscapesDataset(root, "train", limit=train_limit)
        val = CityscapesDataset(root, "val", limit=val_limit)
        sizes = tuple(val.image_sizes())
        first = train.image_sizes()[0] if len(train) else (1024, 2048)
        return cls(len(train), sizes, first, Path(root))

    @classmethod
    def assumed(cls, train: int, val: int, size: tuple[int, int] = (1024, 2048)) -> DataShape:
        """Data that is not here (`tuner plan --assume-images 2975,500`)."""
        return cls(train, (tuple(size),) * val, tuple(size))

    def val_windows(self, crop: tuple[int, int]) -> int:
        """Sliding windows over the validation set at `crop` (as `evaluate` runs them)."""
        total = 0
        for height, width in self.val_sizes:
            height, width = max(height, crop[0]), max(width, crop[1])
            total += sum(1 for _ in windows(height, width, crop, OVERLAP))
        return total


@dataclass(frozen=True)
class TrialCost:
    """One trial's measured unit costs on one device."""

    device: str
    prefix_cached: bool  # a frozen prefix exists, so the cache can hold its features
    feature_shape: tuple[int, ...] | None  # one view's (or window's) features
    prefix_seconds: float  # the frozen prefix of one image: what a miss costs on top of a hit
    step_seconds: float  # one optimizer step of `batch_size`, from features (or images)
    window_seconds: float  # one evaluation window, from features (or the image)
    load_seconds: float  # decoding and augmenting one training image (skipped on a hit)
    label_seconds: float  # decoding and cropping one training label (hit or miss)
    val_image_seconds: float  # decoding one validation image and scoring its prediction
    read_seconds: float  # reading one cached entry
    write_seconds: float  # writing one cached entry (atomically, fsynced)
    build_seconds: float  # building the model and loading its weights
    checkpoint_bytes: int  # the trial's delta checkpoint
    whole_model_bytes: int  # what a whole-model checkpoint would hold (format sam-tuner/1)
    peak_memory_bytes: int
    peak_memory_kind: str  # "CUDA allocated" or "process RSS"
    trainable_params: int


def measure_trial(
    config: TrainConfig, data: DataShape, device: torch.device, budget_s: float = 3.0
) -> TrialCost:
    """Time `config`'s trial on `device` (see the module docstring), with the trial's thread
    count; each timing repeats while it fits in `budget_s`, at least twice after a warm-up."""
    threads = torch.get_num_threads()
    configure_threads(config.threads)
    try:
        return _measure(config, data, device, budget_s)
    finally:
        torch.set_num_threads(threads)
        if device.type == "cuda":  # give the timed model's memory back to the workers
            torch.cuda.empty_cache()


def _measure(config: TrainConfig, data: DataShape, device: torch.device, budget_s: float):
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    dtype = PARAMETER_DTYPES[config.dtype]
    tick = time.perf_counter()
    torch.manual_seed(config.seed)
    model = build_segmenter(config).to(device, dtype)
    build_seconds = time.perf_counter() - tick
    trainable = model.parameter_counts()[0]
    checkpoint = checkpoint_bytes(model, config.model)

    micro = config.effective_micro_batch
    images = torch.randn(micro, 3, *config.image_size, device=device, dtype=dtype)
    labels = torch.randint(0, 19, (micro, *config.image_size), device=device)
    cached = config.cache != "off" and model.prefix_depth > 0
    prefix_seconds, inputs, shape = 0.0, images, None
    if model.prefix_depth > 0:
        prefix_seconds = _timed(lambda: _sync(model.frozen_prefix(images[:1]), cuda), budget_s)
        with autocast(device):
            inputs = model.frozen_prefix(images).to(dtype)
        shape = tuple(inputs.shape[1:])
    forward = model.forward_from_prefix if model.prefix_depth > 0 else model.forward
    args = (config.image_size,) if model.prefix_depth > 0 else ()
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-6, 1.0, 0.0))
    loss_fn = get_loss(config.loss)
    model.train()

    def step() -> None:
        with autocast(device):
            logits = forward(inputs, *args)
        loss_fn(loss_precision(logits), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(None, cuda)

    step_seconds = _timed(step, budget_s) * math.ceil(config.batch_size / micro)
    model.eval()
    with torch.no_grad():
        window = _timed(lambda: _sync(forward(inputs[:1], *args), cuda), budget_s)
    window_seconds = window if cached else window + prefix_seconds  # a miss runs the prefix
    io_seconds = entry_io_seconds(config, shape, budget_s) if cached else (0.0, 0.0)
    if cuda:
        peak, kind = torch.cuda.max_memory_allocated(device), "CUDA allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process RSS"
    return TrialCost(
        device=str(device),
        prefix_cached=cached,
        feature_shape=shape,
        prefix_seconds=prefix_seconds,
        step_seconds=step_seconds,
        window_seconds=window_seconds,
        load_seconds=load_seconds(config, data, budget_s),
        label_seconds=label_seconds(config, data, budget_s),
        val_image_seconds=val_image_seconds(config, data, budget_s),
        read_seconds=io_seconds[0],
        write_seconds=io_seconds[1],
        build_seconds=build_seconds,
        checkpoint_bytes=checkpoint,
        whole_model_bytes=saved_bytes(model.state_dict()),
        peak_memory_bytes=int(peak),
        peak_memory_kind=kind,
        trainable_params=trainable,
    )


def checkpoint_bytes(model, model_name: str) -> int:
    """Bytes of the delta checkpoint `fit` will write for this model."""
    return saved_bytes(delta_state(model, model_name))


def saved_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a checkpoint file holding `state` (tensors, names, config and metrics)."""
    tensors = sum(t.numel() * t.element_size() for t in state.values())
    return tensors + _SAVE_BYTES_PER_TENSOR * len(state) + _SAVE_BYTES_PER_FILE


def load_seconds(config: TrainConfig, data: DataShape, budget_s: float) -> float:
    """Decoding (where the files are here) and augmenting one training image."""
    aug, rng = Augment.of(config), np.random.default_rng(0)

    def augment(image: np.ndarray) -> None:
        view_image(image, draw_view(image.shape[:2], aug, rng), aug.crop)

    random_image = rng.integers(0, 255, (*data.train_size, 3), dtype=np.uint8)
    return _per_training_image(data, budget_s, "image", augment, random_image)


def label_seconds(config: TrainConfig, data: DataShape, budget_s: float) -> float:
    """Decoding (where the files are here) and cropping one training label."""
    aug, rng = Augment.of(config), np.random.default_rng(0)

    def crop(label: np.ndarray) -> None:
        view_label(label, draw_view(label.shape, aug, rng), aug.crop)

    random_label = rng.integers(0, 19, data.train_size, dtype=np.uint8)
    return _per_training_image(data, budget_s, "target", crop, random_label)


def _per_training_image(data: DataShape, budget_s: float, read: str, use, stand_in) -> float:
    """Seconds of `use` on a training image (or label), read from the first files with the
    dataset's `read` method where they are here, else on `stand_in` (decoding not counted)."""
    if data.root is not None and data.train_images:
        dataset = CityscapesDataset(data.root, "train", limit=3)
        order = itertools.count()
        return _timed(lambda: use(getattr(dataset, read)(next(order) % len(dataset))), budget_s / 3)
    return _timed(lambda: use(stand_in), budget_s / 3)


def val_image_seconds(config: TrainConfig, data: DataShape, budget_s: float) -> float:
    """Decoding one validation image and its label (where they are here), and scoring a
    prediction of its size (confusion matrix and boundary F1)."""
    size = data.val_sizes[0] if data.val_sizes else data.train_size
    metrics = SegmentationMetrics(boundary_tolerance=config.boundary_tolerance)
    pred = torch.randint(0, 19, (1, *size))
    target = torch.randint(0, 19, (1, *size))
    seconds = _timed(lambda: metrics.update(pred, target), budget_s / 3)
    if data.root is not None and data.val_sizes:
        dataset = EvalSet(CityscapesDataset(data.root, "val", limit=1))
        seconds += _timed(lambda: dataset[0], budget_s / 3)
    return seconds


def entry_io_seconds(
    config: TrainConfig, shape: tuple[int, ...], budget_s: float
) -> tuple[float, float]:
    """(read, write) seconds of one cache entry of `shape`, through the cache's own code in a
    scratch folder."""
    features = torch.randn(shape)
    with tempfile.TemporaryDirectory(prefix="tuner-cost-") as folder:
        store = FeatureSet(Path(folder), config.cache_dtype, budget=2**62)  # no limit here
        counter = itertools.count()
        write = _timed(lambda: store.put(f"e{next(counter)}", features), budget_s / 3)
        read = _timed(lambda: store.get("e0"), budget_s / 3)
    return read, write


def _timed(fn: Callable[[], object], budget_s: float) -> float:
    """Median seconds of `fn` after one warm-up: at least 2 repeats, more while they fit."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    repeats = max(2, min(10, int(budget_s / max(first, 1e-6))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _sync(value, cuda: bool):
    if cuda:
        torch.cuda.synchronize()
    return value
