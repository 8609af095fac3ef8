"""Seed confirmation: the best configurations of a study, run again with other seeds.

A study's ranking mixes what a configuration is worth with which seed its trial drew (head
initialisation, the order and augmentation of images, dropout). With `confirm: {top: K,
seeds: S}` in the space, once the study's budget is spent the K best distinct configurations
are run S more times, each with another seed, and the leaderboard and the verdict rank
configurations by their mean over seeds.

The mechanism is a second study, NAME.confirm, in the same storage, linked both ways by study
attributes. Its trials are enqueued with the exact params of the trial they repeat (and carry
`confirms` and `seed` user attributes); they never enter the main study, so its sampler (TPE's
density estimates, a grid's bookkeeping) sees none of them, and the main study's budget and
trial numbers mean what they meant before. Enqueued trials in the main study would have fed
the sampler; a fixed `seed` param would have become a dimension the sampler explores.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.search import attrs
from tuner.search.space import SearchSpace
from tuner.search.study import load_existing_study

if TYPE_CHECKING:
    from tuner.core.stats import Estimate

SUFFIX = ".confirm"


def confirmation_name(study_name: str) -> str:
    return f"{study_name}{SUFFIX}"


def config_key(trial: FrozenTrial) -> str:
    return json.dumps(trial.params, sort_keys=True)


def open_confirmation_study(study: optuna.Study, storage) -> optuna.Study:
    confirm = optuna.create_study(
        study_name=confirmation_name(study.study_name),
        storage=storage,
        directions=[d.name.lower() for d in study.directions],
        sampler=optuna.samplers.RandomSampler(seed=0),  # every trial is enqueued
        pruner=optuna.pruners.NopPruner(),  # a confirmation runs all its epochs
        load_if_exists=True,
    )
    confirm.set_user_attr(attrs.CONFIRMS_STUDY, study.study_name)
    for key in (attrs.ARTIFACT_STORE, attrs.DATA_ROOT):
        if key in study.user_attrs:
            confirm.set_user_attr(key, study.user_attrs[key])
    study.set_user_attr(attrs.CONFIRMATION_STUDY, confirm.study_name)
    return confirm


def enqueue_confirmations(study: optuna.Study, confirm: optuna.Study, space: SearchSpace) -> int:
    """Queue what is missing of `top` x `seeds` for the configurations that rank top by their
    mean over the runs so far; a trial that ran (or failed) is not queued again, so a rerun
    continues. Returns how many trials wait.

    Called until it queues nothing: when confirmed configurations fall back (their other seed
    scored lower), an unconfirmed one can rise into the top K on its single lucky run, and it
    is confirmed in turn. So the final top K are all compared on equal terms."""
    have = {
        (t.user_attrs.get(attrs.CONFIRMS), t.user_attrs.get(attrs.SEED))
        for t in confirm.get_trials(deepcopy=False)
    }
    for trial in (s.trial for s in standings(study)[: space.confirm.top]):
        base = trial.user_attrs.get(attrs.CONFIG, {}).get("seed", 0)
        for offset in range(1, space.confirm.seeds + 1):
            if (trial.number, base + offset) not in have:
                confirm.enqueue_trial(
                    trial.params,
                    user_attrs={attrs.CONFIRMS: trial.number, attrs.SEED: base + offset},
                )
    return len(confirm.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def confirmation_study(study: optuna.Study) -> optuna.Study | None:
    """The study's confirmation study, where one was run."""
    name = study.user_attrs.get(attrs.CONFIRMATION_STUDY)
    if name is None:
        return None
    return load_existing_study(name, study._storage)


def runs_by_config(study: optuna.Study) -> dict[str, list[FrozenTrial]]:
    """Completed trials per configuration: the study's own, then its confirmations."""
    runs: dict[str, list[FrozenTrial]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        runs.setdefault(config_key(trial), []).append(trial)
    confirm = confirmation_study(study)
    if confirm is not None:
        for trial in confirm.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            runs.setdefault(config_key(trial), []).append(trial)
    return runs


@dataclass
class Standing:
    """One configuration: its runs (the study's trial first) and their objective values; its
    `score` (the mean and its interval over images and seeds) once a verdict is computed."""

    runs: list[FrozenTrial]
    score: Estimate | None = None

    @property
    def trial(self) -> FrozenTrial:
        return self.runs[0]

    @property
    def values(self) -> list[float]:
        return [run.values[0] for run in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def spread(self) -> float | None:
        """Half the range of the runs' values (None with one run)."""
        values = self.values
        return (max(values) - min(values)) / 2 if len(values) > 1 else None


def standings(study: optuna.Study) -> list[Standing]:
    """Completed configurations, best mean first (single-objective studies)."""
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    ranked = [Standing(runs) for runs in runs_by_config(study).values()]
    return sorted(ranked, key=lambda s: -s.mean if maximize else s.mean)
