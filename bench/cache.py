"""The frozen-prefix cache: one 4-trial study at full freeze, run with `cache: off` and again
with `cache: auto`, each through `tuner run` in a fresh TUNER_HOME (so the cached study starts
from an empty cache and its first trial fills it).

Full run: vit_b at 512x512 from an official-format state dict of random weights (shapes and
cost are what matter here), 8 training and 2 validation images, 2 epochs per trial, batch 2.
`cached_speedup` is the uncached study's trials 2 to 4 over the cached one's, by the trials'
own fit time; the metrics of each trial pair are compared too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.common import machine, scratch_home, tuner_run
from tuner.core import paths
from tuner.core.cache import FeatureCache


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
        args = ["--checkpoint", str(checkpoint)] if checkpoint else []
        done = tuner_run(home, "cache", *args, "--no-report", space=space(s, cache))
        if done.returncode != 0:
            raise RuntimeError(done.output)
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
            for t in done.trials
        ]
    return [{"wall_seconds": done.wall_seconds, "cache_bytes": usage.bytes}, *trials]


def random_checkpoint(model: str, folder: Path) -> Path | None:
    """An official-format state dict of random weights for a vit_* model (shapes and cost are
    what the benchmarks need), saved in `folder`; None for the embedded models."""
    if not model.startswith("vit_"):
        return None
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = folder / f"sam_{model}_random.pth"
    torch.save(sam_model_registry[model]().state_dict(), path)
    return path


def run(quick: bool = False) -> dict:
    s = settings(quick)
    with scratch_home() as home:
        checkpoint = random_checkpoint(s["model"], home)
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
