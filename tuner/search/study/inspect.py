"""Reading a finished or running study: best trials, the leaderboard, summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.core import paths
from tuner.core.errors import StudyError
from tuner.core.text import short
from tuner.search import attrs
from tuner.search.study.storage import load_existing_study, open_storage


# Inspection ------------------------------------------------------------------------------------
def metric_names(study: optuna.Study) -> list[str]:
    return study.metric_names or ["value"] * len(study.directions)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial, or the Pareto front of a multi-objective study."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) > 1:
        return list(study.best_trials)
    return [study.best_trial]


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    raise StudyError(f"study {study.study_name!r} has no trial {number}")


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials best first, then pruned ones by their last value, then the rest."""
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    sign = -1 if maximize else 1

    def key(t: FrozenTrial):
        if t.state == TrialState.COMPLETE:
            return (0, sign * t.values[0])
        if t.state == TrialState.PRUNED and t.intermediate_values:
            last = t.intermediate_values[max(t.intermediate_values)]
            return (1, sign * last)
        return (2, t.number)

    return sorted(study.get_trials(deepcopy=False), key=key)


def leaderboard_rows(study: optuna.Study, limit: int = 20) -> tuple[list[list[Any]], list[str]]:
    metrics = metric_names(study)
    param_names = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    headers = ["#", "state", *metrics, "boundary F1", "epochs", "seconds", *param_names]
    rows = []
    for t in ranked_trials(study)[:limit]:
        values = list(t.values) if t.values else [None] * len(metrics)
        rows.append(
            [
                t.number,
                t.state.name,
                *values,
                t.user_attrs.get("val_boundary_f1"),
                len(t.user_attrs.get(attrs.EPOCH_SECONDS, [])) or None,
                round(t.duration.total_seconds()) if t.duration else None,
                *[short(t.params.get(p)) for p in param_names],
            ]
        )
    return rows, headers


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def list_studies(storage_url: str | None) -> list[list[Any]]:
    try:
        storage = open_storage(storage_url, create=False)
    except StudyError:
        return []
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        best = best_trials(study)
        best_text = (
            "; ".join(f"#{t.number}: " + ", ".join(f"{v:.4f}" for v in t.values) for t in best[:3])
            or "-"
        )
        rows.append(
            [
                summary.study_name,
                len(trials),
                counts.get("COMPLETE", 0),
                counts.get("PRUNED", 0),
                counts.get("FAIL", 0),
                counts.get("RUNNING", 0) + counts.get("WAITING", 0),
                best_text,
            ]
        )
    return rows


def describe_best(study_name: str, storage_url: str | None) -> str:
    study = load_existing_study(study_name, open_storage(storage_url, create=False))
    best = best_trials(study)
    if not best:
        raise StudyError(f"study {study_name!r} has no completed trial yet")
    metrics = metric_names(study)
    lines = []
    for trial in best:
        lines.append(f"trial {trial.number} of study {study_name!r}")
        lines += [f"  {m}: {v:.4f}" for m, v in zip(metrics, trial.values)]
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in trial.params.items()))
        attrs = trial.user_attrs
        for key in (
            "val_miou",
            "val_boundary_f1",
            "val_pixel_acc",
            "best_epoch",
            "fit_seconds",
            "trainable_params",
            "device",
        ):
            if key in attrs and key not in metrics:
                value = attrs[key]
                lines.append(
                    f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"
                )
        lines.append(f"  checkpoint: {checkpoint_location(study, trial)}")
    return "\n".join(lines)


def checkpoint_location(study: optuna.Study, trial: FrozenTrial) -> str:
    artifact_id = trial.user_attrs.get(attrs.CHECKPOINT)
    if artifact_id is None:
        return "none (only completed trials keep a checkpoint)"
    where = study.user_attrs.get(attrs.ARTIFACT_STORE, str(paths.default_artifact_dir()))
    if "://" in where:
        return f"artifact {artifact_id} in {where}"
    return f"{Path(where) / artifact_id} (artifact {artifact_id})"
