"""A report is a list of sections: a title, and a figure, some HTML or a note saying why it
is empty. The same sections make the HTML page, the dashboard's figures and the PNG files."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from tuner.search import attrs

SECTIONS = {
    "history": "Optimization history",
    "importances": "Parameter importances",
    "parallel": "Parallel coordinates",
    "learning-curves": "Learning curves (val mIoU per epoch)",
    "pareto": "Pareto front",
    "loss-comparison": "Losses compared",
    "class-iou": "Per-class IoU of every trial",
    "quantization": "FP32 vs INT8",
    "predictions": "Best trial on validation images",
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
    config = trial.user_attrs.get(attrs.CONFIG, {})
    parts = [
        f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    ]
    return f"#{trial.number} " + (", ".join(parts) or config.get("loss", ""))
