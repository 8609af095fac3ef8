"""What bounding the augmented views costs: the `losses` study's configuration (CE) trained
with a fresh view every epoch (`aug_views: null`) and with K views reused in turn, on the
embedded default. Reports val mIoU, the views the frozen-prefix cache stores, and the time of
a first (cache-filling) and a second (cache-hitting) trial of each.
"""

from __future__ import annotations

from bench.common import machine, scratch_home
from tuner.core import paths
from tuner.core.cache import FeatureCache
from tuner.core.config import TrainConfig
from tuner.core.data import synth
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.synth import SynthSpec
from tuner.core.train import fit
from tuner.search.space import find_space, load_space


def run(quick: bool = False) -> dict:
    base = TrainConfig.from_dict({**load_space(find_space("losses")).fixed, "loss": "ce"})
    spec, choices = SynthSpec(), [None, 3, 2, 1]
    if quick:
        base = base.replace(epochs=2, image_size=(64, 128), batch_size=2)
        spec, choices = SynthSpec(train=4, val=2, height=64, width=128), [None, 1]
    rows = []
    with scratch_home():
        root = synth.embedded(paths.data_dir(), spec, progress=False)
        train, val = CityscapesDataset(root, "train"), CityscapesDataset(root, "val")
        for views in choices:
            config = base.replace(aug_views=views)
            # A cache of its own: view v is the same under every aug_views, so a shared cache
            # would serve this setting the views an earlier one stored.
            cache = FeatureCache.at(paths.cache_dir() / f"views-{views}")
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
