"""Recording a space's learning-curve table: its `record:` grid run as a study of its own.

The grid (levels x seeds) is the study `<name>.record`, run by the same machinery as any study,
so a recording is resumable, spreads over `--jobs` workers and survives a killed worker; the
table is then read off its completed trials.
"""

from __future__ import annotations

import dataclasses

import optuna
from optuna.trial import TrialState

from tuner.core.errors import ConfigError
from tuner.search import attrs
from tuner.search._space import Param, SearchSpace
from tuner.search.curves._replay import SEED
from tuner.search.curves._table import Curve, CurveTable


def record_space(space: SearchSpace) -> SearchSpace:
    """The grid study that records `space`'s table: each param over its recorded levels, plus
    the seed, at the record fidelity, unpruned."""
    if space.record is None:
        raise ConfigError(
            f"{space.source}: has no record: section (the grid and fidelity of its table)"
        )
    if space.multi_objective:
        raise ConfigError(f"{space.source}: record: needs one objective to record")
    levels = dict(space.record.levels)
    params = tuple(
        dataclasses.replace(
            p,
            kind="categorical",
            choices=levels[p.name],
            values=tuple(p.decode(v) for v in levels[p.name]) if p.values else (),
            low=None,
            high=None,
            log=False,
            step=None,
        )
        for p in space.params
    )
    first = int(space.fixed.get(SEED, 0))
    seeds = tuple(range(first, first + space.record.seeds))
    fixed = {k: v for k, v in {**space.fixed, **space.record.fixed}.items() if k != SEED}
    return dataclasses.replace(
        space,
        study=f"{space.study}.record",
        sampler={"name": "grid", "seed": 0},
        pruner={"name": "none"},
        trials=None,
        timeout=None,
        fixed=fixed,
        params=(*params, Param(SEED, "categorical", choices=seeds)),
        confirm=None,
        keep_checkpoints=1,
        stop=None,
        warm_start=None,
        exclude=(),
    )


def table_of(study: optuna.Study, space: SearchSpace, command: str = "") -> CurveTable:
    """The table held by a recording study's completed trials."""
    names = [p.name for p in space.params if p.name != SEED]
    curves = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        history = trial.user_attrs.get(attrs.HISTORY) or []
        seconds = trial.user_attrs.get(attrs.EPOCH_SECONDS) or []
        fit = trial.user_attrs.get(attrs.FIT_SECONDS) or sum(seconds)
        interval = trial.user_attrs.get(attrs.MIOU_CI)
        curves.append(
            Curve(
                params={k: trial.params[k] for k in names if k in trial.params},
                seed=int(trial.params[SEED]),
                miou=tuple(h["val_miou"] for h in history),
                boundary_f1=tuple(h["val_boundary_f1"] for h in history),
                epoch_s=tuple(seconds),
                setup_s=max(0.0, fit - sum(seconds)),
                interval=tuple(interval) if interval else None,
            )
        )
    if not curves:
        raise ConfigError(f"study {study.study_name!r}: no completed run to make a table of")
    record = space.record
    seeds = sorted({c.seed for c in curves})
    fidelity = {**space.fixed, **record.fixed}
    devices = {
        t.user_attrs.get(attrs.DEVICE) for t in study.trials if t.user_attrs.get(attrs.DEVICE)
    }
    return CurveTable(
        study=space.study.removesuffix(".record"),
        levels={name: list(values) for name, values in record.levels},
        seeds=seeds,
        curves=curves,
        fidelity={k: list(v) if isinstance(v, tuple) else v for k, v in fidelity.items()},
        metric=space.objectives[0].metric,
        recorded_on="; ".join(sorted(devices)),
        command=command,
    )


def record_curves(options, out: str | None = None) -> tuple[CurveTable, str]:
    """`tuner record-curves`: run (or resume) the recording study of `options.study`'s space,
    then write its table to `out` (default: <tuner home>/<study>.curves.json)."""
    from tuner.core import paths
    from tuner.search.run import load_run_space, run

    space = record_space(load_run_space(options))
    study = run(dataclasses.replace(options, study=space.study, space=space))
    command = f"tuner record-curves --study {options.study}"
    if options.jobs > 1:
        command += f" --jobs {options.jobs}"
    table = table_of(study, space, command)
    table.check(f"study {space.study!r}")
    path = out or str(paths.inside_home(f"{options.study}.curves.json"))
    return table, str(table.save(path))
