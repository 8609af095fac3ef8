"""The figures of a study: Optuna's own visualizations where they say something, and the
learning curves, the configurations compared (with their intervals), the accuracy-latency
front, the per-class IoU heatmap and the FP32-vs-INT8 table, which no library draws."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from tuner.core.data.labels import CLASS_NAMES
from tuner.deploy.quantize import QuantizeReport, comparison_rows
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
from tuner.search.verdict import standings


def optuna_figures(study: optuna.Study) -> list[Section]:
    """History always; importances and parallel coordinates only when two or more parameters
    vary (with one, they are a single bar and a restatement of the comparison); the Pareto
    front of a multi-objective study."""
    vis = optuna.visualization
    names = metric_names(study)
    multi = len(study.directions) > 1
    varied = {p for t in study.get_trials(deepcopy=False) for p in t.params}
    target = {"target": (lambda t: t.values[0])} if multi else {}
    makers = {
        "history": lambda: vis.plot_optimization_history(
            study, target_name=metric_label(names[0]), **target
        )
    }
    if len(varied) >= 2:
        complete = with_absent_params(study)
        makers["importances"] = lambda: vis.plot_param_importances(
            complete, target_name=metric_label(names[0]), **target
        )
        makers["parallel"] = lambda: vis.plot_parallel_coordinate(
            complete, target_name=metric_label(names[0]), **target
        )
    if multi:
        labels = [metric_label(n) for n in names]
        makers["pareto"] = lambda: vis.plot_pareto_front(study, target_names=labels)
    sections = []
    for key, make in makers.items():
        try:
            sections.append(Section(key, SECTIONS[key], figure=titled(make(), SECTIONS[key])))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            sections.append(Section(key, SECTIONS[key], note=f"not available yet: {exc}"))
    return sections


ABSENT = "n/a"


def with_absent_params(study: optuna.Study) -> optuna.Study:
    """The study's finished trials in memory, with each conditional categorical param that a
    trial did not have (lora_rank where adapter is none) set to "n/a". Optuna's parallel
    coordinates skip a trial that lacks any param and its importances use only the params every
    trial has, so without this a conditional space loses either its baseline trials or the
    dimensions that make it conditional."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    names = {p for t in trials for p in t.params}
    if all(set(t.params) == names for t in trials):
        return study
    choices: dict[str, list] = {}
    for trial in trials:
        for name, dist in trial.distributions.items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                choices.setdefault(name, [*dist.choices, ABSENT])
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        filled = optuna.create_study(directions=study.directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for trial in trials:
        params, dists = dict(trial.params), dict(trial.distributions)
        for name in choices:
            params.setdefault(name, ABSENT)
            dists[name] = optuna.distributions.CategoricalDistribution(choices[name])
        filled.add_trial(
            optuna.trial.create_trial(params=params, distributions=dists, values=trial.values)
        )
    return filled


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
    """Each completed configuration: its score (mean over seeds), the 95 % bootstrap interval of
    its trial, and each seed's value. Pruned trials stand apart, at the score they had when
    they stopped: fewer epochs, so not comparable with the completed ones."""
    if len(study.directions) > 1:
        return None
    ranked = standings(study)
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
        subplot_titles=("completed (best epoch, 95 % interval)", "pruned (when stopped)"),
    )
    metric = metric_label(metric_names(study)[0])
    xs = [label(s.trial) for s in ranked]
    errors = [(s.mean - s.ci[0], s.ci[1] - s.mean) if s.ci else (0.0, 0.0) for s in ranked]
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
    return Section("comparison", title, figure=titled(figure, title, height=440))


def latency_front(study: optuna.Study) -> Section | None:
    """val mIoU against latency per crop: every completed FP32 trial, its Pareto front, and
    the INT8 copies `tuner quantize` made (their latency is the trial's, scaled by the speed-up
    measured between the FP32 and INT8 models)."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(attrs.LATENCY_MS) is not None
        and t.user_attrs.get("val_miou") is not None
    ]
    if len(trials) < 2 and not study.user_attrs.get(attrs.QUANTIZATION):
        return None
    points = [(t.user_attrs[attrs.LATENCY_MS], t.user_attrs["val_miou"], t) for t in trials]
    front = _front(points)
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            mode="markers",
            name="FP32 trials",
            text=[trial_label(p[2]) for p in points],
        )
    )
    figure.add_trace(
        go.Scatter(
            x=[p[0] for p in front],
            y=[p[1] for p in front],
            mode="lines+markers",
            name="FP32 front",
            line={"dash": "dot"},
            marker={"size": 10, "symbol": "circle-open"},
        )
    )
    int8 = _int8_points(study, {t.number: t for t in trials})
    if int8:
        figure.add_trace(
            go.Scatter(
                x=[p[0] for p in int8],
                y=[p[1] for p in int8],
                mode="markers",
                marker={"symbol": "diamond", "size": 11},
                name="INT8 copies",
                text=[p[2] for p in int8],
            )
        )
    figure.update_layout(xaxis_title="latency (ms per crop, batch 1)", yaxis_title="val mIoU")
    return Section(
        "latency-front", SECTIONS["latency-front"], figure=titled(figure, SECTIONS["latency-front"])
    )


def _front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The points no other point beats on both latency (lower) and mIoU (higher)."""
    front, best = [], -math.inf
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def _int8_points(study: optuna.Study, trials: dict[int, FrozenTrial]) -> list[tuple]:
    report = study.user_attrs.get(attrs.QUANTIZATION)
    if not report:
        return []
    rows = report.get("extras", {}).get("top") or [_single_row(report)]
    points = []
    for row in rows:
        trial = trials.get(row.get("trial"))
        if trial is None or "int8_miou" not in row:
            continue
        scale = row["latency_ms"] / row["fp32_latency_ms"] if row.get("fp32_latency_ms") else 1
        points.append(
            (trial.user_attrs[attrs.LATENCY_MS] * scale, row["int8_miou"], f"#{trial.number}")
        )
    return points


def _single_row(report: dict) -> dict:
    chosen = next(c for c in report["candidates"] if c["name"] == report["chosen"])
    return {
        "trial": report.get("extras", {}).get("trial"),
        "int8_miou": chosen["miou"],
        "latency_ms": chosen["latency_ms"],
        "fp32_latency_ms": report["fp32"]["latency_ms"],
    }


def class_heatmap(study: optuna.Study) -> Section | None:
    trials = [t for t in finished_trials(study) if t.user_attrs.get("val_per_class_iou")]
    if not trials:
        return None
    z = [[np.nan if v is None else v for v in t.user_attrs["val_per_class_iou"]] for t in trials]
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(CLASS_NAMES),
            y=[trial_label(t) for t in trials],
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": "IoU"},
        )
    )
    figure.update_layout(xaxis_tickangle=-45)
    height = max(360, 26 * len(trials) + 200)
    return Section(
        "class-iou", SECTIONS["class-iou"], figure=titled(figure, SECTIONS["class-iou"], height)
    )


# The columns a half-width dashboard card has room for.
QUANTIZATION_COLUMNS = ("model", "run as", "mIoU", "drop (pts)", "latency ms", "size vs FP32")


def quantization_table(study: optuna.Study) -> Section:
    report = study.user_attrs.get(attrs.QUANTIZATION)
    if not report:
        return Section(
            "quantization",
            SECTIONS["quantization"],
            note=f"not quantized yet: run `tuner quantize best --study {study.study_name}`",
        )
    rows, headers = comparison_rows(QuantizeReport.from_dict(report))
    keep = [headers.index(c) for c in QUANTIZATION_COLUMNS]
    columns = [[row[i] for row in rows] for i in keep]
    figure = go.Figure(
        go.Table(
            columnwidth=[3, 2, 2, 2, 2, 2],
            header={"values": list(QUANTIZATION_COLUMNS), "font": {"size": 11}},
            cells={"values": columns, "font": {"size": 11}, "height": 24},
        )
    )
    titled(figure, SECTIONS["quantization"], height=110 + 26 * len(rows))
    isa = ", ".join(k for k, v in report["cpu"]["isa"].items() if v)
    kept = {c["name"]: c.get("kept_fp32") for c in report["candidates"] if c.get("kept_fp32")}
    note = (
        f"trial {report.get('extras', {}).get('trial')}; {report['reason']}. "
        f"CPU: {report['cpu']['model']} ({isa})."
        + "".join(f" {name} keeps {', '.join(mods)} in FP32." for name, mods in kept.items())
    )
    return Section("quantization", SECTIONS["quantization"], figure=figure, note=note)
