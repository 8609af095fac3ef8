"""The core commands as a user types them: train, predict, evaluate, and their errors."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from official_eval import official_scores
from PIL import Image

from tuner.cli import main
from tuner.cli._options import first_sentence
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
        assert (tmp_path / f"{image.stem}_key.png").is_file()


def test_predict_writes_a_colour_key_and_tells_the_vehicles_apart(tmp_path):
    """A fake predictor paints road and four stripes: car, truck, bus, train. `_color.png` keeps
    the official palette, the overlay's vehicle colours are pairwise distinguishable over a
    grey photo (CIEDE2000 >= 15; the official blues are 8-9 apart there), and `_key.png` names
    every class present and shows both its swatches."""
    from tuner.core.data.labels import CLASS_NAMES
    from tuner.core.visualize import KEY_CLASSES, OVERLAY_PALETTE
    from tuner.deploy.predict import predict_files

    vehicles = [CLASS_NAMES.index(n) for n in ("car", "truck", "bus", "train")]
    ids = np.zeros((40, 80), np.uint8)  # road
    for i, k in enumerate(vehicles):
        ids[10:30, 10 + 15 * i : 20 + 15 * i] = k
    photo = tmp_path / "grey.png"
    Image.fromarray(np.full((40, 80, 3), 128, np.uint8)).save(photo)
    written = list(predict_files(lambda image: ids, [photo], tmp_path / "out"))
    assert [p.name for p in written] == ["grey_color.png", "grey_overlay.png", "grey_key.png"]

    colour = np.array(Image.open(written[0]))
    assert (colour == PALETTE[ids]).all()  # the official palette, untouched
    overlay = np.array(Image.open(written[1]))
    stripes = [overlay[20, 15 + 15 * i] for i in range(4)]
    distances = [delta_e2000(a, b) for i, a in enumerate(stripes) for b in stripes[i + 1 :]]
    assert min(distances) >= 15, distances

    key = Image.open(written[2])
    present = ["road", "car", "truck", "bus", "train"]  # by share of the pixels
    assert key.text[KEY_CLASSES] == ", ".join(present)
    pixels = {tuple(p) for p in np.array(key.convert("RGB")).reshape(-1, 3)}
    for name in present:
        k = CLASS_NAMES.index(name)
        assert tuple(PALETTE[k]) in pixels and tuple(OVERLAY_PALETTE[k]) in pixels, name


def lab(rgb) -> np.ndarray:
    """sRGB (0-255) -> CIELAB (D65)."""
    c = np.asarray(rgb, float) / 255
    c = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    xyz = c @ np.array(m).T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e2000(rgb1, rgb2=None, lab1=None, lab2=None) -> float:
    """CIEDE2000 colour difference (Sharma, Wu and Dalal 2005), of two sRGB colours or two
    Lab triples."""
    (l1, a1, b1), (l2, a2, b2) = (lab(rgb1), lab(rgb2)) if lab1 is None else (lab1, lab2)
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25**7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    d_h = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    l_bar, c_bar = (l1 + l2) / 2, (c1 + c2) / 2
    if c1 * c2 == 0:
        h_bar = h1 + h2
    elif abs(h1 - h2) <= 180:
        h_bar = (h1 + h2) / 2
    else:
        h_bar = (h1 + h2 + 360) / 2 if h1 + h2 < 360 else (h1 + h2 - 360) / 2
    t = (
        1
        - 0.17 * np.cos(np.radians(h_bar - 30))
        + 0.24 * np.cos(np.radians(2 * h_bar))
        + 0.32 * np.cos(np.radians(3 * h_bar + 6))
        - 0.20 * np.cos(np.radians(4 * h_bar - 63))
    )
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_bar, 1 + 0.015 * c_bar * t
    r_t = -2 * np.sqrt(c_bar**7 / (c_bar**7 + 25**7))
    r_t *= np.sin(np.radians(60 * np.exp(-(((h_bar - 275) / 25) ** 2))))
    dl, dc, dh = (l2 - l1) / s_l, (c2 - c1) / s_c, d_h / s_h
    return float(np.sqrt(dl**2 + dc**2 + dh**2 + r_t * dc * dh))


def test_delta_e2000_matches_the_published_test_data():
    pairs = [  # Sharma, Wu and Dalal (2005), table 1: pairs 1, 7, 17 and 25
        ((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
        ((50, 0, 0), (50, -1, 2), 2.3669),
        ((50, 2.5, 0), (73, 25, -18), 27.1492),
        ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    ]
    for one, two, expected in pairs:
        assert delta_e2000(None, lab1=one, lab2=two) == pytest.approx(expected, abs=1e-4)


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


# Help and listings answer at once: no torch until a command needs it --------------------------
def command_paths(command=main, path=()):
    """Every command and group under `tuner`, as argument lists."""
    yield list(path)
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from command_paths(sub, (*path, name))


# Runs `tuner ARGS` in a fresh interpreter and says which torch modules it imported.
NO_TORCH = """
import sys
from tuner.cli import main
code = main(sys.argv[1:], prog_name="tuner", standalone_mode=False)
print("exit code", code or 0)
print("torch modules", sorted(m for m in sys.modules if m.split(".")[0] == "torch"))
"""


def run_without_torch(args: list[str], home: Path) -> str:
    env = {**os.environ, "TUNER_HOME": str(home), "COLUMNS": "80"}
    done = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "exit code 0" in done.stdout, done.stdout
    assert "torch modules []" in done.stdout, done.stdout
    return done.stdout


@pytest.mark.parametrize("path", list(command_paths()), ids=lambda p: " ".join(p) or "tuner")
def test_help_of_every_command_imports_no_torch(path, tmp_path):
    assert "Usage: tuner" in run_without_torch([*path, "--help"], tmp_path)


def small_study(storage: str, artifacts: Path, images: int = 12) -> None:
    """A maximized study `losses` of three configurations with per-image counts (two seeds for
    two of them, through the confirmation study), one pruned and one failed trial."""
    import optuna
    from optuna.trial import TrialState

    from tuner.core.stats import PerImage, miou
    from tuner.search import attrs
    from tuner.search.confirm import open_confirmation_study
    from tuner.search.study import open_artifact_store, upload

    rng = np.random.default_rng(0)
    names = [f"img_{i:03d}" for i in range(images)]
    study = optuna.create_study(study_name="losses", storage=storage, direction="maximize")
    study.set_user_attr(attrs.ARTIFACT_STORE, str(artifacts))
    store = open_artifact_store(artifacts)
    confirm = open_confirmation_study(study, storage)
    loss = optuna.distributions.CategoricalDistribution(["ce", "dice", "focal", "lovasz"])
    for name, right, seeds in (("ce", 30, 2), ("dice", 20, 2), ("focal", 10, 1)):
        for seed in range(seeds):
            target = study if seed == 0 else confirm
            target.enqueue_trial({"loss": name})
            trial = target.ask({"loss": loss})
            confusion = rng.integers(0, 4, (images, 19, 19))
            confusion[:, np.arange(19), np.arange(19)] += right + rng.integers(0, 5, (images, 19))
            counts = PerImage(confusion, rng.integers(1, 9, (images, 4, 19)), tuple(names))
            path = artifacts.parent / f"{name}-{seed}.npz"
            counts.save(path)
            trial.set_user_attr(attrs.PER_IMAGE, upload(trial, store, path))
            target.tell(trial, float(miou(confusion.sum(0))))  # the score of these counts
    study.enqueue_trial({"loss": "lovasz"})
    study.tell(study.ask({"loss": loss}), state=TrialState.PRUNED)
    study.enqueue_trial({"loss": "lovasz"})
    study.tell(study.ask({"loss": loss}), state=TrialState.FAIL)


@pytest.fixture(scope="module")
def small_storage(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("storage")
    storage = f"sqlite:///{folder / 'tuner.db'}"
    small_study(storage, folder / "artifacts")
    return storage


@pytest.mark.parametrize(
    "args, shown",
    [
        (["studies"], "losses"),
        (["best", "--study", "losses"], "trial 0 of study 'losses'"),
        (["best", "--study", "losses", "--json"], '"study": "losses"'),
    ],
)
def test_studies_and_best_read_the_storage_without_torch(args, shown, small_storage, tmp_path):
    assert shown in run_without_torch([*args, "--storage", small_storage], tmp_path)


def test_studies_on_an_empty_storage_and_cache_import_no_torch(tmp_path):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert "no studies yet" in run_without_torch(["studies", "--storage", empty], tmp_path)
    assert "feature cache" in run_without_torch(["cache"], tmp_path)


def test_the_command_lists_show_whole_descriptions():
    for group in (main, main.commands["data"]):
        text = CliRunner().invoke(group, ["--help"], terminal_width=80).output
        listing = text.split("Commands:")[1]
        assert not [line for line in listing.splitlines() if line.rstrip().endswith("...")]
        for name, command in group.commands.items():
            whole = name + (command.short_help or first_sentence(command.help))
            # compared without white space: the wrapping may break a line at a hyphen
            assert "".join(whole.split()) in "".join(listing.split())


def test_quantize_help_says_what_the_tolerance_and_auto_mean():
    text = " ".join(CliRunner().invoke(main, ["quantize", "--help"]).output.split())
    assert "in points of mIoU (1.0 = 0.01 mIoU" in text
    assert "auto: first the methods expected to win on this CPU" in text


def test_method_choice_takes_auto_all_or_registered_names():
    from tuner.cli._deploy import METHOD_NAMES, MethodChoice
    from tuner.deploy.quantize import METHODS

    assert tuple(METHODS.names()) == METHOD_NAMES  # what --help lists is what is registered
    choice = MethodChoice("tuner.deploy.quantize:METHODS", ())  # declares nothing: reads METHODS
    assert choice.convert("static, dynamic", None, None) == "static,dynamic"
    assert choice.convert("all", None, None) == "all"
    with pytest.raises(click.BadParameter, match="'int4' is not one of 'auto', 'all', 'static'"):
        choice.convert("static,int4", None, None)


def test_registries_declare_what_their_providers_register(tmp_path, monkeypatch):
    from tuner.core.registry import FIELD_REGISTRIES, Registry

    for registry in FIELD_REGISTRIES.values():
        assert registry.known_names() == registry.names(), registry.kind
    (tmp_path / "two_losses.py").write_text(
        "from conftest_registry import REG\nREG['a'] = 1\nREG['b'] = 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("loss", "two_losses", ("a",))
    module = type(sys)("conftest_registry")
    module.REG = registry
    monkeypatch.setitem(sys.modules, "conftest_registry", module)
    assert registry.known_names() == ["a"]  # without importing the provider
    with pytest.raises(RuntimeError, match=r"missing \[\], undeclared \['b'\]"):
        registry.names()
