"""Orchestration overhead: a whole `tuner run` process against the summed fit() time of its
trials. What is left is storage, sampling, artifacts and process start-up."""

from __future__ import annotations

import subprocess
import sys
import time

import yaml

from bench.common import machine, scratch_home
from tuner.core import paths
from tuner.core.data import synth
from tuner.core.data.synth import SynthSpec
from tuner.search.study import load_existing_study, open_storage


def space(quick: bool) -> dict:
    fixed = {"model": "sam_tiny", "head": "linear", "encoder_lr_mult": 1.0, "batch_size": 4}
    if quick:
        fixed.update(epochs=1, image_size=[64, 128], batch_size=2)
        synthetic, trials = {"train": 8, "val": 4, "height": 128, "width": 256}, 2
    else:
        fixed.update(epochs=3, image_size=[256, 512], train_limit=32, val_limit=8)
        synthetic, trials = {"train": 64, "val": 16, "height": 256, "width": 512}, 4
    return {
        "study": "overhead",
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "trials": trials,
        "fixed": fixed,
        "params": {"loss": {"type": "categorical", "choices": ["ce", "dice", "focal"]}},
        "synthetic": synthetic,
    }


def run(quick: bool = False) -> dict:
    with scratch_home() as home:
        spec = space(quick)
        # Built beforehand: the study's wall time is trials and orchestration only.
        synth.embedded(paths.data_dir(), SynthSpec(**spec["synthetic"]), progress=False)
        path = home / "overhead.yaml"
        path.write_text(yaml.safe_dump(spec))

        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import tuner.cli, tuner.search, tuner.core.train"], check=True
        )
        import_seconds = time.perf_counter() - start

        start = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tuner",
                "run",
                "--study",
                "overhead",
                "--space",
                str(path),
                "--no-report",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start

        study = load_existing_study("overhead", open_storage(None))
        trials = study.trials
        fit = sum(t.user_attrs["fit_seconds"] for t in trials)
        durations = sum(t.duration.total_seconds() for t in trials)
    return {
        "machine": machine(),
        "trials": len(trials),
        "wall_seconds": round(wall, 2),
        "sum_fit_seconds": round(fit, 2),
        "overhead_percent": round(100 * (wall - fit) / wall, 2),
        "breakdown_seconds": {
            "process_start_and_imports": round(import_seconds, 2),
            "inside_trials_outside_fit": round(durations - fit, 2),
            "rest_of_run (study open, sampler, leaderboard)": round(
                wall - durations - import_seconds, 2
            ),
        },
        "bar_percent": 3.0,
    }
