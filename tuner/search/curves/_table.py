"""The learning-curve table: every recorded run of a grid, epoch by epoch, as data.

One JSON document, small enough to ship (a few hundred runs of a handful of epochs are tens of
kB). A run is one configuration (`params`, Optuna's values) and one `seed`; per epoch it holds
the objective (val mIoU), the boundary F1 and the seconds the epoch took, plus the seconds
outside the epochs (`setup_s`: building the model, measuring latency) that a trial also pays.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuner.core.errors import ConfigError
from tuner.core.fsutil import atomic_write

FORMAT = "sam-tuner/learning-curves"
VERSION = 1


@dataclass(frozen=True)
class Curve:
    """One recorded run: a configuration and seed, epoch by epoch."""

    params: dict[str, Any]
    seed: int
    miou: tuple[float, ...]
    boundary_f1: tuple[float, ...]
    epoch_s: tuple[float, ...]
    setup_s: float = 0.0
    interval: tuple[float, float] | None = None  # 95 % interval of the best epoch's mIoU

    def best(self, epochs: int | None = None) -> float:
        """The run's value as a trial reports it: its best epoch (of the first `epochs`)."""
        return max(self.miou[: epochs or len(self.miou)])

    def cost(self, epochs: int | None = None) -> float:
        """Seconds a trial that reads the first `epochs` epochs pays."""
        return self.setup_s + sum(self.epoch_s[: epochs or len(self.epoch_s)])


def config_key(params: dict[str, Any]) -> tuple:
    return tuple(sorted(params.items()))


@dataclass
class CurveTable:
    """Every run of the recorded grid. `levels` is the grid: per param, the values recorded."""

    study: str
    levels: dict[str, list[Any]]
    seeds: list[int]
    curves: list[Curve]
    fidelity: dict[str, Any] = field(default_factory=dict)  # the TrainConfig values recorded at
    metric: str = "val_miou"
    recorded_on: str = ""  # device and instruction sets: the seconds are this machine's
    command: str = ""  # how to record it again

    def __post_init__(self) -> None:
        self._runs = {(config_key(c.params), c.seed): c for c in self.curves}

    @property
    def epochs(self) -> int:
        return min(len(c.miou) for c in self.curves)

    def configurations(self) -> list[dict[str, Any]]:
        seen: dict[tuple, dict[str, Any]] = {}
        for curve in self.curves:
            seen.setdefault(config_key(curve.params), curve.params)
        return list(seen.values())

    def curve(self, params: dict[str, Any], seed: int) -> Curve:
        try:
            return self._runs[(config_key(params), seed)]
        except KeyError:
            raise ConfigError(
                f"learning-curve table of {self.study!r}: no run of {params} with seed {seed}"
            ) from None

    def runs_of(self, params: dict[str, Any]) -> list[Curve]:
        return [self._runs[(config_key(params), s)] for s in self.seeds]

    def mean_value(self, params: dict[str, Any], epochs: int | None = None) -> float:
        """A configuration's true value, as far as the table knows: its mean over seeds."""
        runs = self.runs_of(params)
        return sum(c.best(epochs) for c in runs) / len(runs)

    def best_mean(self) -> float:
        return max(self.mean_value(p) for p in self.configurations())

    def grid_cost(self) -> float:
        """Seconds of one grid pass: every configuration once, every epoch (mean over seeds)."""
        return sum(
            sum(c.cost() for c in self.runs_of(p)) / len(self.seeds) for p in self.configurations()
        )

    def where(self, **fixed: Any) -> CurveTable:
        """The runs whose params hold these values: a slice, e.g. the `losses` study's grid."""
        curves = [
            dataclasses.replace(c, params={k: v for k, v in c.params.items() if k not in fixed})
            for c in self.curves
            if all(c.params.get(k) == v for k, v in fixed.items())
        ]
        if not curves:
            raise ConfigError(f"learning-curve table of {self.study!r}: no run has {fixed}")
        levels = {k: v for k, v in self.levels.items() if k not in fixed}
        return CurveTable(
            self.study, levels, self.seeds, curves, {**self.fidelity, **fixed}, self.metric
        )

    def check(self, source: str) -> None:
        """Every grid point has every seed, with one value and one time per epoch."""
        for curve in self.curves:
            lengths = {len(curve.miou), len(curve.boundary_f1), len(curve.epoch_s)}
            if len(lengths) != 1 or not curve.miou:
                raise ConfigError(
                    f"{source}: run {curve.params} seed {curve.seed}: epochs of unequal length"
                )
            if any(math.isnan(v) for v in curve.miou):
                raise ConfigError(f"{source}: run {curve.params} seed {curve.seed}: NaN mIoU")
        expected = math.prod(len(v) for v in self.levels.values()) if self.levels else 1
        configurations = self.configurations()
        for params in configurations:
            for seed in self.seeds:
                if (config_key(params), seed) not in self._runs:
                    raise ConfigError(f"{source}: no run of {params} with seed {seed}")
        if len(configurations) > expected:
            raise ConfigError(
                f"{source}: {len(configurations)} configurations; levels allow {expected}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "study": self.study,
            "metric": self.metric,
            "fidelity": self.fidelity,
            "levels": self.levels,
            "seeds": self.seeds,
            "recorded_on": self.recorded_on,
            "command": self.command,
            "runs": [_rounded(asdict(c)) for c in self.curves],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = json.dumps(self.to_dict(), separators=(",", ":")) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text))
        return path

    @classmethod
    def load(cls, path: str | Path) -> CurveTable:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: learning-curve table not found") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a learning-curve table (format is not {FORMAT!r})")
        if raw.get("version") != VERSION:
            raise ConfigError(f"{path}: version={raw.get('version')!r}: expected {VERSION}")
        try:
            curves = [
                Curve(
                    params=dict(r["params"]),
                    seed=int(r["seed"]),
                    miou=tuple(r["miou"]),
                    boundary_f1=tuple(r["boundary_f1"]),
                    epoch_s=tuple(r["epoch_s"]),
                    setup_s=float(r.get("setup_s", 0.0)),
                    interval=tuple(r["interval"]) if r.get("interval") else None,
                )
                for r in raw["runs"]
            ]
            table = cls(
                study=str(raw["study"]),
                levels={k: list(v) for k, v in raw["levels"].items()},
                seeds=[int(s) for s in raw["seeds"]],
                curves=curves,
                fidelity=dict(raw.get("fidelity") or {}),
                metric=str(raw.get("metric", "val_miou")),
                recorded_on=str(raw.get("recorded_on", "")),
                command=str(raw.get("command", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: malformed run or field: {exc!r}") from None
        if not curves:
            raise ConfigError(f"{path}: holds no runs")
        table.check(str(path))
        return table


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [_rounded(v) for v in value]
    return value
