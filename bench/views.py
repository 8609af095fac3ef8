"""What bounding the augmented views costs: the `losses` study's configuration (CE) trained
with a fresh view every epoch (`aug_views: null`) and with K views reused in turn, on the
embedded default. Reports val mIoU, the views the frozen-prefix cache stores, and the time of
a first (cache-filling) and a second (cache-hitting) trial of each.
"""

from __future__ import annotations

from bench.common import machine, scratch_home
from tuner import paths
from tuner.config import TrainConfig
from tuner.data.cityscapes import CityscapesDataset
from tuner.data.synth import SynthSpec
from tuner.space import find_space, load_space
from tuner.train import fit


def run(quick: bool = False) -> dict:
    base = TrainConfig.from_dict({**load_space(find_space("losses")).fixed, "loss": "ce"})
    spec, choices = SynthSpec(), [None, 3, 2, 1]
    if quick:
        base = base.replace(epochs=2, image_size=(64, 128), batch_size=2)
        spec, choices = SynthSpec(train=4, val=2, height=64, width=128), [None, 1]
    rows = []
    with scratch_home():
        root = paths.synthetic_data(spec, progress=False)
        train, val = CityscapesDataset(root, "train"), CityscapesDataset(root, "val")
        for views in choices:
            config = base.replace(aug_views=views)
            cache = paths.feature_cache()
            before = cache.usage().bytes
            first, second = (
                fit(config, train, val, progress=False, log=lambda m: None, cache=cache)
                for _ in range(2)
            )
            rows.append(
                {
                    "aug_views": views,
                    "views_per_image": min(views or config.epochs, config.epochs),
                    "best_val_miou": round(second.best_metrics["val_miou"], 4),
                    "cache_mib": round((cache.usage().bytes - before) / 2**20, 1),
                    "first_trial_seconds": round(first.fit_seconds, 1),
                    "cached_trial_seconds": round(second.fit_seconds, 1),
                }
            )
    return {"machine": machine(), "settings": base.to_dict(), "results": rows}
