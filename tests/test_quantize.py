"""`tuner quantize`: INT8 through Intel Neural Compressor, gated on accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from tuner.cli import main
from tuner.core.config import TrainConfig
from tuner.core.environment import cpu_info
from tuner.core.errors import CheckpointError
from tuner.core.model import build_segmenter
from tuner.deploy.quantize import QuantizeOptions
from tuner.deploy.quantize._inc import quantize_model
from tuner.deploy.quantize._store import load_quantized_staging, save_quantized
from tuner.deploy.trials import quantize_trial
from tuner.search.study import fetch_checkpoint, load_existing_study, open_storage

pytestmark = pytest.mark.slow
FAST = QuantizeOptions(compile=False, calib=4, latency_images=1, latency_repeats=1)


@pytest.fixture(scope="module")
def study_home(tmp_path_factory):
    """A two-trial study trained on the tiny synthetic set, as `tuner run` leaves it."""
    home = tmp_path_factory.mktemp("qhome")
    space = {
        "study": "q",
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "fixed": {
            "model": "sam_tiny",
            "head": "conv",
            "epochs": 3,
            "batch_size": 2,
            "image_size": [64, 128],
            "encoder_lr_mult": 1.0,
            "lr": 3e-3,
        },
        "params": {"loss": {"type": "categorical", "choices": ["ce"]}},
        "synthetic": {"train": 8, "val": 4, "height": 128, "width": 256},
    }
    path = home / "q.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        result = CliRunner().invoke(
            main, ["run", "--study", "q", "--space", str(path), "--no-report"]
        )
        assert result.exit_code == 0, result.output
        yield home


def quantize_cli(home: Path, *args: str):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        return CliRunner().invoke(main, ["quantize", *args, "--no-compile", "--calib", "4"])


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_static_and_dynamic_stay_within_the_default_tolerance(study_home, method, tmp_path):
    out = tmp_path / method
    result = quantize_cli(study_home, "best", "--study", "q", "--method", method, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"int8 {method} (chosen)" in result.output
    report = json.loads((out / "comparison.json").read_text())
    chosen = report["candidates"][0]
    assert (report["fp32"]["miou"] - chosen["miou"]) * 100 <= 1.0  # default tolerance
    assert chosen["latency_ms"] > 0 and chosen["size_bytes"] > 0
    assert report["cpu"]["isa"] == cpu_info()["isa"]  # the instruction sets ride along
    # Stored on the study: the comparison as a user attr, the model folder as an artifact.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        study = load_existing_study("q", open_storage(None))
    stored = study.user_attrs["quantization"]
    assert stored["chosen"] == f"int8 {method}"
    artifact = Path(study.user_attrs["artifact_store"]) / stored["extras"]["artifact_id"]
    assert artifact.is_file() and artifact.stat().st_size > 1000

    # The saved model runs through `tuner predict --model`.
    image = next((study_home / "data").rglob("*_leftImg8bit.png"))
    predicted = CliRunner().invoke(
        main, ["predict", "--model", str(out), str(image), "--out", str(tmp_path / "pred")]
    )
    assert predicted.exit_code == 0, predicted.output
    assert (tmp_path / "pred" / f"{image.stem}_overlay.png").is_file()


@pytest.mark.parametrize("method", ["static", "dynamic", "weight_only"])
def test_save_and_reload_give_equal_outputs(method, tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(image_size=(64, 128), head="conv")
    model = build_segmenter(config).eval()
    with torch.no_grad():  # move off the zero-initialised tables so every part matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    windows = [torch.randn(3, 64, 128) for _ in range(4)]
    quantized, example = quantize_model(method, model, (64, 128), windows)
    save_quantized(quantized, method, example, tmp_path)
    reloaded, _ = load_quantized_staging(tmp_path, method, config)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        before, after, reference = quantized(x), reloaded(x), model(x)
    assert torch.equal(before, after)
    agreement = (before.argmax(1) == reference.argmax(1)).float().mean()
    assert agreement > 0.9  # INT8 stays close to FP32


def test_tolerance_failure_exits_non_zero_and_overwrites_nothing(study_home, tmp_path):
    out = tmp_path / "kept"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier, accepted model")
    args = ["best", "--study", "q", "--method", "dynamic", "--tolerance", "-100", "--out"]
    result = quantize_cli(study_home, *args, str(out))
    assert result.exit_code == 2
    assert "mIoU drops" in result.output and "Nothing was written" in result.output
    assert [p.name for p in out.iterdir()] == ["previous.txt"]


def test_missing_study_trial_and_artifact_are_named(study_home):
    missing = quantize_cli(study_home, "best", "--study", "nope")
    assert missing.exit_code == 2 and "no study named 'nope'" in missing.output
    no_trial = quantize_cli(study_home, "trial", "7", "--study", "q")
    assert no_trial.exit_code == 2 and "study 'q' has no trial 7" in no_trial.output
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        study = load_existing_study("q", open_storage(None))
        trial = study.best_trial
        artifact = (
            Path(study.user_attrs["artifact_store"]) / trial.user_attrs["checkpoint_artifact_id"]
        )
        hidden = artifact.with_name("hidden")
        artifact.rename(hidden)
        try:
            with pytest.raises(CheckpointError, match="checkpoint artifact .* is missing"):
                quantize_trial("q", trial.number, FAST)
        finally:
            hidden.rename(artifact)


def test_quantize_a_checkpoint_file_directly(study_home, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        study = load_existing_study("q", open_storage(None))
        checkpoint = fetch_checkpoint(study, study.best_trial, tmp_path / "best.pt")
    (data,) = (p for p in (study_home / "data").iterdir() if p.is_dir())
    out = tmp_path / "woq"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--method", "weight_only"]
    result = quantize_cli(study_home, *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "comparison.json").read_text())
    assert report["chosen"] == "int8 weight_only"
    assert report["candidates"][0]["size_bytes"] < report["fp32"]["size_bytes"]
