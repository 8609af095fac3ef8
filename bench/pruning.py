"""What pruning saves: one 16-trial space, one seeded random sampler (so every run proposes the
same 16 configurations), run with no pruner, the median pruner and Hyperband."""

from __future__ import annotations

import time

import optuna
import yaml

from bench.common import machine, scratch_home
from tuner.search.run import RunOptions
from tuner.search.run import run as run_study
from tuner.search.study import load_existing_study, open_storage

PRUNERS = {
    "none": {"name": "none"},
    "median": {"name": "median", "n_startup_trials": 4, "n_warmup_steps": 1},
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
}


def space(name: str, pruner: dict, quick: bool) -> dict:
    epochs = 2 if quick else 6
    return {
        "study": name,
        "sampler": {"name": "random", "seed": 0},
        "pruner": pruner if pruner["name"] != "hyperband" else {**pruner, "max_resource": epochs},
        "trials": 4 if quick else 16,
        "fixed": {
            "model": "sam_tiny",
            "head": "linear",
            "batch_size": 2,
            "epochs": epochs,
            "image_size": [64, 128],
            "encoder_lr_mult": 1.0,
            "threads": 2,
        },
        "params": {
            "lr": {"type": "float", "low": 1e-5, "high": 0.3, "log": True},
            "loss": {"type": "categorical", "choices": ["ce", "dice", "focal", "lovasz"]},
        },
        "synthetic": {"train": 8, "val": 4, "height": 128, "width": 256},
    }


def run(quick: bool = False) -> dict:
    results = {}
    with scratch_home() as home:
        for name, pruner in PRUNERS.items():
            path = home / f"{name}.yaml"
            path.write_text(yaml.safe_dump(space(name, pruner, quick)))
            start = time.perf_counter()
            run_study(RunOptions(study=name, space_file=str(path), progress=False))
            wall = time.perf_counter() - start
            study = load_existing_study(name, open_storage(None))
            trials = study.trials
            states = [t.state for t in trials]
            results[name] = {
                "wall_seconds": round(wall, 2),
                "epochs_trained": sum(len(t.intermediate_values) for t in trials),
                "pruned_trials": states.count(optuna.trial.TrialState.PRUNED),
                "best_val_miou": round(study.best_value, 4),
                "params": [t.params for t in trials],
            }
    base = results["none"]
    for result in results.values():
        result["epochs_saved_percent"] = round(
            100 * (1 - result["epochs_trained"] / base["epochs_trained"]), 1
        )
        result["best_miou_change_points"] = round(
            100 * (result["best_val_miou"] - base["best_val_miou"]), 2
        )
        result["within_one_point"] = abs(result["best_miou_change_points"]) <= 1.0
    same_configs = all(r["params"] == base["params"] for r in results.values())
    for result in results.values():
        del result["params"]
    return {"machine": machine(), "same_16_configurations": same_configs, "results": results}
