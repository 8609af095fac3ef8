"""`tuner plan`'s projections against the run: the embedded `losses` and `freeze` studies as
shipped, each planned and then run in a fresh TUNER_HOME on this machine.

Per trial, the projected seconds for the epochs it actually ran (a pruned trial ran fewer) are
compared with its measured fit seconds; per study, the projected total for what ran against
the measured total, and the projected cache and kept-checkpoint bytes against what is on disk.
`--quick` runs the `smoke` study instead.
"""

from __future__ import annotations

import dataclasses
import os

from bench.common import machine, scratch_home, tuner_run
from tuner.core import paths
from tuner.core.cache import FeatureCache
from tuner.core.config import TrainConfig
from tuner.search import attrs
from tuner.search.plan import cost_signature, trial_seconds
from tuner.search.run import RunOptions, project
from tuner.search.study import load_existing_study, open_storage


def projected_for(plan, trial) -> float:
    """The plan's seconds for this trial's configuration, over the epochs it ran."""
    config = TrainConfig.from_dict(trial.user_attrs[attrs.CONFIG])
    same_cost = [t for t in plan.trials if cost_signature(t.config) == cost_signature(config)]
    match = next((t for t in same_cost if t.config == config), same_cost[0])
    ran = len(trial.user_attrs[attrs.EPOCH_SECONDS])
    partial = dataclasses.replace(match, config=match.config.replace(epochs=ran))
    if match.outcome is not None:
        share = ran / match.config.epochs
        partial.outcome = dataclasses.replace(
            match.outcome,
            misses=round(match.outcome.misses * share),
            hits=round(match.outcome.hits * share),
            misses_by_set={k: round(v * share) for k, v in match.outcome.misses_by_set.items()},
        )
    return trial_seconds(partial, plan.data)


def study_row(study: str) -> dict:
    with scratch_home() as home:
        plan = project(RunOptions(study=study), log=lambda m: None)
        done = tuner_run(home, study, "--no-report")
        if done.returncode != 0:
            raise RuntimeError(done.output)
        storage = open_storage(None)
        rows = []
        names = [study, f"{study}.confirm"] if plan.trials[-1].confirmation else [study]
        for name in names:
            for trial in load_existing_study(name, storage).trials:
                if attrs.FIT_SECONDS not in trial.user_attrs:
                    continue
                rows.append(
                    {
                        "study": name,
                        "number": trial.number,
                        "state": trial.state.name,
                        "epochs": len(trial.user_attrs[attrs.EPOCH_SECONDS]),
                        "projected_seconds": round(projected_for(plan, trial), 1),
                        "fit_seconds": trial.user_attrs[attrs.FIT_SECONDS],
                    }
                )
        cache_bytes = FeatureCache.at(paths.cache_dir()).usage().bytes
        kept = 0
        for name in names:
            loaded = load_existing_study(name, storage)
            for trial in loaded.trials:
                artifact = trial.user_attrs.get(attrs.CHECKPOINT)
                if artifact and f"{attrs.CHECKPOINT_DROPPED}{trial.number}" not in (
                    loaded.user_attrs
                ):
                    kept += os.path.getsize(paths.default_artifact_dir() / artifact)
    projected = sum(r["projected_seconds"] for r in rows)
    measured = sum(r["fit_seconds"] for r in rows)
    return {
        "study": study,
        "plan": plan.lines(),
        "trials": rows,
        "projected_seconds": round(projected, 1),
        "measured_fit_seconds": round(measured, 1),
        "projected_over_measured": round(projected / measured, 3),
        "upper_bound_seconds": round(plan.seconds, 1),
        "run_wall_seconds": done.wall_seconds,
        "cache_bytes": {"projected": plan.cache_bytes_held, "measured": cache_bytes},
        "kept_checkpoint_bytes": {"projected": plan.checkpoint_bytes, "measured": kept},
    }


def run(quick: bool = False) -> dict:
    studies = ["smoke"] if quick else ["losses", "freeze"]
    return {"machine": machine(), "studies": [study_row(s) for s in studies]}
