"""The replay objective: a trial reads its configuration's recorded curve instead of training.

It asks the trial for params exactly as a real trial does (the space's own distributions, so a
sampler sees the same search space), snaps each to the nearest recorded level, then reports the
recorded values epoch by epoch to the pruner, as `TrialReporter` reports a real fit. What it
read costs what those epochs took when they were recorded (`cost_s`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import optuna

from tuner.core.errors import ConfigError
from tuner.search import attrs
from tuner.search._space import Param, SearchSpace
from tuner.search.curves._table import CurveTable

SEED = "seed"  # a recording grid's seed param (curves._record)

COST = "cost_s"  # trial attr: seconds the trial's read epochs took when recorded
RUN = "replayed"  # trial attr: the recorded params it read


class ReplayObjective:
    """`study.optimize(ReplayObjective(table, space, seed=0))`. `space` None: the table's own
    grid, each param categorical over its levels; a space's `seed` param (a recording grid,
    `record_space`) picks the recorded seed per trial. `epochs` caps what a trial may read (a
    cheaper fidelity of the same table). `pace` > 0 makes it take that fraction of the
    recorded time, epoch by epoch (a stand-in for training in a load test of workers)."""

    artifact_store = None  # it writes no checkpoints
    current: int | None = None  # the trial in flight (tuner.search.worker.Objective)

    def __init__(
        self,
        table: CurveTable,
        space: SearchSpace | None = None,
        seed: int | None = None,
        epochs: int | None = None,
        pace: float = 0.0,
    ) -> None:
        self.table, self.space, self.pace = table, space, pace
        self.seed = table.seeds[0] if seed is None else seed
        if self.seed not in table.seeds:
            raise ConfigError(f"replay: seed {self.seed} is not recorded (seeds {table.seeds})")
        self.epochs = min(epochs or table.epochs, table.epochs)
        if space is None:
            self.params = tuple(
                Param(name, "categorical", choices=tuple(values))
                for name, values in table.levels.items()
            )
        else:
            self.params = tuple(p for p in space.params if p.name != SEED)
            missing = [p.name for p in self.params if p.name not in table.levels]
            if missing:
                raise ConfigError(
                    f"{space.source}: params {', '.join(missing)} are not levels of the "
                    f"learning-curve table of {table.study!r} ({', '.join(table.levels)})"
                )

    def recorded_params(self, trial: optuna.Trial) -> dict[str, Any]:
        """The trial's params, each snapped to the nearest recorded level."""
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.applies(chosen):
                chosen[param.name] = _snap(param, _raw(param, trial), self.table.levels[param.name])
        return chosen

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        params = self.recorded_params(trial)
        seed = self.seed
        for param in self.space.params if self.space is not None else ():
            if param.name == SEED:  # a recording grid: the trial names its seed
                seed = int(trial.suggest_categorical(SEED, list(param.choices)))
        curve = self.table.curve(params, seed)
        trial.set_user_attr(RUN, params)
        best, read = -math.inf, 0
        if self.pace > 0:
            time.sleep(curve.setup_s * self.pace)
        try:
            for epoch in range(self.epochs):
                if self.pace > 0:
                    time.sleep(curve.epoch_s[epoch] * self.pace)
                best, read = max(best, curve.miou[epoch]), epoch + 1
                trial.report(curve.miou[epoch], step=epoch + 1)
                if epoch + 1 < self.epochs and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}")
        finally:  # pruned or complete, the trial paid for the epochs it read
            trial.set_user_attr(COST, curve.cost(read))
        if curve.interval is not None:  # the noise of the run, for a stop: rule's margin
            trial.set_user_attr(attrs.MIOU_CI, list(curve.interval))
        return best


def restricted(space: SearchSpace, table: CurveTable) -> SearchSpace:
    """`space` with each param narrowed to what the table recorded: a categorical to the
    recorded choices, a range to the recorded levels' span (snapped to them when replayed).
    So a replayed sampler searches the shipped space's shape, where the table has data."""
    params = []
    for param in space.params:
        levels = table.levels.get(param.name)
        if levels is None:
            raise ConfigError(
                f"{space.source}: params.{param.name} is not a level of the learning-curve "
                f"table of {table.study!r}"
            )
        if param.kind == "categorical":
            kept = tuple(c for c in param.choices if c in levels)
            values = tuple(param.decode(c) for c in kept) if param.values else ()
            params.append(dataclasses.replace(param, choices=kept, values=values))
        else:
            params.append(dataclasses.replace(param, low=min(levels), high=max(levels)))
    return dataclasses.replace(space, params=tuple(params))


def _raw(param: Param, trial: optuna.Trial) -> Any:
    """The Optuna value (a categorical's label, not its decoded list)."""
    if param.kind == "categorical":
        return trial.suggest_categorical(param.name, list(param.choices))
    return param.suggest(trial)


def _snap(param: Param, value: Any, levels: list[Any]) -> Any:
    if value in levels:
        return value
    if param.kind == "categorical" or isinstance(value, str):
        raise ConfigError(f"replay: {param.name}={value!r} is not a recorded level ({levels})")
    scale = math.log if param.log else float
    return min(levels, key=lambda level: abs(scale(level) - scale(value)))
