"""Checks that a Cityscapes-format split can train a correct model, before it trains one.

Two kinds of bad labels used to train a wrong model without a word: a label image of another
size than its photo (the photo was stretched to it) and label ids outside the Cityscapes table
(a trainIds file passed as labelIds, say), which trained to `loss 0.0000, mIoU nan`. Every
sample is checked when it is read (free: the arrays are decoded anyway), and a whole split is
checked once before training, which also catches a split without a single evaluated pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from tuner.core.data.labels import IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, NUM_CLASSES, VALID_LABEL_IDS
from tuner.core.data.readers import read_image
from tuner.core.errors import DatasetError

_VERIFIED: set[str] = set()  # fingerprints of splits already checked in this process


def size_problem(image: Path, label: Path, image_hw, label_hw) -> str | None:
    """Sizes as (height, width)."""
    if tuple(image_hw) == tuple(label_hw):
        return None
    return (
        f"{label}: label size {label_hw[0]}x{label_hw[1]} differs from its image {image} "
        f"({image_hw[0]}x{image_hw[1]}); it would be stretched to fit"
    )


def label_id_problem(label_path: Path, label_ids: np.ndarray) -> str | None:
    """Values that are not Cityscapes label ids, named, with the likely cause."""
    counts = np.bincount(label_ids.ravel(), minlength=256)
    bad = np.flatnonzero(counts[~VALID_LABEL_IDS])
    if not bad.size:
        return None
    values = np.flatnonzero(~VALID_LABEL_IDS)[bad]
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if values.size > 8 else "")
    share = counts[values].sum() / label_ids.size
    hint = ""
    if IGNORE_INDEX in values:  # trainIds files hold 0-18 and 255
        hint = " (was a *_gtFine_labelTrainIds.png file passed where labelIds belong?)"
    return (
        f"{label_path}: values {shown} are not Cityscapes label ids 0-33 "
        f"({share:.1%} of its pixels){hint}"
    )


@dataclass
class SplitReport:
    split: str
    images: int = 0
    evaluated_pixels: int = 0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.split}: {self.images} images, {self.evaluated_pixels:,} evaluated pixels, "
            f"{len(self.problems)} problem(s)"
        )


def check_split(dataset) -> SplitReport:
    """Every image/label pair of a CityscapesDataset: sizes, label ids, evaluated pixels."""
    report = SplitReport(dataset.split)
    highest = -1  # the largest label id seen: Cityscapes labelIds go well past 18
    for sample in dataset.samples:
        report.images += 1
        label_path = sample.targets.get("semantic")
        if label_path is None:
            continue
        try:
            with Image.open(sample.image) as img, Image.open(label_path) as lab:
                sizes = (img.height, img.width), (lab.height, lab.width)
            label_ids = read_image(label_path, mode="L")
        except OSError as exc:
            report.problems.append(f"{sample.image}: unreadable: {exc}")
            continue
        except DatasetError as exc:
            report.problems.append(str(exc))
            continue
        problem = size_problem(sample.image, label_path, *sizes)
        if problem is None:
            problem = label_id_problem(label_path, label_ids)
        if problem is not None:
            report.problems.append(problem)
            continue
        highest = max(highest, int(label_ids.max()))
        report.evaluated_pixels += int((LABEL_ID_TO_TRAIN_ID[label_ids] != IGNORE_INDEX).sum())
    if not report.problems and report.images and report.evaluated_pixels == 0:
        report.problems.append(
            f"{dataset.targets_dir}: no pixel of the {dataset.split} split has one of the 19 "
            "evaluated classes; every label is ignore (255) after the label-id mapping"
        )
    elif not report.problems and 0 <= highest < NUM_CLASSES:
        report.problems.append(
            f"{dataset.targets_dir}: every label of the {dataset.split} split holds only values "
            f"0-{highest}: these look like *_gtFine_labelTrainIds.png files (train ids 0-18), "
            "not labelIds (0-33, with road 7, building 11, sky 23)"
        )
    return report


def check_root(root: Path, dataset_cls) -> list[SplitReport]:
    """`tuner data check`: train and val must be there and clean; test is checked if present
    (its official labels are all ignore, so it may have no evaluated pixel)."""
    reports = []
    for split in ("train", "val", "test"):
        try:
            dataset = dataset_cls(root, split)
        except DatasetError as exc:
            if split == "test":
                continue
            reports.append(SplitReport(split, problems=[str(exc)]))
            continue
        report = check_split(dataset)
        if split == "test":
            report.problems = [p for p in report.problems if "no pixel of the" not in p]
        reports.append(report)
    return reports


def require_valid(dataset, fingerprint: str | None = None) -> None:
    """Raise DatasetError naming the first problem of a split (once per process and split)."""
    if fingerprint is not None and fingerprint in _VERIFIED:
        return
    report = check_split(dataset)
    if report.problems:
        more = len(report.problems) - 1
        suffix = f" (and {more} more problem(s); `tuner data check` lists them)" if more else ""
        raise DatasetError(report.problems[0] + suffix)
    if fingerprint is not None:
        _VERIFIED.add(fingerprint)
