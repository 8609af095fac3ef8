"""The shared fine-tuning core: one TrainConfig in, a trained segmenter and its metrics out.

It knows nothing about Optuna. Whoever drives it (the CLI, a study, a benchmark) listens through
a `TrainCallback`, whose `on_epoch_end` may ask to stop early.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tuner.checkpoint import save_checkpoint
from tuner.config import FitSummary, TrainConfig
from tuner.data.transforms import Augment, AugmentedSet
from tuner.errors import ConfigError, UserError
from tuner.hardware import autocast, configure_threads, resolve_device
from tuner.inference import evaluate
from tuner.losses import get_loss
from tuner.model import Segmenter, build_segmenter


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or inf; the message names the epoch and step."""


class TrainCallback(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Called after each evaluation; return True to stop training now."""
        ...


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


class Trainer:
    """Holds the state of one run so that each step reads as a few lines."""

    def __init__(self, config: TrainConfig, train_set, val_set):
        self.config, self.val_set = config, val_set
        self.device = resolve_device(config.device)
        configure_threads(config.threads)
        seed_everything(config.seed)
        self.model: Segmenter = build_segmenter(config).to(self.device)
        self.loss_fn = get_loss(config.loss)
        aug = Augment(config.image_size, config.scale_range, config.hflip, config.color_jitter)
        self.train_view = AugmentedSet(train_set, aug, seed=config.seed)
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

    def epoch_batches(self, epoch: int) -> DataLoader:
        """This epoch's batches in a seeded order; the last partial batch is dropped."""
        self.train_view.set_epoch(epoch)
        order = torch.randperm(
            len(self.train_view), generator=torch.Generator().manual_seed(self.config.seed + epoch)
        ).tolist()
        return DataLoader(
            self.train_view,
            batch_size=self.config.batch_size,
            sampler=order,
            drop_last=True,
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> float:
        """One optimizer step over a whole batch, accumulated over micro-batches. On CUDA OOM
        the micro-batch halves and the step starts again, so `batch_size` keeps its meaning."""
        while True:
            try:
                return self._accumulate(images, labels, epoch)
            except RuntimeError as exc:
                if not _is_oom(exc) or self.micro_batch == 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.micro_batch //= 2
                tqdm.write(f"out of memory: micro-batch now {self.micro_batch}")

    def _accumulate(self, images: torch.Tensor, labels: torch.Tensor, epoch: int) -> float:
        total = 0.0
        chunks = list(zip(images.split(self.micro_batch), labels.split(self.micro_batch)))
        for image, label in chunks:
            image = image.to(self.device, non_blocking=True)
            label = label.to(self.device, non_blocking=True)
            with autocast(self.device):
                logits = self.model(image)
            loss = self.loss_fn(logits.float(), label)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss.item()} at epoch {epoch}, step {self.step} "
                    f"(loss={self.config.loss}, lr={self.scheduler.get_last_lr()[0]:.3g})"
                )
            (loss * image.shape[0] / images.shape[0]).backward()
            total += loss.item() * image.shape[0]
        if self.config.grad_clip:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return total / images.shape[0]

    def evaluate(self) -> dict[str, Any]:
        metrics = evaluate(
            self.model,
            self.val_set,
            self.config.image_size,
            self.device,
            self.config.boundary_tolerance,
            num_workers=self.config.num_workers,
        )
        return {f"val_{k}": v for k, v in metrics.items()}


def fit(
    config: TrainConfig,
    train_set,
    val_set,
    out_dir: str | Path | None = None,
    callback: TrainCallback | None = None,
    progress: bool = True,
    log=print,
) -> FitSummary:
    """Fine-tune, evaluating after every epoch and keeping the best checkpoint in `out_dir`."""
    started = time.perf_counter()
    out_dir = Path(out_dir) if out_dir is not None else None
    trainer = Trainer(config, train_set, val_set)
    model = trainer.model
    trainable, total = model.parameter_counts()
    log(
        f"{config.model}/{config.head}, loss={config.loss}, freeze_depth={config.freeze_depth}: "
        f"{trainable:,} of {total:,} parameters trainable, on {trainer.device}"
    )
    best: dict[str, Any] = {}
    best_epoch, checkpoint, stopped = -1, None, False
    epoch_seconds: list[float] = []
    metrics: dict[str, Any] = {}
    for epoch in range(config.epochs):
        tick = time.perf_counter()
        model.train()
        losses = []
        bar = tqdm(
            trainer.epoch_batches(epoch),
            total=trainer.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
        )
        for images, labels in bar:
            losses.append(trainer.train_step(images, labels, epoch))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        metrics = trainer.evaluate()
        metrics["train_loss"] = float(np.mean(losses))
        metrics["epoch"] = epoch
        epoch_seconds.append(time.perf_counter() - tick)
        metrics["epoch_seconds"] = epoch_seconds[-1]
        score = metrics[config.monitor]
        if best_epoch < 0 or _better(score, best[config.monitor]):
            best, best_epoch = dict(metrics), epoch
            if out_dir is not None:
                checkpoint = save_checkpoint(out_dir, model, config, best, epoch)
        log(
            f"epoch {epoch + 1}/{config.epochs}: loss {metrics['train_loss']:.4f}  "
            f"mIoU {metrics['val_miou']:.4f}  boundary F1 {metrics['val_boundary_f1']:.4f}  "
            f"({epoch_seconds[-1]:.1f}s)"
        )
        if callback is not None and callback.on_epoch_end(epoch, metrics):
            stopped = epoch < config.epochs - 1
            break
    return FitSummary(
        best_metrics=best,
        final_metrics=metrics,
        best_epoch=best_epoch,
        epochs_run=len(epoch_seconds),
        stopped_early=stopped,
        checkpoint=checkpoint,
        epoch_seconds=epoch_seconds,
        fit_seconds=time.perf_counter() - started,
        trainable_params=trainable,
        total_params=total,
        device=str(trainer.device),
    )


def _better(score: float, best: float) -> bool:
    if math.isnan(best):
        return not math.isnan(score)
    return score > best
