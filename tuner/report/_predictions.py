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
from PIL import Image, ImageDraw, ImageFont

from tuner.core.checkpoint import load_segmenter
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.labels import CLASS_NAMES, NUM_CLASSES, PALETTE
from tuner.core.errors import UserError
from tuner.core.visualize import error_map, overlay
from tuner.deploy.predict import Predictor
from tuner.report._sections import SECTIONS, Section, titled, trial_label
from tuner.search import attrs
from tuner.search.confirm import standings
from tuner.search.study import best_trials, fetch_checkpoint


# Predictions ---------------------------------------------------------------------------------
def prediction_grid(study: optuna.Study, count: int = 4) -> Section:
    """Photo | truth | prediction | errors (yellow: wrong on a true boundary) for the best trial."""

    # The leaderboard's best: by its mean over seeds where there is one objective.
    best = [s.trial for s in standings(study)][:1] if len(study.directions) == 1 else []
    best = best or best_trials(study)
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
    grid = labelled(np.concatenate(rows, axis=0), COLUMNS)
    uri = jpeg_data_uri(grid)
    caption = (
        f"trial {trial.number} ({trial_label(trial)}); errors: red where wrong, yellow where "
        "wrong on a true class boundary"
    )
    figure = go.Figure(go.Image(source=uri))
    titled(
        figure,
        f"{SECTIONS['predictions']}: {caption}",
        int(900 * grid.shape[0] / grid.shape[1]) + 60,
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    body = (
        f'<p>{html.escape(caption)}</p><img class="predictions" alt="predictions" '
        f'src="{uri}" style="max-width:100%">'
    )
    return Section("predictions", SECTIONS["predictions"], figure=figure, html=body)


COLUMNS = ("image", "ground truth", "prediction", "errors")
MAX_WIDTH = 1280  # pixels: enough to see edges, light enough for the dashboard


def labelled(grid: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """The grid scaled to at most MAX_WIDTH, a header over each column and a legend of the
    Cityscapes class colours under it."""
    image = Image.fromarray(grid)
    if image.width > MAX_WIDTH:
        image = image.resize(
            (MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.Resampling.LANCZOS
        )
    font = ImageFont.load_default()
    header, swatch = 18, 14
    per_row = 7
    legend_rows = -(-NUM_CLASSES // per_row)
    canvas = Image.new(
        "RGB", (image.width, header + image.height + legend_rows * (swatch + 6) + 8), "white"
    )
    canvas.paste(image, (0, header))
    draw = ImageDraw.Draw(canvas)
    column = image.width / len(columns)
    for i, name in enumerate(columns):
        draw.text((i * column + 6, 3), name, fill="black", font=font)
    cell = image.width / per_row
    for k, name in enumerate(CLASS_NAMES):
        x = (k % per_row) * cell + 6
        y = header + image.height + 6 + (k // per_row) * (swatch + 6)
        draw.rectangle([x, y, x + swatch, y + swatch], fill=tuple(int(c) for c in PALETTE[k]))
        draw.text((x + swatch + 4, y + 2), name, fill="black", font=font)
    return np.asarray(canvas)


def jpeg_data_uri(pixels: np.ndarray, quality: int = 82) -> str:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
