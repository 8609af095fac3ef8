"""Reading a finished or running study: best trials, the leaderboard, summaries."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.core import paths
from tuner.core.errors import StudyError
from tuner.search import attrs
from tuner.search.study.storage import open_storage


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


RISING = 0.003  # mIoU gained in the last epoch that says "still improving"


def still_improving(trial: FrozenTrial) -> bool:
    """Its last epoch was its best, by a margin: more epochs may change the ranking."""
    history = [h.get("val_miou") for h in trial.user_attrs.get(attrs.HISTORY, [])]
    history = [v for v in history if v is not None]
    return len(history) >= 2 and history[-1] - max(history[:-1]) > RISING


def stopped_at(trial: FrozenTrial) -> int | None:
    """The epoch (1-based) a pruned trial stopped after."""
    return max(trial.intermediate_values) if trial.intermediate_values else None


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def list_studies(storage_url: str | None) -> list[tuple[optuna.Study, dict[str, int]]]:
    """Every study in the storage, with its trials counted by state."""
    try:
        storage = open_storage(storage_url, create=False)
    except StudyError:
        return []
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        found.append((study, state_counts(study.get_trials(deepcopy=False))))
    return found


def checkpoint_location(study: optuna.Study, trial: FrozenTrial) -> str:
    artifact_id = trial.user_attrs.get(attrs.CHECKPOINT)
    if artifact_id is None:
        return "none (only completed trials keep a checkpoint)"
    dropped = study.user_attrs.get(f"{attrs.CHECKPOINT_DROPPED}{trial.number}")
    if dropped is not None:
        return f"dropped ({dropped})"
    where = study.user_attrs.get(attrs.ARTIFACT_STORE, str(paths.default_artifact_dir()))
    if "://" in where:
        return f"artifact {artifact_id} in {where}"
    return f"{Path(where) / artifact_id} (artifact {artifact_id})"
