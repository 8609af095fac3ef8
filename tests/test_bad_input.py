"""Bad input, as a new or a hostile user gives it: every case is one row (how to make it, the
command, the exit code, the words the one-line error must hold). No case may train, write a
checkpoint, create a study database or leave an empty output folder behind."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from tuner.cli import main

TINY = ["--epochs", "1", "--image-size", "64", "128", "--batch-size", "2", "--threads", "2"]


@dataclass
class Case:
    name: str
    make: Callable[[Path, Path], list[str]]  # (tmp, tiny data copy) -> command line
    words: tuple[str, ...]
    code: int = 2
    absent: tuple[str, ...] = ("Traceback", "weights_only")


def labels(root: Path, split: str = "train") -> list[Path]:
    return sorted((root / "gtFine" / split).rglob("*_labelIds.png"))


def rewrite_labels(root: Path, split: str, change: Callable[[np.ndarray], np.ndarray], first=False):
    for path in labels(root, split)[:1] if first else labels(root, split):
        Image.fromarray(change(np.array(Image.open(path))).astype(np.uint8)).save(path)


def train_on(root: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(root), "--out", str(root.parent / "run"), *TINY, *extra]


def resized_label(tmp: Path, root: Path) -> list[str]:
    path = labels(root)[0]
    Image.open(path).resize((100, 50), Image.Resampling.NEAREST).save(path)
    return train_on(root)


def ids_200(tmp: Path, root: Path) -> list[str]:
    rewrite_labels(root, "train", lambda a: np.full_like(a, 200))
    return train_on(root)


def train_ids_as_label_ids(tmp: Path, root: Path) -> list[str]:
    from tuner.core.data.labels import encode_target

    rewrite_labels(root, "train", encode_target)  # 0-18, and 255 where a label was void
    return train_on(root)


def one_bad_pixel(tmp: Path, root: Path) -> list[str]:
    def poke(a):
        a = a.copy()
        a[0, 0] = 99
        return a

    rewrite_labels(root, "val", poke, first=True)
    return train_on(root)


def nothing_evaluated(tmp: Path, root: Path) -> list[str]:
    rewrite_labels(root, "val", np.zeros_like)  # id 0, "unlabeled": ignored everywhere
    return train_on(root)


def random_bytes(tmp: Path, root: Path) -> list[str]:
    bad = tmp / "random.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    return train_on(root, "--checkpoint", str(bad))


def pickle_with_code(tmp: Path, root: Path) -> list[str]:
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp / "evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": Payload()}, evil)
    return ["predict", "--checkpoint", str(evil), str(next(root.rglob("*_leftImg8bit.png"))),
            "--out", str(tmp / "pred")]  # fmt: skip


def quantized_folder(meta: str):
    def make(tmp: Path, root: Path) -> list[str]:
        folder = tmp / "int8"
        folder.mkdir()
        (folder / "quantization.json").write_text(meta)
        image = str(next(root.rglob("*_leftImg8bit.png")))
        return ["predict", "--model", str(folder), image, "--out", str(tmp / "pred")]

    return make


def out_is_a_file(tmp: Path, root: Path) -> list[str]:
    (tmp / "taken").write_text("not a folder")
    return ["train", "--data", str(root), "--out", str(tmp / "taken"), *TINY]


def space(tmp: Path, **changes) -> str:
    text = {
        "study": "bad",
        "sampler": {"name": "grid"},
        "fixed": {"model": "sam_tiny", "head": "linear", "epochs": 1, "image_size": [64, 128]},
        "params": {"loss": {"type": "categorical", "choices": ["ce"]}},
    }
    for key, value in changes.items():
        text[key] = {**text[key], **value} if isinstance(value, dict) else value
    path = tmp / "bad.yaml"
    path.write_text(yaml.safe_dump(text))
    return str(path)


def run_with(**changes):
    def make(tmp: Path, root: Path) -> list[str]:
        return ["run", "--study", "bad", "--space", space(tmp, **changes), "--data", str(root)]

    return make


def port_in_use(tmp: Path, root: Path) -> list[str]:
    (tmp / "home").mkdir(exist_ok=True)
    return ["dashboard", "--port", str(BUSY_PORT)]


BUSY_PORT = 0  # set by the fixture that binds it

CASES = [
    # Wrong results, silently (before): now refused before training.
    Case("label of another size", resized_label, ("label size 50x100 differs", "_leftImg8bit")),
    Case("label ids all 200", ids_200, ("values 200 are not Cityscapes label ids",)),
    Case("trainIds as labelIds", train_ids_as_label_ids, ("labelTrainIds",)),
    Case("one invalid pixel", one_bad_pixel, ("values 99 are not Cityscapes label ids",)),
    Case("no evaluated pixel", nothing_evaluated, ("no pixel of the val split",)),
    # Where things are written.
    Case("study name with a path", lambda t, r: ["run", "--study", "../../x"], ("study name",)),
    Case("report of a path", lambda t, r: ["report", "--study", "../x"], ("study name",)),
    # Tracebacks or misleading text (before): now one line.
    Case("random bytes as checkpoint", random_bytes, ("refused for safety",)),
    Case("pickle with code", pickle_with_code, ("evil.pth", "refused for safety")),
    Case("empty quantization.json", quantized_folder(""), ("quantization.json: not valid JSON",)),
    Case(
        "quantization.json without method",
        quantized_folder('{"config": {}}'),
        ("field 'method'",),
    ),
    Case("port out of range", lambda t, r: ["dashboard", "--port", "99999"], ("99999",)),
    Case("port in use", port_in_use, ("in use",)),
    Case("--out is a file", out_is_a_file, ("exists and is not a folder",)),
    # Accepted though nonsense (before).
    Case("negative trials", lambda t, r: ["run", "--study", "smoke", "--trials", "-2"], ("-2",)),
    Case("negative timeout", lambda t, r: ["run", "--study", "smoke", "--timeout", "-5"], ("-5",)),
    Case("zero jobs", lambda t, r: ["run", "--study", "smoke", "--jobs", "0"], ("--jobs",)),
    Case("zero threads", lambda t, r: ["train", "--threads", "0"], ("--threads",)),
    Case(
        "empty synthetic set",
        lambda t, r: ["data", "synth", "--out", str(t / "s"), "--train", "0", "--height", "10"],
        ("--train",),
    ),
    Case("zero calibration images", lambda t, r: ["quantize", "--calib", "0"], ("--calib",)),
    # A study that cannot succeed.
    Case(
        "batch larger than the training set",
        run_with(fixed={"batch_size": 64}),
        ("batch_size=64 is larger than the training set",),
    ),
    Case(
        "crop larger than any image",
        run_with(fixed={"image_size": [512, 1024], "scale_range": [1.0, 1.0]}),
        ("image_size=[512, 1024] is larger than the smallest training image",),
    ),
    Case("negative epochs in fixed", run_with(fixed={"epochs": -3}), ("fixed: epochs=-3",)),
    Case("lr nan", run_with(fixed={"lr": float("nan")}), ("lr=nan", "not finite")),
]


@pytest.fixture
def busy_port():
    global BUSY_PORT
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        BUSY_PORT = sock.getsockname()[1]
        yield BUSY_PORT


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(case, tiny_data, tmp_path, monkeypatch, busy_port):
    home = tmp_path / "home"
    monkeypatch.setenv("TUNER_HOME", str(home))
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    args = case.make(tmp_path, root)
    result = CliRunner().invoke(main, args)
    output = result.output
    assert result.exit_code == case.code, output
    for words in case.words:
        assert words in output, output
    for words in case.absent:
        assert words not in output, output
    errors = [line for line in output.splitlines() if line.startswith(("error:", "Error:"))]
    assert len(errors) == 1, output  # one line says what is wrong
    # Nothing was trained, written or created.
    assert "epoch 1/" not in output
    assert not list(tmp_path.rglob("best.pt"))
    assert not (tmp_path / "pred").exists() and not (tmp_path / "run").exists()
    assert not (home / "tuner.db").exists()  # no study was created


def test_read_only_commands_create_no_database(tuner_home):
    for args in (["studies"], ["best", "--study", "x"], ["report", "--study", "x"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code in (0, 2), result.output
    assert not (tuner_home / "tuner.db").exists()
    assert "no studies yet" in CliRunner().invoke(main, ["studies"]).output


def test_predict_leaves_no_empty_folder_when_the_first_image_fails(tmp_path, tiny_data):
    from tuner.core.config import TrainConfig
    from tuner.core.data.cityscapes import CityscapesDataset
    from tuner.core.train import fit

    config = TrainConfig(head="linear", epochs=1, image_size=(64, 128), batch_size=2)
    fit(config, CityscapesDataset(tiny_data, "train"), CityscapesDataset(tiny_data, "val"),
        out_dir=tmp_path / "run", progress=False, log=lambda m: None)  # fmt: skip
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(tmp_path / "run" / "best.pt"), str(broken)]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "broken.png: unreadable image" in result.output
    assert not out.exists()


def test_a_run_whose_trials_all_fail_exits_non_zero_and_says_why(
    tuner_home, tmp_path, tiny_data, monkeypatch
):
    from tuner.core import losses

    def broken(logits, target):
        raise RuntimeError("this loss always fails")

    monkeypatch.setitem(losses.LOSSES, "ce", broken)
    args = ["run", "--study", "bad", "--space", space(tmp_path), "--data", str(tiny_data)]
    result = CliRunner().invoke(main, [*args, "--no-report"])
    assert result.exit_code == 2, result.output
    assert "none of the 1 trial(s) this run started completed" in result.output
    assert "this loss always fails" in result.output


def test_data_check_lists_every_problem_then_a_summary(tiny_data, tmp_path):
    clean = CliRunner().invoke(main, ["data", "check", str(tiny_data)])
    assert clean.exit_code == 0, clean.output
    assert "train: 8 images" in clean.output and "0 problem(s)" in clean.output
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    resized_label(tmp_path, root)
    one_bad_pixel(tmp_path, root)
    result = CliRunner().invoke(main, ["data", "check", str(root)])
    assert result.exit_code == 2
    lines = result.output.splitlines()
    assert sum("label size 50x100 differs" in line for line in lines) == 1
    assert sum("values 99 are not Cityscapes label ids" in line for line in lines) == 1
    assert any(line.startswith("train: 8 images") and "1 problem(s)" in line for line in lines)
    shutil.rmtree(root / "gtFine" / "val")
    missing = CliRunner().invoke(main, ["data", "check", str(root)])
    assert missing.exit_code == 2 and "gtFine/val: folder not found" in missing.output
