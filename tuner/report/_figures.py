"""The figures no library draws: the learning curves, the configurations compared (each at
its headline value with that value's interval) and the per-class IoU heatmap."""

from __future__ import annotations

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from tuner.core.data.labels import CLASS_NAMES
from tuner.report._sections import (
    SECTIONS,
    Section,
    finished_trials,
    metric_label,
    titled,
    trial_label,
)
from tuner.search import attrs
from tuner.search.study import metric_names
from tuner.search.study.inspect import still_improving, stopped_at
from tuner.search.verdict import decide, standings


def learning_curves(study: optuna.Study) -> Section | None:
    """Val mIoU per epoch of every trial, named by its params; pruned trials dashed and named
    by the epoch they stopped at; trials still rising at their last epoch marked."""
    trials = [t for t in finished_trials(study) if t.user_attrs.get(attrs.HISTORY)]
    if not trials:
        return None
    figure = go.Figure()
    rising = []
    for trial in sorted(trials, key=lambda t: t.number):
        history = trial.user_attrs[attrs.HISTORY]
        name = trial_label(trial)
        if trial.state == TrialState.PRUNED:
            name += f" (pruned after epoch {stopped_at(trial) or len(history)})"
        elif still_improving(trial):
            name += " (still rising)"
            rising.append(trial.number)
        figure.add_trace(
            go.Scatter(
                x=[h["epoch"] + 1 for h in history],
                y=[h["val_miou"] for h in history],
                mode="lines+markers",
                name=name,
                line={"dash": "dash" if trial.state == TrialState.PRUNED else "solid"},
            )
        )
    figure.update_layout(xaxis_title="epoch", yaxis_title="val mIoU")
    note = ""
    if rising:
        note = (
            "not converged: " + ", ".join(f"#{n}" for n in rising) + " still improved at their "
            "last epoch; more epochs may change the ranking"
        )
    return Section(
        "learning-curves",
        SECTIONS["learning-curves"],
        figure=titled(figure, SECTIONS["learning-curves"]),
        note=note,
    )


PLURALS = {"loss": "losses", "head": "heads", "model": "models"}


def comparison(study: optuna.Study) -> Section | None:
    """Each completed configuration: its score (mean over seeds), the 95 % interval of that
    mean, and each seed's value. Pruned trials stand apart, at the score they had when
    they stopped: fewer epochs, so not comparable with the completed ones."""
    if len(study.directions) > 1:
        return None
    verdict = decide(study)  # the standings, with their scores
    ranked = verdict.ranked if verdict is not None else standings(study)
    pruned = [t for t in finished_trials(study) if t.state == TrialState.PRUNED]
    if not ranked and not pruned:
        return None
    varied = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    title = SECTIONS["comparison"]
    if len(varied) == 1:
        title = f"{PLURALS.get(varied[0], varied[0] + ' values').capitalize()} compared"

    def label(trial: FrozenTrial) -> str:
        if len(varied) == 1:
            return f"{trial.params.get(varied[0])} (#{trial.number})"
        return trial_label(trial)

    figure = make_subplots(
        rows=1,
        cols=2 if pruned else 1,
        column_widths=[0.72, 0.28] if pruned else None,
        shared_yaxes=True,
        subplot_titles=("completed", "pruned") if pruned else None,
    )
    metric = metric_label(metric_names(study)[0])
    xs = [label(s.trial) for s in ranked]
    errors = [
        (s.mean - s.score.low, s.score.high - s.mean) if s.score else (0.0, 0.0) for s in ranked
    ]
    figure.add_trace(
        go.Scatter(
            x=xs,
            y=[s.mean for s in ranked],
            mode="markers",
            marker={"size": 11},
            name="mean over seeds",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [e[1] for e in errors],
                "arrayminus": [e[0] for e in errors],
            },
        ),
        row=1,
        col=1,
    )
    seeds_x = [label(s.trial) for s in ranked for _ in s.runs]
    seeds_y = [v for s in ranked for v in s.values]
    if len(seeds_x) > len(xs):
        figure.add_trace(
            go.Scatter(x=seeds_x, y=seeds_y, mode="markers", name="each seed", marker={"size": 6}),
            row=1,
            col=1,
        )
    if pruned:
        figure.add_trace(
            go.Scatter(
                x=[f"{label(t)} @{stopped_at(t)}" for t in pruned],
                y=[t.intermediate_values[stopped_at(t)] for t in pruned],
                mode="markers",
                marker={"size": 9, "symbol": "x"},
                name="pruned: score at its last epoch",
            ),
            row=1,
            col=2,
        )
    figure.update_yaxes(title_text=metric, row=1, col=1)
    method = next((s.score.method for s in ranked if s.score), None)
    note = (
        "Completed: each configuration at its mean over seeds (its best epoch per run), with "
        f"the 95 % interval of that mean ({method or 'no per-image counts: no interval'})"
        + ("; each seed's own value beside it." if len(seeds_x) > len(xs) else ".")
    )
    if pruned:
        note += " Pruned: the score when stopped, fewer epochs, so not comparable."
    return Section("comparison", title, figure=titled(figure, title, height=440), note=note)


def class_heatmap(study: optuna.Study) -> Section | None:
    """Per-class IoU of each finished trial at its best epoch; a pruned trial's row is marked,
    since it stopped early; a class with no pixel in any validation image has no IoU (blank)
    and the note says which."""
    trials = [t for t in finished_trials(study) if t.user_attrs.get("val_per_class_iou")]
    if not trials:
        return None
    z = [[np.nan if v is None else v for v in t.user_attrs["val_per_class_iou"]] for t in trials]

    def row_label(trial: FrozenTrial) -> str:
        label = trial_label(trial)
        if trial.state == TrialState.PRUNED:
            label += f" (pruned after epoch {stopped_at(trial)})"
        return label

    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(CLASS_NAMES),
            y=[row_label(t) for t in trials],
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": "IoU"},
        )
    )
    figure.update_layout(xaxis_tickangle=-45)
    blank = [name for k, name in enumerate(CLASS_NAMES) if all(np.isnan(row[k]) for row in z)]
    note = ""
    if blank:
        note = (
            f"Blank columns ({', '.join(blank)}): no validation image has a pixel of that "
            "class, so its IoU is undefined and left out of the mean, as the official "
            "evaluation does."
        )
    if any(t.state == TrialState.PRUNED for t in trials):
        note += " Rows marked 'pruned' stopped early: fewer epochs than the others."
    height = max(360, 26 * len(trials) + 200)
    return Section(
        "class-iou",
        SECTIONS["class-iou"],
        figure=titled(figure, SECTIONS["class-iou"], height),
        note=note.strip(),
    )
