"""The keys of what a study and its trials record (Optuna user attrs), in one place: the search
layer writes them, the deploy and report layers read them.

Besides these, every completed trial records the metrics of its best epoch under their own
names (`METRICS`).

They are for code to read. optuna-dashboard shows user attrs raw (JSON cut at 1,024
characters, YAML without its line breaks), so the two long records, the search space and the
quantization report, are kept as study *system* attributes (`record`, `set_record`), which the
dashboard does not list; people read them in the study's note (`tuner.report._note`).
"""

from __future__ import annotations

from typing import Any

import optuna

# Study attributes.
ARTIFACT_STORE = "artifact_store"  # where checkpoints go: a folder or s3://bucket
SEARCH_SPACE = "search_space"  # the YAML text the study was created with (a record)
DATA_ROOT = "data_root"  # the Cityscapes root its trials trained on
QUANTIZATION = "quantization"  # the FP32-vs-INT8 comparison of `tuner quantize` (a record)
CONFIRMATION_STUDY = "confirmation_study"  # where its seed confirmations run (NAME.confirm)
CONFIRMS_STUDY = "confirms_study"  # on a confirmation study: the study it confirms
DECISION = "decision"  # one line: the headline value, its interval, the verdict (for people)
CACHE_PLAN = "cache_plan"  # what the plan chose to store in the feature cache, and why
STOPPED = "stopped"  # why the study ended before its budget (the space's stop: rule)
WARM_STARTED = "warm_started"  # what was carried over from an earlier study, and how
# The space's fault_tolerance (a record): how `tuner storage-proxy` reaps the study's stale
# trials, since workers behind the proxy cannot.
FAULT_TOLERANCE = "fault_tolerance"
# "checkpoint_dropped:<trial number>": why that trial's weights were removed (keep_checkpoints).
# One key per trial, so that workers dropping at once never overwrite each other's record.
CHECKPOINT_DROPPED = "checkpoint_dropped:"

# Trial attributes.
CONFIG = "config"  # the whole TrainConfig, as a dict
WORKER = "worker"  # host:pid that ran it
RETRY_OF = "retry_of"  # the trial number it repeats after a kill or Ctrl-C
REQUEUED_BECAUSE = "requeued_because"
FAIL_REASON = "fail_reason"
HISTORY = "history"  # per epoch: epoch, train_loss, val_miou, val_boundary_f1
BEST_EPOCH = "best_epoch"
EPOCH_SECONDS = "epoch_seconds"
FIT_SECONDS = "fit_seconds"
COMPILE_SECONDS = "compile_seconds"  # inside fit_seconds, outside epoch_seconds
CACHE = "cache"  # frozen-prefix cache hits and misses
TRAINABLE_PARAMS = "trainable_params"
TOTAL_PARAMS = "total_params"
DEVICE = "device"  # what it ran on, with the CPU's instruction sets
VERSIONS = "versions"  # python, torch, optuna, ...
LATENCY_MS = "latency_ms"  # median ms per crop-sized image, batch 1, where it trained
MIOU_CI = "val_miou_ci"  # [low, high]: 95 % bootstrap interval over validation images
BOUNDARY_F1_CI = "val_boundary_f1_ci"
CONFIRMS = "confirms"  # on a confirmation trial: the number of the trial it repeats
SEED = "seed"  # ... and the seed it runs with
WARM_FROM = "warm_from"  # "study#number": the earlier study's trial it repeats (enqueued)
CARRIED_FROM = "carried_from"  # "study#number": the earlier trial it is a copy of (no run)
DUPLICATE_OF = "duplicate_of"  # a grid point another worker had taken first: not run, not counted
CHECKPOINT = "checkpoint_artifact_id"  # best.pt in the artifact store
PER_IMAGE = "per_image_artifact_id"  # per-image confusion and boundary counts (npz)
CONFIG_ARTIFACT = "config_artifact_id"  # config.json beside it

METRICS = (
    "val_miou",
    "val_boundary_f1",
    "val_pixel_acc",
    "val_per_class_iou",
    "val_per_class_boundary_f1",
)


# Records: long study attributes kept out of the dashboard's attribute table.
RECORD_PREFIX = "sam_tuner:"


def record(study: optuna.Study, key: str, default: Any = None) -> Any:
    """A study's record `key` (`SEARCH_SPACE`, `QUANTIZATION`); studies written by earlier
    versions kept it as a user attr, which is read when there is no record.

        >>> study = optuna.create_study()
        >>> set_record(study, QUANTIZATION, {"chosen": "int8 static"})
        >>> record(study, QUANTIZATION)["chosen"], QUANTIZATION in study.user_attrs
        ('int8 static', False)
    """
    stored = study._storage.get_study_system_attrs(study._study_id)
    if RECORD_PREFIX + key in stored:
        return stored[RECORD_PREFIX + key]
    return study.user_attrs.get(key, default)


def set_record(study: optuna.Study, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, RECORD_PREFIX + key, value)
