"""Every benchmark runs on tiny settings and prints well-formed JSON. No time is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXPECTED_KEYS = {
    "train_step": {
        "peak_matmul_gflops",
        "results",
        "dominant_cost",
        "loss_cost",
        "compile",
        "adapters",
    },
    "overhead": {"wall_seconds", "sum_fit_seconds", "overhead_percent", "breakdown_seconds"},
    "pruning": {"same_16_configurations", "results"},
    "quantize": {"embedded", "isa"},
    "data": {"loader_images_per_second", "training_images_per_second"},
    "cache": {"cached_speedup", "trials", "max_miou_difference"},
    "attention": {"results", "speedup"},
    "pretrained": {"start", "freeze"},
    "views": {"results"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_benchmark_prints_json(name, tmp_path):
    out = tmp_path / f"{name}.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = json.loads(completed.stdout[completed.stdout.index("{") :])
    assert printed == json.loads(out.read_text())
    assert printed["benchmark"] == name and printed["quick"] is True
    assert EXPECTED_KEYS[name] <= printed.keys()
    assert printed["machine"]["cpu"]["isa"]
