"""The frozen-prefix cache: one 4-trial study at full freeze, run with `cache: off` and again
with `cache: auto`, each through `tuner run` in a fresh TUNER_HOME (so the cached study starts
from an empty cache and its first trial fills it).

Full run: vit_b at 512x512 from an official-format state dict of random weights (shapes and
cost are what matter here), 8 training and 2 validation images, 2 epochs per trial, batch 2.
`cached_speedup` is the uncached study's trials 2 to 4 over the cached one's, by the trials'
own fit time; the metrics of each trial pair are compared too.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from bench.common import machine, scratch_home
from tuner.core import paths
from tuner.core.cache import FeatureCache
from tuner.core.data import synth
from tuner.core.data.synth import SynthSpec
from tuner.search.study import load_existing_study, open_storage


def settings(quick: bool) -> dict:
    if quick:
        return {
            "model": "sam_tiny",
            "crop": [64, 128],
            "synthetic": {"train": 4, "val": 2, "height": 64, "width": 128},
            "epochs": 2,
            "batch_size": 2,
        }
    return {
        "model": "vit_b",
        "crop": [512, 512],
        "synthetic": {"train": 8, "val": 2, "height": 512, "width": 512},
        "epochs": 2,
        "batch_size": 2,
    }


def space(s: dict, cache: str) -> dict:
    depth = 12 if s["model"] == "vit_b" else 6
    return {
        "study": "cache",
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "none"},
        "fixed": {
            "model": s["model"],
            "head": "linear",
            "loss": "ce",
            "freeze_depth": depth,
            "batch_size": s["batch_size"],
            "epochs": s["epochs"],
            "image_size": s["crop"],
            "cache": cache,
        },
        "params": {"lr": {"type": "categorical", "choices": [1e-3, 3e-3, 1e-2, 3e-2]}},
        "synthetic": s["synthetic"],
    }


def run_study(s: dict, cache: str, checkpoint: Path | None) -> list[dict]:
    with scratch_home() as home:
        path = home / "cache.yaml"
        path.write_text(yaml.safe_dump(space(s, cache)))
        synth.embedded(paths.data_dir(), SynthSpec(**s["synthetic"]), progress=False)
        command = [sys.executable, "-m", "tuner", "run", "--study", "cache", "--space", str(path)]
        if checkpoint is not None:
            command += ["--checkpoint", str(checkpoint)]
        start = time.perf_counter()
        done = subprocess.run([*command, "--no-report"], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
        wall = time.perf_counter() - start
        study = load_existing_study("cache", open_storage(None))
        usage = FeatureCache.at(paths.cache_dir()).usage()
        trials = [
            {
                "number": t.number,
                "lr": t.params["lr"],
                "fit_seconds": t.user_attrs["fit_seconds"],
                "val_miou": t.user_attrs["val_miou"],
                "val_boundary_f1": t.user_attrs["val_boundary_f1"],
                "cache": t.user_attrs.get("cache", {}),
            }
            for t in sorted(study.trials, key=lambda t: t.number)
        ]
    return [{"wall_seconds": round(wall, 1), "cache_bytes": usage.bytes}, *trials]


def run(quick: bool = False) -> dict:
    s = settings(quick)
    with scratch_home() as home:
        checkpoint = None
        if s["model"] == "vit_b":
            from segment_anything import sam_model_registry

            torch.manual_seed(0)
            checkpoint = home / "sam_vit_b_random.pth"
            torch.save(sam_model_registry["vit_b"]().state_dict(), checkpoint)
        off_head, *off = run_study(s, "off", checkpoint)
        on_head, *on = run_study(s, "auto", checkpoint)
    later_off = sum(t["fit_seconds"] for t in off[1:])
    later_on = sum(t["fit_seconds"] for t in on[1:])
    return {
        "machine": machine(),
        "settings": s,
        "trials": {"cache_off": off, "cache_on": on},
        "wall_seconds": {
            "cache_off": off_head["wall_seconds"],
            "cache_on": on_head["wall_seconds"],
        },
        "cache_bytes": on_head["cache_bytes"],
        "first_trial_seconds": {
            "cache_off": off[0]["fit_seconds"],
            "cache_on": on[0]["fit_seconds"],
        },
        "cached_speedup": round(later_off / later_on, 2),
        "max_miou_difference": max(abs(a["val_miou"] - b["val_miou"]) for a, b in zip(off, on)),
    }
