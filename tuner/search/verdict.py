"""Is the winner really ahead? Configurations ranked by their mean over seeds, and the best one
compared with each runner-up on the same validation images (`tuner.core.stats`).

A configuration's runs are its completed trial and its seed confirmations. The comparison
resamples validation images (the same draws for both sides) and, where a configuration has
several runs, which run stands for it: the interval of the difference holds both sources of
noise. "ahead" when that 95 % interval excludes 0; otherwise "not separable from #N".
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact

from tuner.core.stats import Difference, PerImage, paired_difference
from tuner.search import attrs
from tuner.search.confirm import Standing, standings
from tuner.search.study import artifact_store_for

COMPARED = 5  # runner-ups compared with the best
METRIC_OF = {"val_miou": "miou", "val_boundary_f1": "boundary_f1"}  # what per-image counts give


@dataclass
class Verdict:
    best: Standing
    metric: str
    compared: list[tuple[Standing, Difference | None]] = field(default_factory=list)

    @property
    def text(self) -> str:
        number = f"#{self.best.trial.number}"
        if not self.compared:
            return f"{number} is the only completed configuration"
        unknown = [s for s, d in self.compared if d is None]
        close = [s for s, d in self.compared if d is not None and not d.separable]
        if close:
            names = ", ".join(f"#{s.trial.number}" for s in close)
            return (
                f"{number} is not separable from {names}: the 95 % interval of the "
                "difference includes 0"
            )
        if unknown:
            return f"{number} is ahead of those compared; no per-image counts for the rest"
        return f"{number} is ahead: the 95 % interval of its lead over each runner-up excludes 0"

    def to_dict(self) -> dict[str, Any]:
        ci = self.best.ci
        return {
            "trial": self.best.trial.number,
            "params": self.best.trial.params,
            "metric": self.metric,
            "value": self.best.mean,
            "runs": len(self.best.runs),
            "miou_ci": list(ci) if ci else None,
            "verdict": self.text,
            "runner_ups": [
                {
                    "trial": s.trial.number,
                    "value": s.mean,
                    "difference": None if d is None else [d.mean, d.low, d.high],
                    "separable": None if d is None else d.separable,
                }
                for s, d in self.compared
            ],
        }


def decide(study: optuna.Study, compared: int = COMPARED) -> Verdict | None:
    """The verdict on a single-objective study's best configuration, or None when there is
    none to give (no completed trial, several objectives, or an objective that is not a
    validation score)."""
    metric = (study.metric_names or ["val_miou"])[0]
    if len(study.directions) > 1 or metric not in METRIC_OF:
        return None
    ranked = standings(study)
    if not ranked:
        return None
    verdict = Verdict(ranked[0], metric)
    with tempfile.TemporaryDirectory() as tmp:
        counts = _PerImageFiles(study, Path(tmp))
        best = counts.of(ranked[0])
        for standing in ranked[1 : compared + 1]:
            other = counts.of(standing)
            difference = None
            if best and other and best[0].images == other[0].images:
                difference = paired_difference(best, other, METRIC_OF[metric])
            verdict.compared.append((standing, difference))
    return verdict


class _PerImageFiles:
    """Downloads each run's per-image counts from the artifact store once."""

    def __init__(self, study: optuna.Study, folder: Path) -> None:
        self.store, self.folder = artifact_store_for(study), folder

    def of(self, standing: Standing) -> list[PerImage]:
        found = []
        for run in standing.runs:
            artifact = run.user_attrs.get(attrs.PER_IMAGE)
            if artifact is None:
                continue
            path = self.folder / f"{artifact}.npz"
            try:
                if not path.exists():
                    download_artifact(
                        artifact_store=self.store, file_path=str(path), artifact_id=artifact
                    )
                found.append(PerImage.load(path))
            except (OSError, ValueError, KeyError):
                continue  # a missing or unreadable file: that run is left out
        return found
