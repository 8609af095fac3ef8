"""Does the shipped stand-in behave like a pretrained encoder? On the embedded default, in one
run: learning curves from the stand-in against from scratch (the `losses` study's settings
with CE), and the curve over frozen depth from the stand-in (the `freeze` study's grid), each
with val mIoU after every epoch. The freeze grid runs with the frozen-prefix cache, as a study
would.
"""

from __future__ import annotations

from bench.common import machine, scratch_home
from tuner import paths
from tuner.config import TrainConfig
from tuner.data.cityscapes import CityscapesDataset
from tuner.data.synth import SynthSpec
from tuner.space import find_space, load_space
from tuner.train import fit


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
    base = TrainConfig.from_dict({**freeze_space.fixed, "freeze_depth": 0})
    spec = SynthSpec()
    depths = freeze_space.grid()["freeze_depth"]
    if quick:
        base = base.replace(
            epochs=2, image_size=(64, 128), train_limit=4, val_limit=2, batch_size=2
        )
        spec = SynthSpec(train=4, val=2, height=64, width=128)
        depths = [0, 6]
    with scratch_home():
        root = paths.synthetic_data(spec, progress=False)
        cache = paths.feature_cache()
        start = {
            "stand-in": curve(base, root, cache),
            "scratch": curve(base.replace(model="sam_tiny_scratch"), root, cache),
        }
        freeze = {str(d): curve(base.replace(freeze_depth=d), root, cache) for d in depths}
    return {
        "machine": machine(),
        "settings": {k: v for k, v in base.to_dict().items() if k != "freeze_depth"},
        "start": start,
        "freeze": freeze,
        "best_freeze_depth": max(freeze, key=lambda d: freeze[d]["best_val_miou"]),
    }
