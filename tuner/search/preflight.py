"""Checks before the first trial of `tuner run`: a study that cannot succeed is refused with one
line, before the study is created and before any trial trains."""

from __future__ import annotations

from pathlib import Path

from tuner.core.config import TrainConfig
from tuner.core.data.check import require_valid
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.errors import ConfigError
from tuner.search.space import SearchSpace


def preflight(space: SearchSpace, data_root: Path) -> None:
    """The data against the space, before the first trial: both splits there and clean, the
    largest batch the space can draw no larger than the training set, and every crop it can
    draw fillable from the smallest training image at the largest scale."""
    fixed = TrainConfig.from_dict(space.fixed, source=space.source)
    train = CityscapesDataset(data_root, "train", limit=fixed.train_limit)
    val = CityscapesDataset(data_root, "val", limit=fixed.val_limit)
    for dataset in (train, val):
        require_valid(dataset, dataset.fingerprint())
    batch = max(space.possible_values("batch_size"))
    if batch > len(train):
        raise ConfigError(
            f"{space.source}: batch_size={batch} is larger than the training set "
            f"({len(train)} images in {train.images_dir})"
        )
    smallest = min(train.image_sizes(), key=lambda hw: hw[0] * hw[1])
    scale = max(high for _, high in space.possible_values("scale_range"))
    for crop in space.possible_values("image_size"):
        if crop[0] > smallest[0] * scale or crop[1] > smallest[1] * scale:
            raise ConfigError(
                f"{space.source}: image_size={list(crop)} is larger than the smallest training "
                f"image ({smallest[0]}x{smallest[1]}) even at scale {scale}: its crops would "
                "be mostly padding"
            )
