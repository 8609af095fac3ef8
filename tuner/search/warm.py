"""Warm start: a new study begins with what an earlier study learned.

`tuner run --study full --warm-start losses` (or `warm_start: losses` in the space) carries
the earlier study's completed trials over where the spaces overlap: each trial's values of the
new space's params must lie inside the new space (the earlier study's fixed values count:
`losses` fixed `head: linear`, which is one of `full`'s choices). Then:

- same fidelity (every setting that is not a param of the new space is equal: epochs, image
  size, data limits, ...): they are *added* as completed trials (`Study.add_trials`); the
  sampler learns from them and they cost nothing. They do not count against the budget.
- another fidelity: their values are not comparable, so the `top` best distinct
  configurations are *enqueued*, to run first at the new fidelity.

Done once per study (recorded in the `warm_started` study attr); a rerun does not repeat it.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from tuner.core.config import TrainConfig
from tuner.core.errors import UserError
from tuner.search import attrs
from tuner.search._space import Param, SearchSpace, param_value

# Settings that change how a run executes, not what it measures.
RUN_FIELDS = {
    "seed",
    "device",
    "threads",
    "num_workers",
    "cache",
    "cache_dtype",
    "compile",
    "micro_batch_size",
    "monitor",
}
CARRIED_ATTRS = (
    attrs.CONFIG,
    attrs.HISTORY,
    attrs.MIOU_CI,
    attrs.BOUNDARY_F1_CI,
    attrs.PER_IMAGE,
    attrs.EPOCH_SECONDS,
    *attrs.METRICS,
)


def distribution(param: Param) -> BaseDistribution:
    if param.kind == "categorical":
        return CategoricalDistribution(list(param.choices))
    if param.kind == "int":
        return IntDistribution(
            int(param.low), int(param.high), log=param.log, step=int(param.step or 1)
        )
    return FloatDistribution(param.low, param.high, log=param.log, step=param.step)


def project(space: SearchSpace, values: dict[str, Any]) -> dict[str, Any] | None:
    """The new space's Optuna params for a run with these field values; None where one lies
    outside the new space."""
    params: dict[str, Any] = {}
    chosen: dict[str, Any] = {}
    for param in space.params:
        if not param.applies(chosen):
            continue
        value = values.get(param.name, getattr(TrainConfig(), param.name))
        value = tuple(value) if isinstance(value, list) else value
        if param.kind == "categorical":
            if value not in param.options:
                return None
            params[param.name] = param.choices[param.options.index(value)]
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            if not param.low <= value <= param.high:
                return None
            if param.kind == "int" and (value - param.low) % int(param.step or 1):
                return None
            params[param.name] = int(value) if param.kind == "int" else float(value)
        chosen[param.name] = param_value(space, param.name, params[param.name])
    return params


def field_values(trial: FrozenTrial) -> dict[str, Any]:
    """What the trial ran with: its recorded config, else its params."""
    return trial.user_attrs.get(attrs.CONFIG) or dict(trial.params)


def same_fidelity(space: SearchSpace, trials: list[FrozenTrial]) -> bool:
    """Every setting outside the new space's params is the new study's own value."""
    fixed = TrainConfig.from_dict(space.fixed, source=space.source).to_dict()
    defaults = TrainConfig().to_dict()
    varied = {p.name for p in space.params} | RUN_FIELDS
    for trial in trials:
        if attrs.CONFIG not in trial.user_attrs:
            return False
        config = {**defaults, **trial.user_attrs[attrs.CONFIG]}
        for key, value in fixed.items():
            if key not in varied and _plain(config.get(key)) != _plain(value):
                return False
    return True


def warm_start(
    study: optuna.Study,
    space: SearchSpace,
    earlier: optuna.Study,
    top: int = 3,
    fidelity_matches: bool | None = None,
) -> str:
    """Carry `earlier`'s completed trials into `study` (see the module docstring); returns the
    line that says what was carried. `fidelity_matches` None: decided from the trials' configs."""
    if attrs.WARM_STARTED in study.user_attrs:
        return f"warm start: already done ({study.user_attrs[attrs.WARM_STARTED]})"
    if space.sampler["name"] == "grid":
        raise UserError(
            f"{space.source}: warm start needs a sampler that learns; this one is a grid"
        )
    if len(earlier.directions) != 1 or earlier.direction != study.direction:
        raise UserError(
            f"warm start from {earlier.study_name!r}: its objective's direction differs from "
            f"{study.study_name!r}'s"
        )
    done = earlier.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    placed = [(t, project(space, field_values(t))) for t in done]
    placed = [(t, p) for t, p in placed if p is not None]
    if not placed:
        raise UserError(
            f"warm start from {earlier.study_name!r}: none of its {len(done)} completed trials "
            f"lies inside {space.source}'s params"
        )
    matches = (
        same_fidelity(space, [t for t, _ in placed])
        if fidelity_matches is None
        else fidelity_matches
    )
    if matches:
        distributions = {p.name: distribution(p) for p in space.params}
        study.add_trials(
            [
                optuna.trial.create_trial(
                    params=params,
                    distributions={k: distributions[k] for k in params},
                    value=trial.value,
                    intermediate_values=trial.intermediate_values,
                    user_attrs={
                        **{k: trial.user_attrs[k] for k in CARRIED_ATTRS if k in trial.user_attrs},
                        attrs.CARRIED_FROM: f"{earlier.study_name}#{trial.number}",
                    },
                )
                for trial, params in placed
            ]
        )
        line = (
            f"warm start from {earlier.study_name!r}: {len(placed)} of its {len(done)} completed "
            "trials added (same fidelity; they do not count against the budget)"
        )
    else:
        sign = -1 if earlier.direction == optuna.study.StudyDirection.MINIMIZE else 1
        best: dict[str, tuple[FrozenTrial, dict]] = {}
        for trial, params in sorted(placed, key=lambda tp: -sign * tp[0].value):
            best.setdefault(repr(sorted(params.items())), (trial, params))
        chosen = list(best.values())[:top]
        for trial, params in chosen:
            study.enqueue_trial(
                params, user_attrs={attrs.WARM_FROM: f"{earlier.study_name}#{trial.number}"}
            )
        line = (
            f"warm start from {earlier.study_name!r}: its {len(chosen)} best configurations "
            f"enqueued (another fidelity, so its {len(done)} values are not added)"
        )
    study.set_user_attr(attrs.WARM_STARTED, line)
    return line


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
