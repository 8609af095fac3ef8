"""Frozen-prefix features for a trial: read from the cache where another trial (or worker, or
an earlier run) computed them, computed and stored where not.

What is stored: for `freeze_depth = k`, block k's output tokens per augmented training view and
per validation window; when the whole encoder is frozen, the neck's output instead (smaller for
the official models, and the head then trains alone). The key holds everything the features
depend on, so any change reads a different feature set and never a stale one: a hash of the
frozen weights themselves (checkpoint, seeded initialisation and positional resizing included),
the model, k, the crop, the augmentation, the seed, the image files (path, size, mtime), the
device's precision, the storage dtype, torch's version and this module's format number.

Features pass through the storage dtype even on a miss, so a trial's result does not depend on
whether its features were computed or read. float16 halves the size, int8 (per-token scales)
halves it again; bench/README.md measures what each changes. Which views and which dtype a
study stores, when its features would not fit the cache's limit, is the plan's choice
(`tuner plan`, before a study's first trial).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from tuner.core.cache import Codec, FeatureCache, FeatureSet, fingerprint_tensors
from tuner.core.config import TrainConfig
from tuner.core.data.transforms import Augment, AugmentedSet, view_image, view_label
from tuner.core.environment import autocast, placement, precision_name
from tuner.core.inference import OVERLAP
from tuner.core.model import Segmenter

FORMAT = 1  # bump whenever the prefix computation itself changes


def dataset_fingerprint(dataset) -> str | None:
    """Of the image files a dataset reads; None for datasets that are not file-backed."""
    fingerprint = getattr(dataset, "fingerprint", None)
    return fingerprint(targets=False) if fingerprint is not None else None


def prefix_key(model: Segmenter, config: TrainConfig, data: str, device: torch.device) -> dict:
    """The part of a feature set's key shared by its training views and validation windows."""
    return {
        "format": FORMAT,
        "torch": torch.__version__,
        "model": config.model,
        "weights": fingerprint_tensors(model.frozen_state()),
        "cut": "neck" if model.fully_frozen else model.prefix_depth,
        "crop": list(config.image_size),
        "data": data,
        "precision": precision_name(device, placement(model)[1]),
        "dtype": config.cache_dtype,
    }


@dataclass
class Batch:
    """A training batch whose inputs may still need the frozen prefix run on some images."""

    names: list[str]
    labels: torch.Tensor
    features: list[torch.Tensor | None]
    images: list[torch.Tensor | None]


class CachedViews(Dataset):
    """Training views as (entry name, label, cached features or None, image or None): on a hit
    the image is neither decoded nor augmented, only its label is cropped."""

    def __init__(self, views: AugmentedSet, store: FeatureSet) -> None:
        self.views, self.store = views, store

    def __len__(self) -> int:
        return len(self.views)

    def __getitem__(self, index: int):
        dataset, crop = self.views.dataset, self.views.aug.crop
        label = dataset.target(index)
        view = self.views.draw(index, label.shape)
        name = f"v{self.views.view}-{index}"
        features = self.store.get(name)
        image = None if features is not None else view_image(dataset.image(index), view, crop)
        return name, view_label(label, view, crop), features, image

    @staticmethod
    def collate(items) -> Batch:
        names, labels, features, images = zip(*items)
        return Batch(list(names), torch.stack(labels), list(features), list(images))


class PrefixFeatures:
    """The frozen prefix of one trial, through the cache: one feature set for the training
    views and one for the validation windows."""

    def __init__(
        self,
        model: Segmenter,
        config: TrainConfig,
        device: torch.device,
        train: FeatureSet,
        val: FeatureSet,
        log: Callable[[str], None],
    ) -> None:
        self.model, self.config, self.device = model, config, device
        self.train, self.val, self.log = train, val, log
        self.codec = Codec.of(config.cache_dtype)
        self.placement = placement(model)  # where and in what dtype features are consumed
        self.train_hits = self.train_misses = 0

    @classmethod
    @contextlib.contextmanager
    def open(cls, cache: FeatureCache, model, config, train_set, val_set, device, log):
        """None when caching does not apply: nothing frozen, cache off, or data not on disk."""
        data = (dataset_fingerprint(train_set), dataset_fingerprint(val_set))
        if config.cache == "off" or model.prefix_depth == 0 or None in data:
            yield None
            return
        shared = prefix_key(model, config, data[0], device)
        aug = asdict(Augment.of(config))
        train_key = {**shared, "split": "train", "augment": aug, "seed": config.seed}
        val_key = {**shared, "data": data[1], "split": "val", "overlap": OVERLAP}
        dtype = config.cache_dtype
        with cache.open(train_key, dtype) as train, cache.open(val_key, dtype) as val:
            yield cls(model, config, device, train, val, log)

    def views(self, views: AugmentedSet) -> CachedViews:
        return CachedViews(views, self.train)

    def compute(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen prefix of a batch as a reader of the cache gets it back (on the CPU)."""
        with autocast(self.device):
            features = self.model.frozen_prefix(images.to(*self.placement, non_blocking=True))
        return self.codec.round_trip(features.to("cpu"))

    def inputs(self, batch: Batch) -> torch.Tensor:
        """The batch's prefix features on the device: cached ones read, missing ones computed
        together and stored."""
        missing = [i for i, f in enumerate(batch.features) if f is None]
        features = list(batch.features)
        self.train_hits += len(features) - len(missing)
        self.train_misses += len(missing)
        if missing:
            computed = self.compute(torch.stack([batch.images[i] for i in missing]))
            for i, tensor in zip(missing, computed):
                features[i] = tensor
                self._store(self.train, batch.names[i], tensor)
        return torch.stack(features).to(*self.placement, non_blocking=True)

    def window_features(self, index: int, number: int, window: torch.Tensor) -> torch.Tensor:
        """Prefix features of validation image `index`'s window `number`."""
        name = f"{index}-w{number}"
        features = self.val.get(name)
        if features is None:
            features = self.compute(window)[0]
            self._store(self.val, name, features)
        return features.unsqueeze(0).to(*self.placement)

    def _store(self, store: FeatureSet, name: str, tensor: torch.Tensor) -> None:
        was_full = store.full
        store.put(name, tensor)
        if store.full and not was_full:
            self.log("feature cache is full: further features are computed, not stored")

    def stats(self) -> dict[str, Any]:
        """Hits and misses of this trial, for its record."""
        return {
            "train_hits": self.train_hits,
            "train_misses": self.train_misses,
            "val_hits": self.val.hits,
            "val_misses": self.val.misses,
            "stored": self.train.stored + self.val.stored,
            "full": self.train.full or self.val.full,
        }
