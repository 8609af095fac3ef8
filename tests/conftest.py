"""Shared fixtures: a tiny synthetic Cityscapes set, a tiny config and an isolated TUNER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tuner.core.config import TrainConfig
from tuner.core.data import synth

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


def _required(what: str) -> None:
    """Skip when a service is absent, unless CI says it must be there (.ci/run sets this)."""
    message = f"{what} is not available here (.ci/run installs it)"
    if os.environ.get("TUNER_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_url():
    """TUNER_TEST_POSTGRES_URL, else a throwaway server started from Debian's binaries."""
    from bench.services import PostgresServer, find_pg_bin

    url = os.environ.get("TUNER_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    bin_dir = find_pg_bin()
    if bin_dir is None:
        _required("PostgreSQL (initdb)")
    server = PostgresServer(bin_dir)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def chromium_path() -> str:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    _required("Chromium")
