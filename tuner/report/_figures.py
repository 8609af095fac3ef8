"""The figures of a study: Optuna's own visualizations where they exist, and the loss
comparison, the per-class IoU heatmap and the FP32-vs-INT8 table, which no library has."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from tuner.core.data.labels import CLASS_NAMES
from tuner.deploy.quantize import QuantizeReport, comparison_rows
from tuner.report._sections import SECTIONS, Section, finished_trials, trial_label
from tuner.search import attrs
from tuner.search.study import metric_names


# Figures -------------------------------------------------------------------------------------
def optuna_figures(study: optuna.Study) -> list[Section]:
    """Optuna's plotly visualizations; each section says why when it cannot be drawn yet."""
    vis = optuna.visualization
    names = metric_names(study)
    multi = len(study.directions) > 1
    target = {"target": (lambda t: t.values[0]), "target_name": names[0]} if multi else {}
    makers = {
        "history": lambda: vis.plot_optimization_history(study, **target),
        "importances": lambda: vis.plot_param_importances(study),
        "parallel": lambda: vis.plot_parallel_coordinate(study, **target),
    }
    if multi:
        makers["pareto"] = lambda: vis.plot_pareto_front(study, target_names=names)
    else:
        makers["learning-curves"] = lambda: vis.plot_intermediate_values(study)
    sections = []
    for key, make in makers.items():
        try:
            figure = make()
            sections.append(Section(key, SECTIONS[key], figure=figure))
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            sections.append(Section(key, SECTIONS[key], note=f"not available yet: {exc}"))
    return sections


def loss_comparison(study: optuna.Study) -> Section:
    """Val mIoU and boundary F1 per loss: the blog post's question (which loss keeps object
    edges sharp). Pruned trials stand apart ("ce, pruned"): their scores come from fewer epochs."""
    by_loss: dict[str, list[FrozenTrial]] = {}
    for trial in finished_trials(study):
        loss = trial.params.get("loss") or trial.user_attrs.get(attrs.CONFIG, {}).get("loss", "?")
        if trial.state == TrialState.PRUNED:
            loss = f"{loss}, pruned"
        by_loss.setdefault(loss, []).append(trial)
    figure = go.Figure()
    for metric, name in (("val_miou", "val mIoU"), ("val_boundary_f1", "boundary F1")):
        xs, ys, texts = [], [], []
        for loss, trials in sorted(by_loss.items()):
            for trial in trials:
                value = trial.user_attrs.get(metric)
                if value is not None and not math.isnan(value):
                    xs.append(loss)
                    ys.append(value)
                    texts.append(f"trial {trial.number} ({trial.state.name.lower()})")
        figure.add_trace(
            go.Box(x=xs, y=ys, name=name, boxpoints="all", text=texts, pointpos=0, jitter=0.3)
        )
    figure.update_layout(boxmode="group", yaxis_title="score (best epoch)", xaxis_title="loss")
    return Section("loss-comparison", SECTIONS["loss-comparison"], figure=figure)


def class_heatmap(study: optuna.Study) -> Section:
    trials = [t for t in finished_trials(study) if t.user_attrs.get("val_per_class_iou")]
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
    figure.update_layout(height=max(320, 28 * len(trials) + 160), xaxis_tickangle=-45)
    return Section("class-iou", SECTIONS["class-iou"], figure=figure)


def quantization_table(study: optuna.Study) -> Section:
    report = study.user_attrs.get(attrs.QUANTIZATION)
    if not report:
        return Section(
            "quantization",
            SECTIONS["quantization"],
            note=f"not quantized yet: run `tuner quantize best --study {study.study_name}`",
        )
    rows, headers = comparison_rows(QuantizeReport.from_dict(report))
    columns = [[_cell(row[i]) for row in rows] for i in range(len(headers))]
    figure = go.Figure(go.Table(header={"values": headers}, cells={"values": columns}))
    figure.update_layout(height=120 + 40 * len(rows), margin={"t": 20, "b": 20})
    isa = ", ".join(k for k, v in report["cpu"]["isa"].items() if v)
    note = (
        f"trial {report.get('extras', {}).get('trial')}; {report['reason']}. "
        f"CPU: {report['cpu']['model']} ({isa})."
    )
    return Section("quantization", SECTIONS["quantization"], figure=figure, note=note)


def _cell(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
