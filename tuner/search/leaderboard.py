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
    list_studies,
    load_existing_study,
    metric_names,
    open_storage,
    ranked_trials,
)
from tuner.search.study.inspect import still_improving, stopped_at
from tuner.search.verdict import Standing, Verdict, decide, standings


def _interval_text(standing: Standing) -> str:
    """The interval of the mean shown beside it; "-" without per-image counts."""
    score = standing.score
    return score.interval_text if score else "-"


def _seeds(standing: Standing) -> str:
    return str(len(standing.runs))


def leaderboard_rows(study: optuna.Study, limit: int = 20) -> tuple[list[list[Any]], list[str]]:
    """Rows and headers: completed configurations first (the mean over seeds, its 95 %
    interval over images and seeds, the seeds), then pruned and failed trials."""
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
    headers = ["#", "state", f"{metrics[0]} (mean)", "95% interval", "seeds", *common]
    headers += param_names
    verdict = decide(study)
    rows = []
    for standing in verdict.ranked if verdict else standings(study):
        t = standing.trial
        rows.append(
            [t.number, "COMPLETE", standing.mean, _interval_text(standing), _seeds(standing)]
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


STUDY_HEADERS = ["study", "trials", "complete", "pruned", "fail", "running", "best (mean)"]


def study_rows(storage_url: str | None) -> list[list[Any]]:
    """`tuner studies`: trials by state and each study's best, by the same mean over seeds
    that `tuner best` and the leaderboard show."""
    rows = []
    for study, counts in list_studies(storage_url):
        running = counts.get("RUNNING", 0) + counts.get("WAITING", 0)
        done = [counts.get(state, 0) for state in ("COMPLETE", "PRUNED", "FAIL")]
        rows.append([study.study_name, sum(counts.values()), *done, running, _best_text(study)])
    return rows


def _best_text(study: optuna.Study) -> str:
    confirms = study.user_attrs.get(attrs.CONFIRMS_STUDY)
    if confirms is not None:
        return f"(seed confirmations of {confirms})"
    if len(study.directions) > 1:
        front = best_trials(study)[:3]
        return "; ".join(f"#{t.number}: " + ", ".join(f"{v:.4f}" for v in t.values) for t in front)
    ranked = standings(study)
    if not ranked:
        return "-"
    seeds = len(ranked[0].runs)
    return f"#{ranked[0].trial.number}: {ranked[0].mean:.4f} ({seeds} seed{'s' * (seeds > 1)})"


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
            own = _own_run(study, verdict.best.trial)
            return json.dumps({"study": study_name, **verdict.to_dict(), **own}, indent=2)
        return json.dumps(
            {"study": study_name, "pareto_front": [_summary(study, t) for t in best]}, indent=2
        )
    if verdict is not None:
        return "\n".join([*_describe_standing(study, verdict), f"verdict: {verdict.text}"])
    metrics = metric_names(study)
    lines = []
    for trial in best:
        lines.append(f"trial {trial.number} of study {study_name!r}")
        lines += [f"  {m}: {v:.4f}" for m, v in zip(metrics, trial.values)]
        lines += [_params(trial), *_trial_lines(study, trial, metrics)]
    return "\n".join(lines)


def _describe_standing(study: optuna.Study, verdict: Verdict) -> list[str]:
    """The headline value (mean over seeds) and the interval of that same value."""
    best, trial = verdict.best, verdict.best.trial
    metric = verdict.metric
    lines = [f"trial {trial.number} of study {study.study_name!r}"]
    if len(best.runs) > 1:
        runs = ", ".join(f"{v:.4f}" for v in best.values)
        lines.append(f"  {metric}: {best.mean:.4f} (mean of {len(best.runs)} seeds: {runs})")
    else:
        lines.append(f"  {metric}: {best.mean:.4f} (one seed)")
    if best.score is not None:
        lines.append(f"  95% interval: {best.score.interval_text} ({best.score.method})")
    else:
        lines.append("  95% interval: not recorded (no per-image counts)")
    lines.append(_params(trial))
    lines.append(f"  of trial {trial.number}'s own run (seed {_seed(trial)}):")
    return lines + _trial_lines(study, trial, [metric])


def _params(trial: FrozenTrial) -> str:
    # By name: storages return params in different orders (the gRPC proxy's is a map).
    return "  params: " + ", ".join(f"{k}={v}" for k, v in sorted(trial.params.items()))


def _seed(trial: FrozenTrial) -> Any:
    return trial.user_attrs.get(attrs.CONFIG, {}).get("seed", 0)


def _trial_lines(study: optuna.Study, trial: FrozenTrial, metrics: list[str]) -> list[str]:
    lines = []
    recorded = trial.user_attrs
    for key in ("val_boundary_f1", "val_pixel_acc", "fit_seconds", "latency_ms",
                "trainable_params", "device"):  # fmt: skip
        if key in recorded and key not in metrics and recorded[key] is not None:
            value = recorded[key]
            lines.append(
                f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"
            )
    epochs = len(recorded.get(attrs.EPOCH_SECONDS, [])) or None
    if recorded.get(attrs.BEST_EPOCH) is not None:
        of = f" of {epochs}" if epochs else ""
        lines.append(f"  best epoch: {recorded[attrs.BEST_EPOCH] + 1}{of} (counted from 1)")
    lines.append(f"  checkpoint: {checkpoint_location(study, trial)}")
    return lines


def _own_run(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    """What belongs to the trial's own run: its seed, best epoch and checkpoint."""
    best_epoch = trial.user_attrs.get(attrs.BEST_EPOCH)
    return {
        "seed": _seed(trial),
        "best_epoch": None if best_epoch is None else best_epoch + 1,  # counted from 1
        "checkpoint": {
            "artifact_id": trial.user_attrs.get(attrs.CHECKPOINT),
            "location": checkpoint_location(study, trial),
        },
    }


def _summary(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "values": dict(zip(metric_names(study), trial.values)),
        "params": trial.params,
        "miou_ci": trial.user_attrs.get(attrs.MIOU_CI),  # of this run: one seed, its images
        **_own_run(study, trial),
    }
