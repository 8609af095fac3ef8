"""The pretrained stand-in for SAM: the shipped file, its provenance, how it loads, and the
script that makes it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tuner.core.config import TrainConfig
from tuner.core.data import synth
from tuner.core.model import build_segmenter
from tuner.core.model.backbone import (
    STANDIN_WEIGHTS,
    build_sam,
    detect_variant,
    read_state_dict,
    scratch_variant,
)
from tuner.core.pretrain import PretrainSettings


def provenance() -> dict:
    return json.loads(STANDIN_WEIGHTS.with_suffix(".json").read_text())


def test_shipped_file_matches_its_recorded_sha256_and_size_bar():
    record = provenance()
    assert hashlib.sha256(STANDIN_WEIGHTS.read_bytes()).hexdigest() == record["sha256"]
    assert STANDIN_WEIGHTS.stat().st_size == record["bytes"] <= 8 * 2**20
    assert record["script"] == "tuner data pretrain"
    assert record["settings"]["seed"] == PretrainSettings().seed


def test_it_is_an_official_format_sam_state_dict():
    state = read_state_dict(STANDIN_WEIGHTS)  # the path sam_vit_b_01ec64.pth takes
    assert detect_variant(state) == "sam_tiny"
    assert set(state) == set(build_sam("sam_tiny_scratch").state_dict())
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}


def test_it_was_trained_on_another_distribution_than_the_embedded_default():
    pretrain = PretrainSettings().data
    default = synth.SynthSpec()
    assert pretrain.seed != default.seed and pretrain.style != default.style
    assert provenance()["settings"]["data"] == json.loads(json.dumps(pretrain.__dict__))
    # Same split and index, other scene: no image of the default set is in the pretraining set.
    shifted = synth.make_scene(pretrain.seed, "train", 0, 128, 256, pretrain.style)["image"]
    embedded = synth.make_scene(default.seed, "train", 0, 128, 256)["image"]
    assert not np.array_equal(shifted, embedded)


def test_sam_tiny_starts_from_the_stand_in_and_scratch_does_not():
    state = read_state_dict(STANDIN_WEIGHTS)
    weight = state["image_encoder.blocks.0.attn.qkv.weight"].float()
    pretrained = build_segmenter(TrainConfig(model="sam_tiny"))
    assert torch.equal(pretrained.encoder.blocks[0].attn.qkv.weight.data, weight)
    scratch = build_segmenter(TrainConfig(model=scratch_variant("sam_tiny")))
    assert not torch.equal(scratch.encoder.blocks[0].attn.qkv.weight.data, weight)
    assert scratch_variant("vit_b") == "vit_b"  # no shipped weights: already random
    # Real use's default: the encoder learns ten times slower than the head.
    assert TrainConfig().encoder_lr_mult == 0.1


@pytest.mark.slow
def test_quick_pretraining_produces_a_loadable_checkpoint_of_the_same_shape(tmp_path):
    out = tmp_path / "standin.pth"
    done = subprocess.run(
        [sys.executable, "-m", "tuner", "data", "pretrain", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    made, shipped = read_state_dict(out), read_state_dict(STANDIN_WEIGHTS)
    assert {k: v.shape for k, v in made.items()} == {k: v.shape for k, v in shipped.items()}
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    config = TrainConfig(sam_checkpoint=str(out), head="mask_decoder", image_size=(64, 128))
    model = build_segmenter(config).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 128))).all()


def test_from_scratch_flag_trains_sam_tiny_scratch(tiny_data, tmp_path):
    from tuner.cli import main

    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--from-scratch"]
    args += ["--epochs", "1", "--image-size", "64", "128", "--batch-size", "2", "--head", "linear"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "sam_tiny_scratch/linear" in result.output
    both = CliRunner().invoke(main, [*args, "--checkpoint", str(STANDIN_WEIGHTS)])
    assert both.exit_code == 2 and "exclude each other" in both.output
