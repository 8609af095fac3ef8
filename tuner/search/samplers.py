"""The samplers and pruners a search-space file may name, with the Optuna class behind each.

A space file says `sampler: {name: tpe, seed: 0, multivariate: true}`: the name picks the class,
every other key is one of that class's own arguments (checked when the space is read). Adding an
option is one registration, and it is valid in every space::

    >>> import optuna
    >>> from tuner.search.samplers import SAMPLERS
    >>> SAMPLERS["qmc"] = optuna.samplers.QMCSampler
    >>> from tuner.search.space import parse_space
    >>> space = parse_space(
    ...     {"study": "s", "sampler": {"name": "qmc", "scramble": True},
    ...      "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}},
    ...     source="s.yaml")
    >>> type(make_sampler(space.sampler, space.grid)).__name__
    'QMCSampler'
    >>> del SAMPLERS["qmc"]
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any

import optuna

from tuner.core.registry import Registry
from tuner.search.ladder import FreezeLadderSampler

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS: Registry = Registry("sampler")
SAMPLERS.update(
    {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "grid": optuna.samplers.GridSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "gp": optuna.samplers.GPSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "nsga3": optuna.samplers.NSGAIIISampler,
        "freeze_ladder": FreezeLadderSampler,  # frozen depth as a fidelity (tuner.search.ladder)
    }
)
PRUNERS: Registry = Registry("pruner")
PRUNERS.update(
    {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "none": optuna.pruners.NopPruner,
    }
)


def options_of(cls) -> set[str]:
    """The arguments a space file may give this sampler or pruner."""
    return set(inspect.signature(cls).parameters) - {"search_space", "base"}


def make_sampler(
    sampler: dict[str, Any],
    grid: Callable[[], dict[str, list[Any]]],
    enumerated: bool = False,
) -> optuna.samplers.BaseSampler:
    """The sampler a space's `sampler:` section describes; seeded (0) by default when the class
    takes a seed, so a study is reproducible unless the file says `seed: null`. An
    `enumerated` grid (conditional params) has its points enqueued, so any sampler serves; a
    random one is used."""
    cls = SAMPLERS[sampler["name"]]
    options = {k: v for k, v in sampler.items() if k != "name"}
    if "seed" in options_of(cls):
        options.setdefault("seed", 0)
    if enumerated:
        return optuna.samplers.RandomSampler(seed=options.get("seed"))
    if cls is optuna.samplers.GridSampler:
        return cls(grid(), **options)
    return cls(**options)


def make_pruner(pruner: dict[str, Any]) -> optuna.pruners.BasePruner:
    options = {k: v for k, v in pruner.items() if k != "name"}
    return PRUNERS[pruner["name"]](**options)
