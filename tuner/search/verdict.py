"""Is the winner really ahead? Configurations ranked by their mean over seeds (the one number
every surface shows), each with the interval of that same number, and the best one compared
with each runner-up on the same validation images (`tuner.core.stats`).

A configuration's runs are its completed trial and its seed confirmations. The comparison
resamples validation images, paired by name (the same draws for both sides), and the seeds of
each side that has several: the interval of the observed difference holds both sources of
noise. "ahead" when that 95 % interval excludes 0 and both sides ran with at least 2 seeds;
with one seed on either side, "ahead on these images, one seed": seed noise was not measured.

Bootstraps take a second or two, so the result is recorded on the study (a system attribute,
keyed by every run's trial id, value and per-image counts) and reused while those are
unchanged; `tuner best`, `tuner studies`, the report and the dashboard note read the same one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import download_artifact

from tuner.core.stats import Difference, Estimate, PerImage, estimate, paired_difference
from tuner.search import attrs
from tuner.search.confirm import Standing, standings
from tuner.search.study import artifact_store_for

COMPARED = 5  # runner-ups compared with the best
METRIC_OF = {"val_miou": "miou", "val_boundary_f1": "boundary_f1"}  # what per-image counts give
RECORD = "sam_tuner:verdict"  # study system attribute: the last verdict and what it was of
SEEDS_FOR_AHEAD = 2


@dataclass
class Verdict:
    """The ranking with every configuration's score, and the best compared with runner-ups."""

    best: Standing
    metric: str
    ranked: list[Standing] = field(default_factory=list)
    compared: list[tuple[Standing, Difference | None]] = field(default_factory=list)

    @property
    def text(self) -> str:
        number = f"#{self.best.trial.number}"
        if not self.compared:
            return f"{number} is the only completed configuration"
        close = [s for s, d in self.compared if d is not None and not d.separable]
        if close:
            return (
                f"{number} is not separable from {_numbers(close)}: the 95 % interval of the "
                "difference includes 0"
            )
        behind = [s for s, d in self.compared if d is not None]
        if not behind:
            return f"{number} is ranked first; no per-image counts to compare it with the rest"
        seeded = [s for s in behind if _seeds(s) >= SEEDS_FOR_AHEAD]
        one_seed = [s for s in behind if _seeds(s) < SEEDS_FOR_AHEAD]
        if _seeds(self.best) < SEEDS_FOR_AHEAD:
            seeded, one_seed = [], behind
        parts = []
        if seeded:
            parts.append(f"ahead of {_numbers(seeded)} over images and seeds")
        if one_seed:
            parts.append(f"ahead of {_numbers(one_seed)} on these images, one seed")
        text = f"{number} is " + "; ".join(parts)
        if len(behind) < len(self.compared):
            text += " (no per-image counts for the rest)"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.best.trial.number,
            "params": self.best.trial.params,
            "metric": self.metric,
            **_score_dict(self.best),
            "interval_method": self.best.score.method if self.best.score else None,
            "runs": self.best.values,
            "verdict": self.text,
            "runner_ups": [
                {
                    "trial": s.trial.number,
                    **_score_dict(s),
                    "difference": None
                    if d is None
                    else {"observed": d.observed, "low": d.low, "high": d.high},
                    "separable": None if d is None else d.separable,
                }
                for s, d in self.compared
            ],
        }


def _numbers(ranked: list[Standing]) -> str:
    return ", ".join(f"#{s.trial.number}" for s in ranked)


def _seeds(standing: Standing) -> int:
    return len(standing.runs)


def _score_dict(standing: Standing) -> dict[str, Any]:
    score = standing.score
    return {
        "value": standing.mean,
        "interval": None if score is None else [score.low, score.high],
        "seeds": len(standing.runs),
        "images": None if score is None else score.images,
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
    key = _fingerprint(ranked, compared)
    recorded = _recorded(study)
    if recorded.get("key") == key:
        return _rebuild(ranked, metric, compared, recorded)
    verdict = _compute(study, ranked, metric, compared)
    _record(study, key, verdict)
    return verdict


def _compute(study: optuna.Study, ranked: list[Standing], metric: str, compared: int) -> Verdict:
    verdict = Verdict(ranked[0], metric, ranked)
    with tempfile.TemporaryDirectory() as tmp:
        counts = _PerImageFiles(study, Path(tmp))
        # A configuration is scored only when every run has its counts: its interval must be
        # of the very mean the leaderboard shows.
        runs = {id(s): found for s in ranked if len(found := counts.of(s)) == len(s.runs)}
        for standing in ranked:
            if id(standing) in runs:
                try:
                    standing.score = estimate(runs[id(standing)], METRIC_OF[metric])
                except ValueError:
                    standing.score = None  # its runs were scored on different images
        best = runs.get(id(ranked[0]))
        for standing in ranked[1 : compared + 1]:
            other, difference = runs.get(id(standing)), None
            if best and other:
                try:
                    difference = paired_difference(best, other, METRIC_OF[metric])
                except ValueError:
                    difference = None  # scored on other validation images: not comparable
            verdict.compared.append((standing, difference))
    return verdict


def _fingerprint(ranked: list[Standing], compared: int) -> str:
    """What the verdict is of: every run (its trial id, value and per-image counts)."""
    runs = [
        [run._trial_id, run.values[0], run.user_attrs.get(attrs.PER_IMAGE)]
        for standing in ranked
        for run in standing.runs
    ]
    payload = json.dumps([runs, compared, 2], sort_keys=True)  # 2: the format of the record
    return hashlib.sha256(payload.encode()).hexdigest()


def _recorded(study: optuna.Study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id).get(RECORD) or {}


def _record(study: optuna.Study, key: str, verdict: Verdict) -> None:
    payload = {
        "key": key,
        "scores": {
            str(s.trial._trial_id): None
            if s.score is None
            else [s.score.value, s.score.low, s.score.high, s.score.images, s.score.seeds]
            for s in verdict.ranked
        },
        "differences": {
            str(s.trial._trial_id): None if d is None else [d.observed, d.low, d.high]
            for s, d in verdict.compared
        },
    }
    # A read-only storage keeps no record: the verdict is computed again next time.
    with contextlib.suppress(optuna.exceptions.StorageInternalError, OSError):
        study._storage.set_study_system_attr(study._study_id, RECORD, payload)


def _rebuild(
    ranked: list[Standing], metric: str, compared: int, recorded: dict[str, Any]
) -> Verdict:
    scores, differences = recorded["scores"], recorded["differences"]
    for standing in ranked:
        score = scores.get(str(standing.trial._trial_id))
        standing.score = None if score is None else Estimate(*score)
    verdict = Verdict(ranked[0], metric, ranked)
    for standing in ranked[1 : compared + 1]:
        difference = differences.get(str(standing.trial._trial_id))
        verdict.compared.append((standing, None if difference is None else Difference(*difference)))
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
