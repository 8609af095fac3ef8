"""A study in pictures: plotly figures, an offline HTML report, the same figures inside
optuna-dashboard, and PNG export through kaleido when a system Chromium exists.

Optuna's own plotly visualizations are used where they exist (history, importances, parallel
coordinates, learning curves, Pareto front); the loss comparison, the per-class IoU heatmap,
the FP32-vs-INT8 table and the prediction grid are built here because no library has them.
"""

from __future__ import annotations

import base64
import html
import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from PIL import Image

from tuner.data.labels import CLASS_NAMES
from tuner.study import metric_names, state_counts

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


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.get_trials(deepcopy=False, states=states) if t.user_attrs]


def _trial_label(trial: FrozenTrial) -> str:
    config = trial.user_attrs.get("config", {})
    parts = [
        f"{k}={v:.2g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
    ]
    return f"#{trial.number} " + (", ".join(parts) or config.get("loss", ""))


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
    """Val mIoU and boundary F1 per loss: the seed's question (which loss keeps edges sharp).
    Pruned trials stand apart ("ce, pruned"): their scores come from fewer epochs."""
    by_loss: dict[str, list[FrozenTrial]] = {}
    for trial in _finished(study):
        loss = trial.params.get("loss") or trial.user_attrs.get("config", {}).get("loss", "?")
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
    trials = [t for t in _finished(study) if t.user_attrs.get("val_per_class_iou")]
    z = [[np.nan if v is None else v for v in t.user_attrs["val_per_class_iou"]] for t in trials]
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=list(CLASS_NAMES),
            y=[_trial_label(t) for t in trials],
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            colorbar={"title": "IoU"},
        )
    )
    figure.update_layout(height=max(320, 28 * len(trials) + 160), xaxis_tickangle=-45)
    return Section("class-iou", SECTIONS["class-iou"], figure=figure)


def quantization_table(study: optuna.Study) -> Section:
    report = study.user_attrs.get("quantization")
    if not report:
        return Section(
            "quantization",
            SECTIONS["quantization"],
            note=f"not quantized yet: run `tuner quantize best --study {study.study_name}`",
        )
    from tuner.quantize import QuantizeReport, comparison_rows

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


# Predictions ---------------------------------------------------------------------------------
def prediction_grid(study: optuna.Study, count: int = 4) -> Section:
    """Photo | truth | prediction | errors (yellow: wrong on a true boundary) for the best trial."""
    from tuner.checkpoint import load_segmenter
    from tuner.data.cityscapes import CityscapesDataset
    from tuner.errors import UserError
    from tuner.predict import Predictor
    from tuner.study import best_trials, fetch_checkpoint
    from tuner.visualize import error_map, overlay

    best = best_trials(study)
    data_root = study.user_attrs.get("data_root")
    if not best:
        return Section("predictions", SECTIONS["predictions"], note="no completed trial yet")
    if not data_root:
        return Section(
            "predictions",
            SECTIONS["predictions"],
            note="the study does not record its dataset (run it again with tuner run)",
        )
    trial = best[0]
    try:  # the checkpoint or the data may live on another machine
        with tempfile.TemporaryDirectory() as tmp:
            model, ckpt = load_segmenter(fetch_checkpoint(study, trial, Path(tmp) / "best.pt"))
        val = CityscapesDataset(data_root, "val", limit=count)
    except UserError as exc:
        return Section("predictions", SECTIONS["predictions"], note=str(exc))
    predictor = Predictor(model, ckpt.config.image_size, next(model.parameters()).device)
    rows = []
    for index in range(len(val)):
        image, truth = val[index]
        pred = predictor(image)
        tiles = [image, overlay(image, truth), overlay(image, pred), error_map(image, pred, truth)]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    uri = png_data_uri(grid)
    caption = (
        f"trial {trial.number} ({_trial_label(trial)}); columns: image, ground truth, "
        "prediction, errors (red: wrong, yellow: wrong on a true class boundary)"
    )
    figure = go.Figure(go.Image(source=uri))
    figure.update_layout(
        title=caption,
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        height=int(620 * grid.shape[0] / grid.shape[1]) + 60,
    )
    body = (
        f'<p>{html.escape(caption)}</p><img class="predictions" alt="predictions" '
        f'src="{uri}" style="max-width:100%">'
    )
    return Section("predictions", SECTIONS["predictions"], figure=figure, html=body)


def png_data_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# Assembling ----------------------------------------------------------------------------------
def build_sections(study: optuna.Study, predictions: bool = True) -> list[Section]:
    sections = optuna_figures(study)
    sections += [loss_comparison(study), class_heatmap(study), quantization_table(study)]
    if predictions:
        sections.append(prediction_grid(study))
    return sections


def render_html(study: optuna.Study, sections: list[Section]) -> str:
    """One self-contained page: plotly.js embedded once, images inline, nothing fetched."""
    parts, plotly_included = [], False
    for section in sections:
        body = ""
        if section.html is not None:
            body = section.html
        elif section.figure is not None:
            body = section.figure.to_html(
                full_html=False, include_plotlyjs=not plotly_included, div_id=f"fig-{section.key}"
            )
            plotly_included = True
        note = f'<p class="note">{html.escape(section.note)}</p>' if section.note else ""
        parts.append(
            f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>'
            f"{note}{body}</section>"
        )
    counts = state_counts(study.get_trials(deepcopy=False))
    summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    title = f"Study {html.escape(study.study_name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
section {{ margin: 2.5rem 0; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .3rem; }}
.note {{ color: #666; }}
</style></head>
<body><h1>{title}</h1>
<p>{summary}; objectives: {html.escape(", ".join(metric_names(study)))}.</p>
{"".join(parts)}
</body></html>
"""


def write_report(study: optuna.Study, out: Path, sections: list[Section] | None = None) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(study, sections if sections is not None else build_sections(study)))
    return out


def attach_to_dashboard(study: optuna.Study, sections: list[Section] | None = None) -> int:
    """Save the figures on the study, where optuna-dashboard shows them."""
    from optuna_dashboard import save_plotly_graph_object

    sections = sections if sections is not None else build_sections(study)
    saved = 0
    for section in sections:
        if section.figure is not None:
            save_plotly_graph_object(study, section.figure, graph_object_id=section.key)
            saved += 1
    return saved


def system_chromium() -> str | None:
    """A Chromium already on this machine; kaleido is never allowed to download one."""
    from choreographer.browsers.chromium import Chromium

    return Chromium.find_browser(skip_local=True)


def export_png(sections: list[Section], folder: Path) -> tuple[list[Path], str]:
    """(written files, message)."""
    if system_chromium() is None:
        return [], "PNG export skipped: no system Chromium found (Debian: apt install chromium)"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for section in sections:
        if section.figure is not None:
            path = folder / f"{section.key}.png"
            section.figure.write_image(path, width=1200, height=section.figure.layout.height or 600)
            written.append(path)
    return written, f"wrote {len(written)} PNG files to {folder}"
