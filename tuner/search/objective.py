"""One Optuna trial = one `fit` of the configuration the trial samples.

This is the only module that knows both Optuna and the training core: it samples a
TrainConfig, listens to `fit` through a TrainCallback (report + prune), records what the trial
measured as user attrs and uploads the best checkpoint to the study's artifact store.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from tqdm import tqdm

from tuner.core.cache import FeatureCache
from tuner.core.checkpoint import CHECKPOINT_NAME, CONFIG_NAME
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.environment import device_description, package_versions
from tuner.core.stats import estimate
from tuner.core.text import short
from tuner.core.train import fit
from tuner.search import attrs
from tuner.search.plan import CachePlan
from tuner.search.space import SearchSpace
from tuner.search.study import upload

PER_IMAGE_FILE = "per_image.npz"


class TrialReporter:
    """The TrainCallback of a trial: reports the objective each epoch and asks to prune."""

    def __init__(self, trial: optuna.Trial, space: SearchSpace, epochs: int, log) -> None:
        self.trial, self.space, self.epochs, self.log = trial, space, epochs, log
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> bool:
        self.history.append(
            {k: metrics[k] for k in ("epoch", "train_loss", "val_miou", "val_boundary_f1")}
        )
        self.trial.set_user_attr(attrs.HISTORY, self.history)
        if self.space.multi_objective:
            return False  # Optuna cannot prune multi-objective trials
        value = metrics[self.space.objectives[0].metric]
        if math.isnan(value):
            return False
        # Steps are 1-based epochs, so a pruner's n_warmup_steps / min_resource / max_resource
        # count epochs as the space file writes them.
        self.trial.report(value, step=epoch + 1)
        # After the last epoch there is nothing left to save: the trial is complete.
        if epoch + 1 < self.epochs and self.trial.should_prune():
            self.log(f"pruned after epoch {epoch + 1}")
            return True
        return False


@dataclass
class TrialRunner:
    """The objective function handed to `study.optimize`."""

    space: SearchSpace
    data_root: Path
    artifact_store: Any
    overrides: dict[str, Any] = field(default_factory=dict)
    cache: FeatureCache | None = None  # frozen-prefix features shared with other trials
    cache_plan: CachePlan | None = None  # which views and dtype the cache stores (tuner plan)
    work_dir: Path | None = None
    progress: bool = True
    prefix: str = ""
    current: int | None = None  # number of the trial in progress, for interrupt handling

    def log(self, trial_number: int, message: str) -> None:
        tqdm.write(f"{self.prefix}[trial {trial_number}] {message}")

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        self.current = trial.number
        overrides = dict(self.overrides)
        if attrs.CONFIRMS in trial.user_attrs:  # a seed confirmation: same params, its own seed
            overrides["seed"] = trial.user_attrs[attrs.SEED]
        config = self.space.sample(trial, overrides)
        if self.cache_plan is not None:
            config = self.cache_plan.apply(config)
        trial.set_user_attr(attrs.CONFIG, config.to_dict())
        trial.set_user_attr(attrs.WORKER, f"{socket.gethostname()}:{os.getpid()}")
        frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
        retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)
        if retried is not None:
            trial.set_user_attr(attrs.RETRY_OF, retried)
        changed = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items())
        retry = f" (retry of {retried})" if retried is not None else ""
        self.log(trial.number, f"start: {changed}{retry}")
        work = Path(tempfile.mkdtemp(prefix=f"trial-{trial.number}-", dir=self.work_dir))
        try:
            summary = fit(
                config,
                CityscapesDataset(self.data_root, "train", limit=config.train_limit),
                CityscapesDataset(self.data_root, "val", limit=config.val_limit),
                out_dir=work,
                callback=TrialReporter(
                    trial, self.space, config.epochs, lambda m: self.log(trial.number, m)
                ),
                progress=self.progress,
                log=lambda m: self.log(trial.number, m),
                cache=self.cache,
            )
            self._record(trial, summary, work)
            if summary.stopped_early:
                raise optuna.TrialPruned(f"pruned after epoch {summary.epochs_run}")
            if summary.checkpoint is not None:
                self._upload(trial, work)
            values = [_objective_value(summary, o.metric) for o in self.space.objectives]
            self.log(
                trial.number,
                "done: "
                + ", ".join(f"{o.metric}={v:.4f}" for o, v in zip(self.space.objectives, values)),
            )
            return values if self.space.multi_objective else values[0]
        except optuna.TrialPruned:
            raise
        except BaseException as exc:  # recorded, then Optuna marks the trial FAIL
            reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc)
            trial.set_user_attr(attrs.FAIL_REASON, f"{type(exc).__name__}: {reason}")
            self.log(trial.number, f"failed: {type(exc).__name__}: {reason}")
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _record(self, trial: optuna.Trial, summary, work: Path) -> None:
        best = summary.best_metrics
        for key in attrs.METRICS:
            trial.set_user_attr(key, best.get(key))
        if summary.per_image is not None and summary.per_image.images:
            # The noise of this run's score: a seeded bootstrap over the validation images
            # (the verdict gives a configuration's, over its seeds too); the counts themselves
            # go beside the checkpoint, for paired comparisons later.
            for key, metric in ((attrs.MIOU_CI, "miou"), (attrs.BOUNDARY_F1_CI, "boundary_f1")):
                score = estimate([summary.per_image], metric)
                trial.set_user_attr(key, [score.low, score.high])
            summary.per_image.save(work / PER_IMAGE_FILE)
        recorded = {
            attrs.BEST_EPOCH: summary.best_epoch,
            attrs.EPOCH_SECONDS: [round(s, 3) for s in summary.epoch_seconds],
            attrs.FIT_SECONDS: round(summary.fit_seconds, 3),
            attrs.COMPILE_SECONDS: round(summary.compile_seconds, 3),
            attrs.CACHE: summary.cache,
            attrs.TRAINABLE_PARAMS: summary.trainable_params,
            attrs.TOTAL_PARAMS: summary.total_params,
            attrs.LATENCY_MS: summary.latency_ms,
            attrs.DEVICE: device_description(torch.device(summary.device)),
            attrs.VERSIONS: package_versions(),
        }
        for key, value in recorded.items():
            trial.set_user_attr(key, value)

    def _upload(self, trial: optuna.Trial, work: Path) -> None:
        files = {
            attrs.CHECKPOINT: CHECKPOINT_NAME,
            attrs.CONFIG_ARTIFACT: CONFIG_NAME,
            attrs.PER_IMAGE: PER_IMAGE_FILE,
        }
        for key, name in files.items():
            if (work / name).exists():
                trial.set_user_attr(key, upload(trial, self.artifact_store, work / name))


def _objective_value(summary, metric: str) -> float:
    if metric in ("fit_seconds", "trainable_params", "latency_ms"):
        return float(getattr(summary, metric))
    return float(summary.best_metrics[metric])
