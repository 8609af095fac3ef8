"""Shared fixtures: a tiny synthetic Cityscapes set, a tiny config and an isolated TUNER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tuner.config import TrainConfig
from tuner.data import synth

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY_SPEC = synth.SynthSpec(train=8, val=4, height=128, width=256, seed=0)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train / 4 val synthetic images at 128x256, shared by the whole session."""
    return synth.generate(tmp_path_factory.mktemp("data") / "tiny", TINY_SPEC)


@pytest.fixture
def tiny_config() -> TrainConfig:
    return TrainConfig(
        model="sam_tiny",
        head="linear",
        loss="ce",
        freeze_depth=0,
        batch_size=2,
        epochs=1,
        image_size=(64, 128),
        scale_range=(0.75, 1.25),
        lr=1e-3,
        threads=2,
    )


@pytest.fixture
def tuner_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TUNER_HOME", str(home))
    return home
