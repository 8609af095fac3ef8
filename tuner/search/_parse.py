"""The search-space parser: a YAML mapping checked key by key into a `SearchSpace`, every
mistake one line naming the file, the key and what was expected, before any trial starts.

The model it builds is `tuner.search.space`; this module only reads and checks.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from pathlib import Path
from typing import Any

import yaml

from tuner.core.config import TrainConfig, coerce_field
from tuner.core.data.synth import SynthSpec
from tuner.core.errors import ConfigError
from tuner.core.paths import check_study_name
from tuner.core.registry import FIELD_REGISTRIES
from tuner.search._space import (
    METRICS,
    TOP_LEVEL_KEYS,
    Confirm,
    FaultTolerance,
    Objective,
    Param,
    Record,
    SearchSpace,
    Stop,
    WarmStart,
    param_value,
)
from tuner.search.samplers import PRUNERS, SAMPLERS, options_of


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: search space file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_space(raw, source=str(path))


def parse_space(raw: Any, source: str) -> SearchSpace:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    _no_unknown(raw, TOP_LEVEL_KEYS, source, "")
    study = check_study_name(raw.get("study"), f"{source}: study")

    objectives = _objectives(raw, source)
    sampler = _component(raw.get("sampler") or {"name": "tpe"}, "sampler", source)
    pruner = _component(raw.get("pruner") or {"name": "median"}, "pruner", source)
    if len(objectives) > 1 and sampler["name"] == "cmaes":
        raise ConfigError(f"{source}: sampler.name={sampler['name']}: single-objective only")
    trials = raw.get("trials")
    if trials is not None and (
        isinstance(trials, bool) or not isinstance(trials, int) or trials < 1
    ):
        raise ConfigError(f"{source}: trials={trials!r}: expected a positive integer")
    keep = raw.get("keep_checkpoints", 3)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise ConfigError(
            f"{source}: keep_checkpoints={keep!r}: expected a positive integer, or null to keep "
            "every trial's weights"
        )
    timeout = raw.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise ConfigError(f"{source}: timeout={timeout!r}: expected a positive number of seconds")

    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: fixed: expected a mapping of TrainConfig fields")
    _no_unknown(fixed, set(TrainConfig.field_names()), source, "fixed.")
    fixed = {k: coerce_field(k, v, f"{source}: fixed") for k, v in fixed.items()}
    # The fixed values alone first, so that their mistakes are not blamed on a param.
    TrainConfig.from_dict(fixed, source=f"{source}: fixed")

    raw_params = raw.get("params") or {}
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{source}: params: expected a non-empty mapping of what varies")
    _no_unknown(raw_params, set(TrainConfig.field_names()), source, "params.")
    params = []
    for name, spec in raw_params.items():
        param = _param(name, spec, source)
        when = spec.get("when") if isinstance(spec, dict) else None
        if when is not None:
            param = dataclasses.replace(param, when=_conditions(when, params, source, name))
        params.append(param)
    params = tuple(params)
    for param in params:
        if param.name in fixed:
            raise ConfigError(f"{source}: {param.name} is both in fixed and in params")

    space = SearchSpace(
        study=study,
        source=source,
        objectives=objectives,
        sampler=sampler,
        pruner=pruner,
        trials=trials,
        timeout=float(timeout) if timeout is not None else None,
        fixed=fixed,
        params=params,
        fault_tolerance=_dataclass_section(raw, "fault_tolerance", FaultTolerance, source),
        synthetic=_dataclass_section(raw, "synthetic", SynthSpec, source),
        description=str(raw.get("description") or ""),
        confirm=_dataclass_section(raw, "confirm", Confirm, source) if "confirm" in raw else None,
        exclude=_exclusions(raw.get("exclude"), params, sampler, source),
        keep_checkpoints=keep,
        stop=_stop(raw["stop"], objectives, source) if "stop" in raw else None,
        warm_start=_warm_start(raw["warm_start"], source) if "warm_start" in raw else None,
    )
    if "record" in raw:
        space = dataclasses.replace(space, record=_record(raw["record"], space))
    if space.confirm is not None and space.multi_objective:
        raise ConfigError(
            f"{source}: confirm: needs one objective to rank configurations by; this space has "
            f"{len(objectives)}"
        )
    _check_choices_build(space)
    if sampler["name"] == "grid":
        space.grid()  # raises for params a grid cannot enumerate
    return space


def _record(raw: Any, space: SearchSpace) -> Record:
    """`record: {seeds, fixed, levels}`; every param gets its levels (a float must list them)."""
    where = f"{space.source}: record"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with seeds, fixed and levels")
    _no_unknown(raw, {"seeds", "fixed", "levels"}, space.source, "record.")
    seeds = raw.get("seeds", 2)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"{where}.seeds={seeds!r}: expected a positive integer")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{where}.fixed: expected a mapping of TrainConfig fields")
    _no_unknown(fixed, set(TrainConfig.field_names()), space.source, "record.fixed.")
    fixed = {k: coerce_field(k, v, f"{where}.fixed") for k, v in fixed.items()}
    names = {p.name for p in space.params}
    for key in fixed:
        if key in names or key == "seed":
            raise ConfigError(f"{where}.fixed.{key}: varies in the table; give it in levels")
    TrainConfig.from_dict({**space.fixed, **fixed}, source=f"{where}.fixed")
    raw_levels = raw.get("levels") or {}
    if not isinstance(raw_levels, dict):
        raise ConfigError(f"{where}.levels: expected a mapping of params to lists of values")
    _no_unknown(raw_levels, names, space.source, "record.levels.")
    levels = []
    for param in space.params:
        values = raw_levels.get(param.name)
        if values is None and param.kind == "float":
            raise ConfigError(
                f"{where}.levels.{param.name}: {param.name} is continuous; list the values to "
                "record"
            )
        if values is None:
            levels.append((param.name, tuple(param.grid_values(space.source))))
            continue
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.levels.{param.name}: expected a non-empty list")
        levels.append((param.name, tuple(_level(param, v, where) for v in values)))
    return Record(seeds=seeds, fixed=fixed, levels=tuple(levels))


def _level(param: Param, value: Any, where: str) -> Any:
    """One recorded value of `param`, as Optuna stores it; inside its choices or range."""
    if param.kind == "categorical":
        if value in param.choices:
            return value
        coerced = coerce_field(param.name, value, where) if param.values else None
        if param.values and coerced in param.values:
            return param.choices[param.values.index(coerced)]
        raise ConfigError(f"{where}.levels.{param.name}: {value!r} is not one of its choices")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}.levels.{param.name}: {value!r} is not a number")
    if not param.low <= value <= param.high:
        raise ConfigError(
            f"{where}.levels.{param.name}: {value!r} is outside [{param.low}, {param.high}]"
        )
    return int(value) if param.kind == "int" else float(value)


def _stop(raw: Any, objectives: tuple[Objective, ...], source: str) -> Stop:
    """`stop: {patience, min_delta, min_trials}`: when the study ends before its budget."""
    where = f"{source}: stop"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with patience (and min_delta)")
    _no_unknown(raw, {"patience", "min_delta", "min_trials"}, source, "stop.")
    if len(objectives) > 1:
        raise ConfigError(f"{where}: needs one objective; this space has {len(objectives)}")
    for key in ("patience", "min_trials"):
        value = raw.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}.{key}={value!r}: expected a positive integer")
    delta = raw.get("min_delta", "interval")
    if delta != "interval" and (
        isinstance(delta, bool) or not isinstance(delta, int | float) or delta < 0
    ):
        raise ConfigError(
            f"{where}.min_delta={delta!r}: expected a number >= 0, or interval (the best "
            "trial's own 95 % interval half-width)"
        )
    return Stop(
        patience=raw.get("patience", Stop.patience),
        min_delta=delta if delta == "interval" else float(delta),
        min_trials=raw.get("min_trials", Stop.min_trials),
    )


def _warm_start(raw: Any, source: str) -> WarmStart:
    """`warm_start: NAME` or `{study: NAME, top: K}`."""
    where = f"{source}: warm_start"
    if isinstance(raw, str):
        raw = {"study": raw}
    if not isinstance(raw, dict) or "study" not in raw:
        raise ConfigError(f"{where}: expected a study name or {{study: NAME, top: K}}")
    _no_unknown(raw, {"study", "top"}, source, "warm_start.")
    top = raw.get("top", WarmStart.top)
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ConfigError(f"{where}.top={top!r}: expected a positive integer")
    return WarmStart(study=check_study_name(raw["study"], f"{where}.study"), top=top)


def _conditions(when: Any, before: list[Param], source: str, name: str):
    """`when: {param: value or [values], ...}` over params declared before this one."""
    where = f"{source}: params.{name}.when"
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{where}: expected a mapping of earlier params to values")
    known = {p.name: p for p in before}
    conditions = []
    for key, value in when.items():
        if key not in known:
            raise ConfigError(f"{where}: {key!r} is not a param declared before {name}")
        values = tuple(value) if isinstance(value, list) else (value,)
        if not values:
            raise ConfigError(f"{where}: {key}: expected a value or a non-empty list of values")
        for one in values:
            if known[key].kind == "categorical" and one not in known[key].options:
                raise ConfigError(f"{where}: {key}={one!r} is not one of its choices")
        conditions.append((key, values))
    return tuple(conditions)


def _exclusions(raw: Any, params: tuple[Param, ...], sampler: dict, source: str):
    """`exclude: [{param: value, ...}, ...]`: grid points not to run (invalid together)."""
    if raw is None:
        return ()
    if sampler["name"] != "grid":
        raise ConfigError(f"{source}: exclude: only a grid sampler can leave points out")
    if not isinstance(raw, list) or not all(isinstance(r, dict) and r for r in raw):
        raise ConfigError(f"{source}: exclude: expected a list of {{param: value}} mappings")
    names = {p.name for p in params}
    for rule in raw:
        for key in rule:
            if key not in names:
                raise ConfigError(f"{source}: exclude: {key!r} is not a param of this space")
    return tuple(tuple(rule.items()) for rule in raw)


def _no_unknown(mapping: dict, known: set[str], source: str, prefix: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(
                f"{source}: unknown key {prefix}{key}; expected one of: {', '.join(sorted(known))}"
            )


def _objectives(raw: dict, source: str) -> tuple[Objective, ...]:
    if "objective" in raw and "objectives" in raw:
        raise ConfigError(f"{source}: give either objective or objectives, not both")
    entries = raw.get("objectives", raw.get("objective", {"metric": "val_miou"}))
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source}: objectives: expected a list of {{metric, direction}}")
    out = []
    for i, entry in enumerate(entries):
        where = f"{source}: objectives[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with metric and direction")
        _no_unknown(entry, {"metric", "direction"}, where, "")
        metric = entry.get("metric")
        if metric not in METRICS:
            raise ConfigError(f"{where}: metric={metric!r}: expected one of {', '.join(METRICS)}")
        direction = entry.get("direction", METRICS[metric])
        if direction not in ("maximize", "minimize"):
            raise ConfigError(f"{where}: direction={direction!r}: expected maximize or minimize")
        out.append(Objective(metric, direction))
    if len({o.metric for o in out}) != len(out):
        raise ConfigError(f"{source}: objectives: a metric appears twice")
    return tuple(out)


def _component(raw: Any, kind: str, source: str) -> dict[str, Any]:
    """{name: ..., **options}; the options must be arguments of the Optuna class."""
    registry = SAMPLERS if kind == "sampler" else PRUNERS
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or "name" not in raw:
        raise ConfigError(f"{source}: {kind}: expected a mapping with a name")
    name = raw["name"]
    if name not in registry:
        raise ConfigError(
            f"{source}: {kind}.name={name!r}: expected one of {', '.join(sorted(registry))}"
        )
    accepted = options_of(registry[name])
    for key in raw:
        if key != "name" and key not in accepted:
            raise ConfigError(
                f"{source}: unknown key {kind}.{key} for {name}; "
                f"expected one of: {', '.join(sorted(accepted)) or 'none'}"
            )
    return dict(raw)


def _param(name: str, spec: Any, source: str) -> Param:
    where = f"{source}: params.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with a type")
    kind = spec.get("type")
    allowed = {
        "categorical": {"type", "choices", "when"},
        "float": {"type", "low", "high", "log", "step", "when"},
        "int": {"type", "low", "high", "log", "step", "when"},
    }
    if kind not in allowed:
        raise ConfigError(f"{where}.type={kind!r}: expected categorical, float or int")
    _no_unknown(spec, allowed[kind], where, ".")
    if kind == "categorical":
        choices = spec.get("choices")
        if choices == "all" and name in FIELD_REGISTRIES:  # every registered loss, head, ...
            choices = FIELD_REGISTRIES[name].names()
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                f"{where}.choices: expected a non-empty list"
                + (" or all" if name in FIELD_REGISTRIES else "")
            )
        values = tuple(coerce_field(name, c, where) for c in choices)
        if any(isinstance(v, tuple) for v in values):  # image_size: labels for Optuna
            labels = tuple("x".join(f"{x:g}" for x in v) for v in values)
            return Param(name, kind, choices=labels, values=values)
        return Param(name, kind, choices=values)
    numeric = int if kind == "int" else float
    if kind == "float" and TrainConfig.field_type(name) is int:
        raise ConfigError(f"{where}: {name} is an integer field; use type: int")
    try:
        low, high = (numeric(coerce_field(name, spec.get(k), where)) for k in ("low", "high"))
    except (ConfigError, TypeError, ValueError):
        raise ConfigError(
            f"{where}: low and high must be {kind}s valid for {name} "
            f"(got low={spec.get('low')!r}, high={spec.get('high')!r})"
        ) from None
    if low >= high:
        raise ConfigError(f"{where}: low={low} must be below high={high}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log={log!r}: expected true or false")
    if log and low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0 (got low={low})")
    step = spec.get("step")
    if step is not None and (not isinstance(step, int | float) or step <= 0):
        raise ConfigError(f"{where}.step={step!r}: expected a positive number")
    if step is not None and log:
        raise ConfigError(f"{where}: step and log cannot be combined")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def _dataclass_section(raw: dict, key: str, cls, source: str):
    section = raw.get(key) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{source}: {key}: expected a mapping")
    names = {f for f in inspect.signature(cls).parameters}
    _no_unknown(section, names, source, f"{key}.")
    may_be_zero = {"max_retry", "test", "seed"}
    for name, value in section.items():
        low = 0 if name in may_be_zero else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{source}: {key}.{name}={value!r}: expected an integer >= {low}")
    return cls(**section)


def _check_choices_build(space: SearchSpace) -> None:
    """Every categorical choice (loss, head, model names...) and every range end must give a
    valid TrainConfig with the fixed values, so a typo fails now rather than in trial 17.
    Each value is checked once on its own, then a bounded sample of combinations (some are
    only invalid together, e.g. freeze_depth with a smaller model). A conditional grid is
    checked point by point: its values are only meant to go together as its points say."""
    if space.enumerated:
        for point in space.points()[:512]:
            decoded = {k: param_value(space, k, v) for k, v in point.items()}
            TrainConfig.from_dict({**space.fixed, **decoded}, source=space.source)
        return
    options = []
    for p in space.params:
        values = p.options
        for value in values:
            try:
                TrainConfig.from_dict({**space.fixed, p.name: value}, source=space.source)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (params.{p.name})") from None
        options.append([(p.name, v) for v in values])
    for combo in itertools.islice(itertools.product(*options), 512):
        TrainConfig.from_dict({**space.fixed, **dict(combo)}, source=space.source)
