"""The freeze ladder: frozen encoder depth as a fidelity, searched by asynchronous successive
halving (Carstensen et al., AutoML 2025, use the number of frozen layers as a fidelity).

A trial with more of the encoder frozen is cheaper: fewer blocks run backwards, and a frozen
prefix's features come from the feature cache. So every new configuration starts on the
cheapest rung (the deepest frozen depth the space allows); once a rung holds `eta` x k finished
trials, its best k move one rung down the ladder (one depth less frozen), with their other
params unchanged. Which new configurations to try is the base sampler's choice (TPE by
default); which ones earn the expensive depths is the ladder's. A space names it like any
sampler::

    sampler: {name: freeze_ladder, eta: 3, seed: 0}

    >>> import optuna
    >>> sampler = FreezeLadderSampler(eta=2, seed=0)
    >>> study = optuna.create_study(direction="maximize", sampler=sampler)
    >>> def objective(trial):
    ...     depth = trial.suggest_int("freeze_depth", 0, 6, step=2)
    ...     lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    ...     return lr * 10 - depth / 100
    >>> study.optimize(objective, n_trials=12)
    >>> sorted({t.params["freeze_depth"] for t in study.trials}, reverse=True)[:2]
    [6, 4]
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

RUNG = "freeze_ladder:rung"  # trial system attr: the rung it ran on (0: the cheapest)


class FreezeLadderSampler(optuna.samplers.BaseSampler):
    """Asynchronous successive halving over `param`'s values, deepest (cheapest) first."""

    def __init__(
        self,
        eta: int = 3,
        param: str = "freeze_depth",
        base: optuna.samplers.BaseSampler | None = None,
        seed: int | None = None,
        n_startup_trials: int = 10,
        multivariate: bool = True,
    ) -> None:
        if eta < 2:
            raise ValueError(f"eta={eta}: expected at least 2")
        self.eta, self.param = eta, param
        self._base = base or optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=n_startup_trials, multivariate=multivariate
        )
        self._decided: dict[int, dict[str, Any]] = {}

    def reseed_rng(self) -> None:
        self._base.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)
        if trial.system_attrs.get("fixed_params"):  # enqueued: its params are given
            return
        trials = study.get_trials(deepcopy=False)
        levels = self._levels(trials)
        promotion = self._promotion(study, trials, levels) if levels else None
        if promotion is not None:
            self._decided[trial._trial_id] = promotion
            rung = levels.index(promotion[self.param])
            study._storage.set_trial_system_attr(trial._trial_id, RUNG, rung)

    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return self._base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        promoted = self._decided.get(trial._trial_id)
        if promoted is not None:  # every param is given
            return {k: v for k, v in promoted.items() if k in search_space}
        params = self._base.sample_relative(study, trial, search_space)
        if self.param in params:
            params[self.param] = self._cheapest(study, trial, search_space[self.param])
        return params

    def sample_independent(self, study, trial, param_name, param_distribution) -> Any:
        promoted = self._decided.get(trial._trial_id, {})
        if param_name in promoted:
            return promoted[param_name]
        if param_name == self.param:
            return self._cheapest(study, trial, param_distribution)
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._decided.pop(trial._trial_id, None)
        self._base.after_trial(study, trial, state, values)

    def _cheapest(self, study, trial, distribution: BaseDistribution) -> Any:
        """A new configuration starts on the first rung: the most frozen depth."""
        study._storage.set_trial_system_attr(trial._trial_id, RUNG, 0)
        return _rungs(distribution)[0]

    def _levels(self, trials: list[FrozenTrial]) -> list[Any] | None:
        """The ladder's rungs: `param`'s values, most frozen first (None: not seen yet)."""
        for trial in trials:
            if self.param in trial.distributions:
                return _rungs(trial.distributions[self.param])
        return None

    def _promotion(
        self, study: optuna.Study, trials: list[FrozenTrial], levels: list[Any]
    ) -> dict[str, Any] | None:
        """The params of the best trial of the highest rung that has earned a promotion and has
        not had it yet (ASHA's rule: the top 1/eta of a rung's distinct configurations)."""
        started = {
            (t.params.get(self.param), _others(t.params, self.param))
            for t in trials
            if t.state != TrialState.FAIL
        }
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        for rung in range(len(levels) - 2, -1, -1):
            best: dict[tuple, FrozenTrial] = {}  # per distinct configuration, its best run
            for t in trials:
                if t.state == TrialState.COMPLETE and t.params.get(self.param) == levels[rung]:
                    key = _others(t.params, self.param)
                    if key not in best or sign * t.value > sign * best[key].value:
                        best[key] = t
            ranked = sorted(best.items(), key=lambda kv: sign * kv[1].value, reverse=True)
            for others, trial in ranked[: len(ranked) // self.eta]:
                if (levels[rung + 1], others) not in started:
                    return {**trial.params, self.param: levels[rung + 1]}
        return None


def _rungs(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.high, distribution.low - 1, -distribution.step))
    if isinstance(distribution, CategoricalDistribution):
        return sorted(distribution.choices, reverse=True)
    raise ValueError(f"freeze_ladder: {distribution} is not a list of depths")


def _others(params: dict[str, Any], param: str) -> tuple:
    return tuple(sorted((k, v) for k, v in params.items() if k != param))
