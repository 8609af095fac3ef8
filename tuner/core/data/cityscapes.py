"""The Cityscapes folder layout: leftImg8bit/<split>/<city>/*_leftImg8bit.png and
gtFine/<split>/<city>/*_gtFine_<suffix> (plus disparity/<split>/<city>/*_disparity.png)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tuner.core.data.check import label_id_problem, size_problem
from tuner.core.data.labels import encode_target
from tuner.core.data.readers import read_image
from tuner.core.errors import DatasetError
from tuner.core.fsutil import fingerprint_files

SPLITS = ("train", "val", "test")
IMAGE_SUFFIX = "_leftImg8bit.png"
TARGET_SUFFIXES = {
    "semantic": "_gtFine_labelIds.png",
    "instance": "_gtFine_instanceIds.png",
    "color": "_gtFine_color.png",
    "polygon": "_gtFine_polygons.json",
    "depth": "_disparity.png",
}


@dataclass(frozen=True)
class Sample:
    image: Path
    targets: dict[str, Path]

    @property
    def stem(self) -> str:
        """city_seq_frame, the key the official evaluation matches files by."""
        return self.image.name[: -len(IMAGE_SUFFIX)]


class CityscapesDataset:
    """Image/target pairs of one split. Semantic targets come back as train ids (255 = ignore).

    Errors are raised while indexing, not halfway through an epoch: an unknown split, a
    missing folder and an image without its label file all name what is wrong.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        target_type: str | tuple[str, ...] = "semantic",
        limit: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        types = (target_type,) if isinstance(target_type, str) else tuple(target_type)
        for t in types:
            if t not in TARGET_SUFFIXES:
                raise DatasetError(
                    f"unknown target type {t!r}; expected one of {', '.join(TARGET_SUFFIXES)}"
                )
        self.split, self.target_types = split, types
        self.images_dir = self.root / "leftImg8bit" / split
        self.targets_dir = self.root / "gtFine" / split
        self.disparity_dir = self.root / "disparity" / split
        for folder in (self.images_dir, self.targets_dir):
            if not folder.is_dir():
                raise DatasetError(
                    f"{folder}: folder not found; a Cityscapes root holds leftImg8bit/{split} "
                    f"and gtFine/{split} (root given: {self.root})"
                )
        self.samples = self._index(limit)

    def _index(self, limit: int | None) -> list[Sample]:
        if limit is not None and limit < 1:
            raise DatasetError(f"limit={limit}: expected at least 1 image")
        samples = []
        for image in sorted(self.images_dir.glob(f"*/*{IMAGE_SUFFIX}")):
            city, stem = image.parent.name, image.name[: -len(IMAGE_SUFFIX)]
            targets = {}
            for t in self.target_types:
                folder = self.disparity_dir if t == "depth" else self.targets_dir
                path = folder / city / f"{stem}{TARGET_SUFFIXES[t]}"
                if not path.is_file():
                    raise DatasetError(f"{image}: its {t} target {path} is missing")
                targets[t] = path
            samples.append(Sample(image, targets))
            if limit is not None and len(samples) >= limit:
                break
        if not samples:
            raise DatasetError(f"{self.images_dir}: no *{IMAGE_SUFFIX} files under city folders")
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image, from the file headers (nothing is decoded)."""
        sizes = []
        for sample in self.samples:
            with Image.open(sample.image) as img:
                sizes.append((img.height, img.width))
        return sizes

    def fingerprint(self, targets: bool = True) -> str:
        """Of the files this split reads (path, size, mtime): any change to them changes it."""
        files = [s.image for s in self.samples]
        if targets:
            files += [path for s in self.samples for path in s.targets.values()]
        return fingerprint_files(files, self.root)

    def image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return read_image(self.samples[index].image, mode="RGB")

    def target(self, index: int, target_type: str = "semantic"):
        path = self.samples[index].targets[target_type]
        if target_type == "polygon":
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise DatasetError(f"{path}: unreadable polygons file: {exc}") from None
        if target_type == "semantic":
            label_ids = read_image(path, mode="L")
            problem = label_id_problem(path, label_ids)
            if problem is not None:
                raise DatasetError(problem)
            return encode_target(label_ids)
        if target_type == "color":
            return read_image(path, mode="RGB")
        return read_image(path, mode=None)  # instance / disparity: 16-bit as stored

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, target = self.image(index), self.target(index, self.target_types[0])
        if isinstance(target, np.ndarray):
            sample = self.samples[index]
            path = sample.targets[self.target_types[0]]
            problem = size_problem(sample.image, path, image.shape[:2], target.shape[:2])
            if problem is not None:
                raise DatasetError(problem)
        return image, target
