"""A report is a list of sections: a title, and a figure, some HTML or a note saying why it
is empty. The same sections make the HTML page, the dashboard's figures and the PNG files.
Sections that would say nothing for a study (an importance plot of one parameter, say) are
left out rather than drawn."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from tuner.core.text import short

SECTIONS = {
    "decision": "Decision",
    "history": "Optimization history",
    "importances": "Parameter importances",
    "parallel": "Parallel coordinates",
    "learning-curves": "Learning curves",
    "pareto": "Pareto front",
    "latency-front": "Accuracy against latency",
    "comparison": "Configurations compared",
    "class-iou": "Per-class IoU of every trial",
    "quantization": "FP32 vs INT8",
    "predictions": "Best trial on validation images",
    "provenance": "Where these numbers come from",
}
METRIC_LABELS = {
    "val_miou": "val mIoU",
    "val_boundary_f1": "val boundary F1",
    "val_pixel_acc": "val pixel accuracy",
    "latency_ms": "latency (ms per crop)",
    "fit_seconds": "fit seconds",
    "train_loss": "train loss",
    "trainable_params": "trainable parameters",
}


@dataclass
class Section:
    key: str
    title: str
    figure: go.Figure | None = None
    html: str | None = None  # for sections that are not a figure
    note: str = ""


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.user_attrs]


def trial_label(trial: FrozenTrial) -> str:
    """#N and the params it varied: how curves and points are named."""
    parts = ", ".join(f"{k}={short(v)}" for k, v in trial.params.items())
    return f"#{trial.number} {parts}".strip()


def metric_label(name: str) -> str:
    return METRIC_LABELS.get(name, name)


def titled(figure: go.Figure, title: str, height: int = 420) -> go.Figure:
    """Titles inside the figure (the dashboard's cards show no section heading) and a size
    that fits a half-width card."""
    figure.update_layout(
        title={"text": title, "x": 0.01, "font": {"size": 14}},
        height=height,
        margin={"l": 50, "r": 20, "t": 50, "b": 50},
        legend={"font": {"size": 10}},
    )
    return figure
