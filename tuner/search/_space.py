"""The model of a search space: `SearchSpace` and its parts, and where space files are found.
The YAML parser that builds it is `_parse`; `tuner.search.space` is the public face of both.

A file says what varies (`params`), what is fixed (`fixed`), what is optimised (`objectives`),
how (sampler, pruner) and for how long (trials, timeout). Both `fixed` and `params` use the
field names of `TrainConfig`, so anything a run can be told, a study can vary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.core.config import MONITORS, TrainConfig
from tuner.core.data.synth import SynthSpec
from tuner.core.errors import ConfigError

SEARCH_SPACE_DIR = Path(__file__).resolve().parents[2] / "search_spaces"  # the checkout's

# Metrics a trial reports; any of them can be an objective.
METRICS = {
    "val_miou": "maximize",
    "val_boundary_f1": "maximize",
    "val_pixel_acc": "maximize",
    "train_loss": "minimize",
    "fit_seconds": "minimize",
    "trainable_params": "minimize",
    "latency_ms": "minimize",  # per crop-sized image, batch 1, on the device it trained on
}
TOP_LEVEL_KEYS = {
    "study",
    "description",
    "objective",
    "objectives",
    "sampler",
    "pruner",
    "trials",
    "timeout",
    "fixed",
    "params",
    "fault_tolerance",
    "synthetic",
    "confirm",
    "exclude",
    "keep_checkpoints",
    "record",
    "stop",
    "warm_start",
}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # categorical | float | int
    choices: tuple[Any, ...] = ()
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    # For list-valued fields (image_size): the values behind the choices, which Optuna stores
    # as labels ("256x512") because its categorical choices must be scalars.
    values: tuple[Any, ...] = ()
    # Suggested only when the params before it have one of these values (LoRA's rank only with
    # adapter lora or convlora); otherwise the field keeps its fixed or default value.
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def applies(self, chosen: dict[str, Any]) -> bool:
        return all(chosen.get(name) in values for name, values in self.when)

    def decode(self, choice: Any) -> Any:
        return self.values[self.choices.index(choice)] if self.values else choice

    @property
    def options(self) -> list[Any]:
        """What the field can be: the choices' values, or the range's ends."""
        if self.kind == "categorical":
            return list(self.values or self.choices)
        return [self.low, self.high]

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return self.decode(trial.suggest_categorical(self.name, list(self.choices)))
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid_values(self, source: str) -> list[Any]:
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        raise ConfigError(
            f"{source}: params.{self.name}: the grid sampler needs categorical or int params "
            f"(got {self.kind}{' with log' if self.log else ''})"
        )


@dataclass(frozen=True)
class FaultTolerance:
    heartbeat_interval: int = 60  # seconds between a running trial's heartbeats (RDB storage)
    grace_period: int = 180  # a RUNNING trial silent this long is failed and retried
    max_retry: int = 2


@dataclass(frozen=True)
class Confirm:
    """Once the budget is spent, run the `top` best distinct configurations again with
    `seeds` more seeds each (in the study NAME.confirm, which no sampler sees)."""

    top: int = 2
    seeds: int = 1


@dataclass(frozen=True)
class Record:
    """`tuner record-curves`: the grid and fidelity of this space's learning-curve table.

    Every combination of `levels` (per param: the values recorded; a categorical's choices
    and an int's steps by default, a float must list its own) runs `seeds` times at the
    space's fixed values overridden by `fixed` (a cheaper fidelity)."""

    seeds: int = 2
    fixed: dict[str, Any] = field(default_factory=dict)
    levels: tuple[tuple[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True)
class Stop:
    """Study-level stopping: the study ends once `patience` finished trials in a row have not
    beaten the best by more than `min_delta` ("interval": the best trial's own 95 % interval
    half-width, its noise), and at least `min_trials` trials have finished."""

    patience: int = 10
    min_delta: float | str = "interval"
    min_trials: int = 1


@dataclass(frozen=True)
class WarmStart:
    """Seed a new study with an earlier one's results (`tuner.search.warm`)."""

    study: str
    top: int = 3  # configurations enqueued when the fidelities differ


@dataclass(frozen=True)
class SearchSpace:
    study: str
    source: str
    objectives: tuple[Objective, ...]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    trials: int | None
    timeout: float | None
    fixed: dict[str, Any]
    params: tuple[Param, ...]
    fault_tolerance: FaultTolerance = field(default_factory=FaultTolerance)
    synthetic: SynthSpec = field(default_factory=SynthSpec)
    description: str = ""
    confirm: Confirm | None = None
    exclude: tuple[tuple[tuple[str, Any], ...], ...] = ()  # combinations a grid skips
    # Trials whose weights the study keeps (the best K, or the Pareto front); the others keep
    # their metrics, config and per-image counts. None: keep every checkpoint.
    keep_checkpoints: int | None = 3
    record: Record | None = None
    stop: Stop | None = None
    warm_start: WarmStart | None = None

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def possible_values(self, name: str) -> list[Any]:
        """What a trial's `name` can be: the fixed value, the choices or the range's ends, or
        TrainConfig's default."""
        param = next((p for p in self.params if p.name == name), None)
        if param is not None:
            return param.options
        if name in self.fixed:
            return [self.fixed[name]]
        return [getattr(TrainConfig(), name)]

    def grid(self) -> dict[str, list[Any]]:
        return {p.name: p.grid_values(self.source) for p in self.params}

    @property
    def enumerated(self) -> bool:
        """A grid with conditional params or exclusions: Optuna's GridSampler needs one fixed
        product, so its points are enqueued instead (`points`), one trial each."""
        return self.sampler["name"] == "grid" and (
            bool(self.exclude) or any(p.when for p in self.params)
        )

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, as Optuna params: conditions followed, exclusions left out."""
        points: list[dict[str, Any]] = [{}]
        for param in self.params:
            grown = []
            for point in points:
                if not param.applies({k: param_value(self, k, v) for k, v in point.items()}):
                    grown.append(point)
                    continue
                grown += [{**point, param.name: v} for v in param.grid_values(self.source)]
            points = grown
        return [p for p in points if not self.excluded(p)]

    def excluded(self, point: dict[str, Any]) -> bool:
        return any(all(point.get(k) == v for k, v in rule) for rule in self.exclude)

    @property
    def trial_budget(self) -> int | None:
        """Trials the study should hold in all; a grid defaults to its size."""
        if self.trials is not None:
            return self.trials
        if self.sampler["name"] == "grid":
            return len(self.points())
        return None

    def sample(self, trial, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The trial's TrainConfig: fixed values, then sampled params (each only where its
        condition holds), then run overrides."""
        values = dict(self.fixed)
        if "monitor" not in values and self.objectives[0].metric in MONITORS:
            # The checkpoint (and so the trial's value) is the best epoch by the objective.
            values["monitor"] = self.objectives[0].metric
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.applies(chosen):
                chosen[param.name] = values[param.name] = param.suggest(trial)
        values.update(overrides or {})
        return TrainConfig.from_dict(values, source=f"{self.source} (trial {trial.number})")


def param_value(space: SearchSpace, name: str, choice: Any) -> Any:
    """The field value behind an Optuna param value (an image_size label -> its list)."""
    param = next(p for p in space.params if p.name == name)
    return param.decode(choice)


def find_space(study: str, space_file: str | Path | None = None) -> Path:
    """--space FILE, else search_spaces/<study>.yaml."""
    if space_file is not None:
        return Path(space_file)
    for folder in (Path("search_spaces"), SEARCH_SPACE_DIR):  # the checkout's, then shipped
        path = folder / f"{study}.yaml"
        if path.is_file():
            return path
    known = sorted(p.stem for p in SEARCH_SPACE_DIR.glob("*.yaml"))
    raise ConfigError(
        f"no search space for study {study!r} (no search_spaces/{study}.yaml); shipped spaces: "
        f"{', '.join(known)}; or pass --space FILE"
    )
