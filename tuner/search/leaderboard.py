"""What `tuner run` ends with and `tuner best` prints: configurations ranked by their mean over
seeds, each with the 95 % bootstrap interval of its score, and the verdict on the winner."""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.core.errors import StudyError
from tuner.core.text import short
from tuner.search import attrs
from tuner.search.study import (
    best_trials,
    checkpoint_location,
    load_existing_study,
    metric_names,
    open_storage,
    ranked_trials,
)
from tuner.search.study.inspect import still_improving, stopped_at
from tuner.search.verdict import Standing, decide, standings


def _half_width(ci: tuple[float, float] | None) -> str:
    return f"±{(ci[1] - ci[0]) / 2:.4f}" if ci else "-"


def _seeds(standing: Standing) -> str:
    if len(standing.runs) == 1:
        return "1"
    return f"{len(standing.runs)} (±{standing.spread:.4f})"


def leaderboard_rows(study: optuna.Study, limit: int = 20) -> tuple[list[list[Any]], list[str]]:
    """Rows and headers: completed configurations first (mean over seeds, the bootstrap
    interval of the study's own trial, the seeds), then pruned and failed trials."""
    metrics = metric_names(study)
    trials = study.get_trials(deepcopy=False)
    param_names = sorted({p for t in trials for p in t.params})
    common = ["boundary F1", "epochs", "seconds", "latency ms", "trend"]
    if len(study.directions) > 1:  # a Pareto front: no single ranking to average over seeds
        headers = ["#", "state", *metrics, *common, *param_names]
        rows = [
            [t.number, t.state.name, *(t.values or [None] * len(metrics)), *_common(t)]
            + [short(t.params.get(p)) for p in param_names]
            for t in ranked_trials(study)[:limit]
        ]
        return rows, headers
    headers = ["#", "state", metrics[0], "95% CI", "seeds", *common, *param_names]
    rows = []
    for standing in standings(study):
        t = standing.trial
        rows.append(
            [t.number, "COMPLETE", standing.mean, _half_width(standing.ci), _seeds(standing)]
            + _common(t)
            + [short(t.params.get(p)) for p in param_names]
        )
    for t in ranked_trials(study):
        if t.state == TrialState.COMPLETE:
            continue
        state = t.state.name
        last = None
        if t.state == TrialState.PRUNED and stopped_at(t):
            state = f"PRUNED@{stopped_at(t)}"
            last = t.intermediate_values[stopped_at(t)]
        rows.append(
            [t.number, state, last, "-", "-"]
            + _common(t)
            + [short(t.params.get(p)) for p in param_names]
        )
    return rows[:limit], headers


def _common(t: FrozenTrial) -> list[Any]:
    latency = t.user_attrs.get(attrs.LATENCY_MS)
    return [
        t.user_attrs.get("val_boundary_f1"),
        len(t.user_attrs.get(attrs.EPOCH_SECONDS, [])) or None,
        round(t.duration.total_seconds()) if t.duration else None,
        f"{latency:.1f}" if latency is not None else None,
        "rising" if still_improving(t) else "",
    ]


def describe_best(study_name: str, storage_url: str | None, as_json: bool = False) -> str:
    """`tuner best`: the best configuration (or the Pareto front), its interval, its checkpoint
    and the verdict; with `as_json`, the same as one JSON document."""
    study = load_existing_study(study_name, open_storage(storage_url, create=False))
    best = best_trials(study)
    if not best:
        raise StudyError(f"study {study_name!r} has no completed trial yet")
    verdict = decide(study)
    if as_json:
        if verdict is not None:
            return json.dumps({"study": study_name, **verdict.to_dict()}, indent=2)
        return json.dumps(
            {"study": study_name, "pareto_front": [_summary(study, t) for t in best]}, indent=2
        )
    if verdict is not None:
        best = [verdict.best.trial]
    metrics = metric_names(study)
    lines = []
    for trial in best:
        lines.append(f"trial {trial.number} of study {study_name!r}")
        lines += [f"  {m}: {v:.4f}" for m, v in zip(metrics, trial.values)]
        if verdict is not None:
            lines.append(
                f"  95% interval (bootstrap over validation images): {_interval(verdict.best.ci)}"
            )
            if len(verdict.best.runs) > 1:
                runs = ", ".join(f"{v:.4f}" for v in verdict.best.values)
                lines.append(
                    f"  over {len(verdict.best.runs)} seeds: mean {verdict.best.mean:.4f} ({runs})"
                )
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in trial.params.items()))
        recorded = trial.user_attrs
        for key in ("val_boundary_f1", "val_pixel_acc", "best_epoch", "fit_seconds",
                    "latency_ms", "trainable_params", "device"):  # fmt: skip
            if key in recorded and key not in metrics and recorded[key] is not None:
                value = recorded[key]
                lines.append(
                    f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"
                )
        lines.append(f"  checkpoint: {checkpoint_location(study, trial)}")
    if verdict is not None:
        lines.append(f"verdict: {verdict.text}")
    return "\n".join(lines)


def _interval(ci: tuple[float, float] | None) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "not recorded"


def _summary(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "values": dict(zip(metric_names(study), trial.values)),
        "params": trial.params,
        "miou_ci": trial.user_attrs.get(attrs.MIOU_CI),
    }
