"""The frozen-prefix cache: one 4-trial study at full freeze, run with `cache: off` and again
with `cache: auto`, each through `tuner run` in a fresh TUNER_HOME (so the cached study starts
from an empty cache and its first trial fills it).

Full run: vit_b at 512x512 from an official-format state dict of random weights (shapes and
cost are what matter here), 8 training and 2 validation images, 2 epochs per trial, batch 2.
`cached_speedup` is the uncached study's trials 2 to 4 over the cached one's, by the trials'
own fit time; the metrics of each trial pair are compared too.

`--scale`: a scale model of Cityscapes vit_b at 1024² against the 20 GiB default limit. vit_b
(official-format random weights) with the whole encoder frozen, on a synthetic set of 32 train
and 8 val images at 256x512 (crop 256x512), 4 trials x 4 epochs with a fresh view per epoch,
and a cache limit such that one view-epoch of features
(training views plus validation windows) is 1.4 times the limit, as 18.7 + 9.4 GB is against
20 GiB. Three arms, each in a fresh TUNER_HOME: the cache off; today's behaviour
(`--cache-as-configured`: views and dtype as configured, the cache thrashes); and the plan's
decision. Also the int8 storage's error on the features themselves.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bench.common import machine, scratch_home, tuner_run
from tuner.core import paths
from tuner.core.cache import FeatureCache
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


def run(quick: bool = False, scale: bool = False) -> dict:
    if scale:
        return run_scale()
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


SCALE = {
    "model": "vit_b",
    "crop": [256, 512],
    "synthetic": {"train": 32, "val": 8, "height": 256, "width": 512},
    "epochs": 4,
    "batch_size": 4,
}


def scale_space(cache: str) -> dict:
    return space(SCALE, cache)


def scale_limit() -> int:
    """Bytes such that one view-epoch of float16 features is 1.4 times the limit."""
    from tuner.core.cache import Codec
    from tuner.core.config import TrainConfig
    from tuner.core.model import build_segmenter

    fixed = scale_space("auto")["fixed"]
    model = build_segmenter(TrainConfig.from_dict(fixed))
    with torch.no_grad():
        shape = tuple(model.frozen_prefix(torch.zeros(1, 3, *SCALE["crop"])).shape[1:])
    data = SCALE["synthetic"]
    entries = data["train"] + data["val"]  # views and validation windows (one per image)
    return int(entries * Codec.of("float16").entry_bytes(shape) / 1.4)


def scale_arm(name: str, cache: str, limit: int, *flags: str) -> dict:
    with scratch_home() as home:
        checkpoint = random_checkpoint(SCALE["model"], home)
        done = tuner_run(
            home,
            "cache",
            "--no-report",
            "--checkpoint",
            str(checkpoint),
            "--cache-limit",
            str(limit),
            *flags,
            space=scale_space(cache),
        )
        if done.returncode != 0:
            raise RuntimeError(done.output)
        usage = FeatureCache.at(paths.cache_dir(), limit).usage()
        plan = load_existing_study("cache", open_storage(None)).user_attrs.get("cache_plan")
    trials = []
    for t in done.trials:
        cache_stats = t.user_attrs.get("cache", {})
        reads = sum(
            cache_stats.get(k, 0) for k in ("train_hits", "train_misses", "val_hits", "val_misses")
        )
        hits = cache_stats.get("train_hits", 0) + cache_stats.get("val_hits", 0)
        trials.append(
            {
                "number": t.number,
                "fit_seconds": t.user_attrs["fit_seconds"],
                "val_miou": t.user_attrs["val_miou"],
                "hit_rate": round(hits / reads, 3) if reads else None,
                "aug_views": t.user_attrs["config"]["aug_views"],
                "cache_dtype": t.user_attrs["config"]["cache_dtype"],
            }
        )
    later = trials[1:]
    return {
        "arm": name,
        "wall_seconds": done.wall_seconds,
        "cache_bytes": usage.bytes,
        "cache_plan": plan,
        "plan_lines": [
            line for line in done.output.splitlines() if line.startswith(("plan", "  "))
        ],
        "trials": trials,
        "later_fit_seconds": round(sum(t["fit_seconds"] for t in later), 2),
        "later_hit_rate": (
            None if later[0]["hit_rate"] is None else round(min(t["hit_rate"] for t in later), 3)
        ),
    }


def int8_feature_error() -> dict:
    """Relative L2 error of float16 and int8 storage (per-row scales) on the pretrained
    stand-in's features of embedded validation images: block 4's tokens and the neck's."""
    from tuner.core.cache import Codec
    from tuner.core.config import TrainConfig
    from tuner.core.data.cityscapes import CityscapesDataset
    from tuner.core.data.synth import SynthSpec, embedded
    from tuner.core.data.transforms import eval_pair
    from tuner.core.model import build_segmenter

    with scratch_home():
        root = embedded(paths.data_dir(), SynthSpec(train=4, val=4), progress=False)
        data = CityscapesDataset(root, "val")
        images = torch.stack([eval_pair(*data[i])[0] for i in range(len(data))])
    out = {}
    for cut, depth in (("block 4", 4), ("neck", 6)):
        config = TrainConfig(model="sam_tiny", head="linear", freeze_depth=depth)
        with torch.no_grad():
            features = build_segmenter(config).frozen_prefix(images)
        out[cut] = {
            dtype: float((Codec.of(dtype).round_trip(features) - features).norm() / features.norm())
            for dtype in ("float16", "int8")
        }
    return {"relative_l2_error": out, "images": len(data)}


def run_scale() -> dict:
    limit = scale_limit()
    arms = [
        scale_arm("cache off", "off", limit),
        scale_arm("today (as configured)", "auto", limit, "--cache-as-configured"),
        scale_arm("planned", "auto", limit),
    ]
    off = arms[0]["later_fit_seconds"]
    for arm in arms[1:]:
        arm["later_speedup_vs_off"] = round(off / arm["later_fit_seconds"], 2)
    return {
        "machine": machine(),
        "limit_bytes": limit,
        "arms": arms,
        "max_miou_difference_planned_vs_off": round(
            max(
                abs(a["val_miou"] - b["val_miou"])
                for a, b in zip(arms[0]["trials"], arms[2]["trials"])
            ),
            4,
        ),
        "int8": int8_feature_error(),
    }
