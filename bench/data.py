"""Is data loading the bottleneck? Loader throughput (decode + augment + collate) with 0, 1
and 2 workers, against what one training step consumes, at the embedded default settings."""

from __future__ import annotations

import time

import torch

from bench.common import machine, median_seconds, scratch_home
from bench.train_step import step_fn
from tuner.core import paths
from tuner.core.config import TrainConfig
from tuner.core.data import synth
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.synth import SynthSpec
from tuner.core.data.transforms import Augment, AugmentedSet


def loader_images_per_second(dataset, batch: int, workers: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True
    )
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        seen += images.shape[0]
        if seen >= batches * batch:
            break
    return seen / (time.perf_counter() - start)


def run(quick: bool = False) -> dict:
    size = (64, 128) if quick else (256, 512)
    spec = SynthSpec(train=8, val=4, height=128, width=256) if quick else SynthSpec()
    config = TrainConfig(head="linear", image_size=size, batch_size=4 if not quick else 2)
    with scratch_home():
        root = synth.embedded(paths.data_dir(), spec, progress=False)
        train = AugmentedSet(CityscapesDataset(root, "train"), Augment(size), seed=0)
        loading = {
            f"workers_{w}": round(
                loader_images_per_second(train, config.batch_size, w, 2 if quick else 12), 2
            )
            for w in ((0,) if quick else (0, 1, 2))
        }
    step, _ = step_fn(config)
    training = config.batch_size / median_seconds(step, 1 if quick else 5, warmup=1)
    return {
        "machine": machine(),
        "image_size": list(size),
        "loader_images_per_second": loading,
        "training_images_per_second": round(training, 2),
        "loader_headroom_with_0_workers": round(loading["workers_0"] / training, 1),
    }
