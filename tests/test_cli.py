"""The core commands as a user types them: train, predict, evaluate, and their errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from official_eval import official_scores
from PIL import Image

from tuner.cli import main
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.labels import PALETTE

TINY_FLAGS = ["--epochs", "2", "--image-size", "64", "128", "--batch-size", "2", "--threads", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(
        main, ["train", "--data", str(tiny_data), "--out", str(out), "--lr", "3e-3", *TINY_FLAGS]
    )
    assert result.exit_code == 0, result.output
    return out / "best.pt", result.output


def test_train_prints_a_metrics_table_with_every_class(trained):
    checkpoint, output = trained
    assert checkpoint.is_file()
    for name in ("road", "traffic sign", "bicycle", "mean (mIoU / mBF1)", "pixel accuracy"):
        assert name in output
    assert re.search(r"s per epoch\)", output)


@pytest.mark.slow
def test_train_with_defaults_uses_the_embedded_synthetic_set(tuner_home):
    result = CliRunner().invoke(main, ["train", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "sam_tiny/conv" in result.output and "mean (mIoU / mBF1)" in result.output
    (data,) = (p for p in (tuner_home / "data").iterdir() if p.is_dir())
    assert len(CityscapesDataset(data, "train")) == 64
    assert (tuner_home / "runs" / "sam_tiny-conv-ce" / "best.pt").is_file()


def test_predict_writes_colour_labels_and_overlays(trained, tiny_data, tmp_path):
    checkpoint, _ = trained
    images = sorted((tiny_data / "leftImg8bit" / "val").rglob("*.png"))[:2]
    result = CliRunner().invoke(
        main,
        ["predict", "--checkpoint", str(checkpoint), *map(str, images), "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    for image in images:
        colour = np.array(Image.open(tmp_path / f"{image.stem}_color.png"))
        assert colour.shape == (128, 256, 3)
        palette = {tuple(c) for c in PALETTE[:19]}
        assert {tuple(c) for c in colour.reshape(-1, 3)} <= palette
        assert (tmp_path / f"{image.stem}_overlay.png").is_file()


def test_evaluate_writes_files_the_official_script_scores_the_same(trained, tiny_data, tmp_path):
    checkpoint, _ = trained
    result = CliRunner().invoke(
        main,
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(tiny_data),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    ours = float(re.search(r"mean \(mIoU / mBF1\)\s+([0-9.]+)", result.output).group(1))
    gts = sorted(str(p) for p in (tiny_data / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    preds = [
        str(tmp_path / (p.split("/")[-1].replace("_gtFine_labelIds", "_pred_labelIds")))
        for p in gts
    ]
    official, _ = official_scores(preds, gts)
    assert ours == pytest.approx(official, abs=5e-5)  # the table prints 4 decimals


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "/nonexistent"], "/nonexistent/leftImg8bit/train: folder not found"),
        (["train", "--loss", "hinge"], "'--loss': 'hinge' is not one of 'ce', 'ohem_ce'"),
        (["train", "--freeze-depth", "9"], "freeze_depth=9: expected an integer from 0 to 6"),
        (["train", "--image-size", "100", "100"], "image_size=(100, 100): expected"),
        (["predict", "--checkpoint", "/nope.pt", "x.png", "--out", "o"], "/nope.pt: checkpoint"),
        (["run", "--study", "nope"], "no search space for study 'nope'"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message, tuner_home):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_config_file_errors_name_the_file_and_key(tmp_path, tuner_home):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: ce\nlearning_rate: 0.1\n")
    result = CliRunner().invoke(main, ["train", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}: unknown key 'learning_rate'" in result.output
