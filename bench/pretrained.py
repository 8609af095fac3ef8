"""Does the shipped stand-in behave like a pretrained encoder? On the embedded default, in one
run: learning curves from the stand-in (encoder learning rate x0.1, real use's default) against
sam_tiny_scratch (x1.0, what the spaces used before the stand-in), nothing frozen; then the
`freeze` study's whole grid (frozen depth x encoder learning-rate multiplier) from the stand-in.
Each reports val mIoU after every epoch; the grid runs with the frozen-prefix cache, as the
study does.
"""

from __future__ import annotations

import itertools

from bench.common import machine, scratch_home
from tuner.core import paths
from tuner.core.cache import FeatureCache
from tuner.core.config import TrainConfig
from tuner.core.data import synth
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.synth import SynthSpec
from tuner.core.train import fit
from tuner.search.space import find_space, load_space


def curve(config: TrainConfig, root, cache) -> dict:
    history = []

    class Record:
        def on_epoch_end(self, epoch, metrics):
            history.append(round(metrics["val_miou"], 4))
            return False

    train = CityscapesDataset(root, "train", limit=config.train_limit)
    val = CityscapesDataset(root, "val", limit=config.val_limit)
    summary = fit(
        config, train, val, callback=Record(), progress=False, log=lambda m: None, cache=cache
    )
    return {
        "val_miou_per_epoch": history,
        "best_val_miou": round(summary.best_metrics["val_miou"], 4),
        "last_epoch_gain": round(history[-1] - history[-2], 4) if len(history) > 1 else None,
        "fit_seconds": round(summary.fit_seconds, 1),
    }


def run(quick: bool = False) -> dict:
    freeze_space = load_space(find_space("freeze"))
    base = TrainConfig.from_dict(freeze_space.fixed)
    spec = SynthSpec()
    grid = list(itertools.product(*freeze_space.grid().values()))
    if quick:
        base = base.replace(
            epochs=2, image_size=(64, 128), train_limit=4, val_limit=2, batch_size=2
        )
        spec = SynthSpec(train=4, val=2, height=64, width=128)
        grid = grid[:2]
    names = list(freeze_space.grid())
    with scratch_home():
        root = synth.embedded(paths.data_dir(), spec, progress=False)
        cache = FeatureCache.at(paths.cache_dir())
        start = {
            "stand-in, encoder_lr_mult 0.1": curve(base, root, cache),
            "scratch, encoder_lr_mult 1.0": curve(
                base.replace(model="sam_tiny_scratch", encoder_lr_mult=1.0), root, cache
            ),
        }
        freeze = {
            ", ".join(f"{n}={v}" for n, v in zip(names, values)): curve(
                base.replace(**dict(zip(names, values))), root, cache
            )
            for values in grid
        }
    return {
        "machine": machine(),
        "settings": base.to_dict(),
        "start": start,
        "freeze": freeze,
        "best_of_freeze_grid": max(freeze, key=lambda k: freeze[k]["best_val_miou"]),
    }
