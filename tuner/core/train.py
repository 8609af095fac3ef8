"""The shared fine-tuning core: one TrainConfig in, a trained segmenter and its metrics out.

It knows nothing about Optuna. Whoever drives it (the CLI, a study, a benchmark) listens through
a `TrainCallback`, whose `on_epoch_end` may ask to stop early.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tuner.core.cache import FeatureCache
from tuner.core.checkpoint import BestCheckpoint
from tuner.core.config import TrainConfig
from tuner.core.data.check import require_valid
from tuner.core.data.transforms import Augment, AugmentedSet
from tuner.core.environment import (
    PARAMETER_DTYPES,
    autocast,
    configure_threads,
    loss_precision,
    resolve_device,
    seed_everything,
)
from tuner.core.errors import ConfigError, UserError
from tuner.core.frozen_prefix import PrefixFeatures
from tuner.core.inference import architecture_latency_ms, evaluate, set_mode
from tuner.core.losses import get_loss
from tuner.core.metrics import SegmentationMetrics
from tuner.core.model import Segmenter, build_segmenter
from tuner.core.model.adapters import describe_adapter, merge_adapters
from tuner.core.stats import PerImage


@dataclass
class FitSummary:
    """What a finished (or stopped) run reports back to whoever called `fit`."""

    best_metrics: dict[str, Any]
    final_metrics: dict[str, Any]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    checkpoint: Path | None
    epoch_seconds: list[float] = field(default_factory=list)
    fit_seconds: float = 0.0
    compile_seconds: float = 0.0  # included in fit_seconds, not in epoch_seconds
    cache: dict[str, Any] = field(default_factory=dict)  # frozen-prefix cache hits and misses
    trainable_params: int = 0
    total_params: int = 0
    device: str = "cpu"
    latency_ms: float | None = None  # per crop-sized image, batch 1, on `device`
    per_image: PerImage | None = None  # the best epoch's validation counts, for the bootstrap


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or inf; the message names the epoch and step."""


class TrainCallback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Called after each evaluation; return True to stop training now."""
        ...


def warmup_poly(total_steps: int, warmup_steps: int, power: float):
    """LR factor per optimizer step: linear warm-up, then polynomial decay to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1 - progress) ** power

    return factor


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def compile_wanted(mode: str, device: torch.device) -> bool:
    """`compile: auto` compiles on CUDA only: on CPU, bench/README.md measured compiling the
    embedded model to cost more than a whole short trial saves."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


class Trainer:
    """Holds the state of one run so that each step reads as a few lines. Use it as a context
    manager when it is given a feature cache: it holds the cache's feature sets open."""

    def __init__(
        self, config: TrainConfig, train_set, val_set, cache: FeatureCache | None = None, log=print
    ):
        self.config, self.val_set = config, val_set
        for dataset in (train_set, val_set):  # bad labels stop here, not as a wrong model
            if hasattr(dataset, "fingerprint"):
                require_valid(dataset, dataset.fingerprint())
        self.device = resolve_device(config.device)
        configure_threads(config.threads)
        seed_everything(config.seed)
        self.dtype = PARAMETER_DTYPES[config.dtype]
        self.model: Segmenter = build_segmenter(config).to(self.device, self.dtype)
        self.loss_fn = get_loss(config.loss)
        self.train_view = AugmentedSet(
            train_set, Augment.of(config), seed=config.seed, aug_views=config.aug_views
        )
        self.steps_per_epoch = len(train_set) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"batch_size={config.batch_size} is larger than the training set "
                f"({len(train_set)} images)"
            )
        self.optimizer = torch.optim.AdamW(
            self.model.parameter_groups(config.lr, config.encoder_lr_mult, config.weight_decay)
        )
        total = self.steps_per_epoch * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            warmup_poly(total, int(config.warmup_ratio * total), config.poly_power),
        )
        self.micro_batch = config.effective_micro_batch
        self.step = 0
        self._resources = contextlib.ExitStack()
        self.prefix: PrefixFeatures | None = None
        if cache is not None:
            self.prefix = self._resources.enter_context(
                PrefixFeatures.open(cache, self.model, config, train_set, val_set, self.device, log)
            )
        self.compiled = compile_wanted(config.compile, self.device)
        # The part that trains: from images, or from the frozen prefix's cached features.
        core = self.model.forward_from_prefix if self.prefix else self.model.forward
        if self.compiled:
            core = torch.compile(core, dynamic=False)
        self._core = core

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self._resources.close()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Logits at the crop size, from images or (with the cache) prefix features."""
        if self.prefix is not None:
            return self._core(inputs, self.config.image_size)
        return self._core(inputs)

    def epoch_batches(self, epoch: int) -> DataLoader:
        """This epoch's batches in a seeded order; the last partial batch is dropped."""
        self.train_view.set_epoch(epoch)
        order = torch.randperm(
            len(self.train_view), generator=torch.Generator().manual_seed(self.config.seed + epoch)
        ).tolist()
        dataset, collate = self.train_view, None
        if self.prefix is not None:
            dataset = self.prefix.views(self.train_view)
            collate = dataset.collate
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            sampler=order,
            drop_last=True,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate,
        )

    def prepare(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of a loader batch: images, or prefix features read or computed."""
        if self.prefix is not None:
            return self.prefix.inputs(batch), batch.labels
        return batch

    def warm_up(self) -> float:
        """Compile before the first epoch, so that compiling is timed apart from training: a
        forward and backward pass at the training shape (no optimizer step; gradients are
        cleared) and an evaluation forward at the window shape. Returns the seconds taken."""
        tick = time.perf_counter()
        crop = self.config.image_size
        images = torch.zeros(self.micro_batch, 3, *crop, device=self.device, dtype=self.dtype)
        inputs = images
        if self.prefix is not None:
            inputs = self.prefix.compute(images).to(self.device, self.dtype)
        labels = torch.zeros(self.micro_batch, *crop, dtype=torch.long, device=self.device)
        with autocast(self.device):
            logits = self.forward(inputs)
        self.loss_fn(loss_precision(logits), labels).backward()
        self.optimizer.zero_grad(set_to_none=True)
        set_mode(self.model, training=False)
        with torch.no_grad(), autocast(self.device):
            self.forward(inputs[:1])
        set_mode(self.model, training=True)
        return time.perf_counter() - tick

    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> float:
        """One optimizer step over a whole batch, accumulated over micro-batches. On CUDA OOM
        the micro-batch halves and the step starts again, so `batch_size` keeps its meaning."""
        while True:
            try:
                return self._accumulate(inputs, labels, epoch)
            except RuntimeError as exc:
                if not _is_oom(exc) or self.micro_batch == 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.micro_batch //= 2
                tqdm.write(f"out of memory: micro-batch now {self.micro_batch}")

    def _accumulate(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int) -> float:
        total = 0.0
        chunks = list(zip(inputs.split(self.micro_batch), labels.split(self.micro_batch)))
        for chunk, label in chunks:
            chunk = chunk.to(self.device, self.dtype, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            with autocast(self.device):
                logits = self.forward(chunk)
            loss = self.loss_fn(loss_precision(logits), label)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch}, step {self.step} "
                    f"(loss={self.config.loss}, lr={self.scheduler.get_last_lr()[0]:.3g})"
                )
            (loss * chunk.shape[0] / inputs.shape[0]).backward()
            total += loss.item() * chunk.shape[0]
        if self.config.grad_clip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return total / inputs.shape[0]

    def run_epoch(self, epoch: int, progress: bool = False) -> dict[str, Any]:
        """One pass over the training set, then the evaluation; the epoch's metrics."""
        self.model.train()
        losses = []
        bar = tqdm(
            self.epoch_batches(epoch),
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=None if progress else True,  # None: no bar when stderr is not a terminal
            leave=False,
        )
        for batch in bar:
            losses.append(self.train_step(*self.prepare(batch), epoch))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        metrics = self.evaluate()
        metrics["train_loss"] = float(np.mean(losses))
        metrics["epoch"] = epoch
        return metrics

    def _eval_forward(self, index: int, window: torch.Tensor, number: int) -> torch.Tensor:
        if self.prefix is not None:
            return self.forward(self.prefix.window_features(index, number, window))
        return self.forward(window)

    def evaluate(self) -> dict[str, Any]:
        """The validation metrics (prefixed val_); their per-image counts stay in
        `self.last_per_image`, for the bootstrap of the best epoch."""
        plain = self.prefix is None and not self.compiled
        accumulator = SegmentationMetrics(
            boundary_tolerance=self.config.boundary_tolerance, device=self.device
        )
        metrics = evaluate(
            self.model,
            self.val_set,
            self.config.image_size,
            self.device,
            self.config.boundary_tolerance,
            num_workers=self.config.num_workers,
            forward=None if plain else self._eval_forward,
            metrics=accumulator,
        )
        self.last_per_image = accumulator.per_image()
        samples = getattr(self.val_set, "samples", None)
        if samples is not None and len(samples) == self.last_per_image.images:
            # Named, so that two runs are compared image by image, not by position.
            self.last_per_image = self.last_per_image.named([s.stem for s in samples])
        return {f"val_{k}": v for k, v in metrics.items()}


def fit(
    config: TrainConfig,
    train_set,
    val_set,
    out_dir: str | Path | None = None,
    callback: TrainCallback | None = None,
    progress: bool = True,
    log=print,
    cache: FeatureCache | None = None,
) -> FitSummary:
    """Fine-tune, evaluating after every epoch and keeping the best checkpoint in `out_dir`.
    With a `cache`, a frozen prefix's features are read from it where they exist."""
    started = time.perf_counter()
    saver = BestCheckpoint(Path(out_dir) if out_dir is not None else None)
    with Trainer(config, train_set, val_set, cache=cache, log=log) as trainer:
        model = trainer.model
        trainable, total = model.parameter_counts()
        extras = [f"cache {'on' if trainer.prefix else 'off'}"]
        if trainer.compiled:
            extras.append("compiled")
        adapter = f", {describe_adapter(config)}" if config.adapter != "none" else ""
        log(
            f"{config.model}/{config.head}, loss={config.loss}, "
            f"freeze_depth={config.freeze_depth}{adapter}: {trainable:,} of {total:,} parameters "
            f"trainable, on {trainer.device} ({', '.join(extras)})"
        )
        compile_seconds = trainer.warm_up() if trainer.compiled else 0.0
        if trainer.compiled:
            log(f"compiled in {compile_seconds:.1f}s")
        best: dict[str, Any] = {}
        best_epoch, stopped, best_per_image = -1, False, None
        epoch_seconds: list[float] = []
        metrics: dict[str, Any] = {}
        try:
            for epoch in range(config.epochs):
                tick = time.perf_counter()
                metrics = trainer.run_epoch(epoch, progress)
                epoch_seconds.append(time.perf_counter() - tick)
                metrics["epoch_seconds"] = epoch_seconds[-1]
                if best_epoch < 0 or _better(metrics[config.monitor], best[config.monitor]):
                    best, best_epoch = dict(metrics), epoch
                    best_per_image = trainer.last_per_image
                    saver.offer(model, config, best, epoch)
                log(
                    f"epoch {epoch + 1}/{config.epochs}: loss {metrics['train_loss']:.4f}  "
                    f"mIoU {metrics['val_miou']:.4f}  "
                    f"boundary F1 {metrics['val_boundary_f1']:.4f}  ({epoch_seconds[-1]:.1f}s)"
                )
                if callback is not None and callback.on_epoch_end(epoch, metrics):
                    stopped = epoch < config.epochs - 1
                    break
        finally:  # however training ends, the best epoch so far is on disk
            checkpoint = saver.flush()
        cache_stats = trainer.prefix.stats() if trainer.prefix else {}
        # As deployed: adapters merged (predict and quantize merge them too), into a copy made
        # only when this architecture has not been measured yet.
        latency = architecture_latency_ms(
            model,
            config.image_size,
            trainer.device,
            as_deployed=(lambda m: merge_adapters(copy.deepcopy(m)))
            if config.adapter != "none"
            else None,
        )
    return FitSummary(
        best_metrics=best,
        final_metrics=metrics,
        best_epoch=best_epoch,
        epochs_run=len(epoch_seconds),
        stopped_early=stopped,
        checkpoint=checkpoint,
        epoch_seconds=epoch_seconds,
        fit_seconds=time.perf_counter() - started,
        compile_seconds=compile_seconds,
        cache=cache_stats,
        trainable_params=trainable,
        total_params=total,
        device=str(trainer.device),
        latency_ms=latency,
        per_image=best_per_image,
    )


def _better(score: float, best: float) -> bool:
    if math.isnan(best):
        return not math.isnan(score)
    return score > best
