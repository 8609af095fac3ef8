"""The best trial's predictions on validation images, with boundary errors highlighted."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

import numpy as np
import optuna
import plotly.graph_objects as go
from PIL import Image

from tuner.core.checkpoint import load_segmenter
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.errors import UserError
from tuner.core.visualize import error_map, overlay
from tuner.deploy.predict import Predictor
from tuner.report._sections import SECTIONS, Section, trial_label
from tuner.search import attrs
from tuner.search.study import best_trials, fetch_checkpoint


# Predictions ---------------------------------------------------------------------------------
def prediction_grid(study: optuna.Study, count: int = 4) -> Section:
    """Photo | truth | prediction | errors (yellow: wrong on a true boundary) for the best trial."""

    best = best_trials(study)
    data_root = study.user_attrs.get(attrs.DATA_ROOT)
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
        f"trial {trial.number} ({trial_label(trial)}); columns: image, ground truth, "
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
