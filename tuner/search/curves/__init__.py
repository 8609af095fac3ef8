"""Learning curves as data: record a space's grid once, then replay searches on it for free.

`tuner record-curves --study full` runs the space's `record:` grid (every level, every seed)
and writes a `CurveTable`; `ReplayObjective` is an Optuna objective that reads a trial's curve
from that table epoch by epoch instead of training, and charges the recorded seconds. So a
sampler or pruner is compared over many search seeds in minutes (`python -m bench search`):

    >>> import optuna
    >>> from tuner.search.curves import Curve, CurveTable, ReplayObjective
    >>> table = CurveTable("toy", {"loss": ["ce", "dice"]}, [0], [
    ...     Curve({"loss": "ce"}, 0, (0.30, 0.35), (0.5, 0.5), (1.0, 1.0)),
    ...     Curve({"loss": "dice"}, 0, (0.32, 0.40), (0.5, 0.6), (1.0, 1.0))])
    >>> study = optuna.create_study(direction="maximize",
    ...     sampler=optuna.samplers.GridSampler({"loss": ["ce", "dice"]}, seed=0))
    >>> study.optimize(ReplayObjective(table), n_trials=2)
    >>> study.best_params, study.best_value, sum(t.user_attrs["cost_s"] for t in study.trials)
    ({'loss': 'dice'}, 0.4, 4.0)
"""

from tuner.search.curves._record import record_curves, record_space, table_of
from tuner.search.curves._replay import COST, RUN, ReplayObjective, restricted
from tuner.search.curves._table import Curve, CurveTable

__all__ = [
    "COST",
    "RUN",
    "Curve",
    "CurveTable",
    "ReplayObjective",
    "record_curves",
    "record_space",
    "restricted",
    "table_of",
]
