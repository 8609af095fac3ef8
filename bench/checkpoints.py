"""Delta checkpoints: the artifact bytes of a 10-trial vit_b study at 512² with the whole
encoder frozen (an official-format state dict of random weights), against what the whole-model
checkpoints of the previous format stored for the same trials.

"Before" is measured, not assumed: each trial's delta is exported as the standalone whole-model
file (`tuner export`, format sam-tuner/1, exactly what every trial used to upload), and the
study's other artifacts (config.json, per-image counts) are counted as they are. The study
keeps every checkpoint (`keep_checkpoints: null`) so that all ten deltas are counted; the
default `keep_checkpoints: 3` would keep three.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from bench.cache import random_checkpoint
from bench.common import machine, scratch_home, tuner_run
from tuner.core import paths
from tuner.core.checkpoint import export_checkpoint
from tuner.search import attrs


def study_space(quick: bool) -> dict:
    model, crop, depth = ("sam_tiny", [64, 128], 6) if quick else ("vit_b", [512, 512], 12)
    size = {"height": crop[0], "width": crop[1]}
    return {
        "study": "deltas",
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "none"},
        "keep_checkpoints": None,
        "fixed": {
            "model": model,
            "head": "linear",
            "loss": "ce",
            "freeze_depth": depth,
            "batch_size": 2,
            "epochs": 1,
            "image_size": crop,
        },
        "params": {
            "lr": {"type": "categorical", "choices": [1e-4 * 2**i for i in range(10)]},
        },
        "synthetic": {"train": 4, "val": 2, **size},
    }


def run(quick: bool = False) -> dict:
    space = study_space(quick)
    with scratch_home() as home:
        checkpoint = random_checkpoint(space["fixed"]["model"], home)
        args = ["--checkpoint", str(checkpoint)] if checkpoint else []
        done = tuner_run(home, "deltas", *args, "--no-report", space=space)
        if done.returncode != 0:
            raise RuntimeError(done.output)
        store = paths.default_artifact_dir()
        after = before = deltas = 0
        whole_sizes = []
        with tempfile.TemporaryDirectory() as tmp:
            for trial in done.trials:
                for key in (attrs.CHECKPOINT, attrs.CONFIG_ARTIFACT, attrs.PER_IMAGE):
                    size = os.path.getsize(store / trial.user_attrs[key])
                    after += size
                    if key != attrs.CHECKPOINT:
                        before += size
                delta = store / trial.user_attrs[attrs.CHECKPOINT]
                deltas += os.path.getsize(delta)
                whole = export_checkpoint(delta, Path(tmp) / f"{trial.number}.pt")
                whole_sizes.append(os.path.getsize(whole))
                before += whole_sizes[-1]
    return {
        "machine": machine(),
        "model": space["fixed"]["model"],
        "crop": space["fixed"]["image_size"],
        "trials": len(done.trials),
        "wall_seconds": done.wall_seconds,
        "delta_checkpoint_bytes_per_trial": deltas // len(done.trials),
        "whole_checkpoint_bytes_per_trial": max(whole_sizes),
        "artifact_bytes_before": before,
        "artifact_bytes_after": after,
        "after_over_before": round(after / before, 5),
    }
