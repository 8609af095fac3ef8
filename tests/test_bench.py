"""Every benchmark runs on tiny settings and prints well-formed JSON. No time is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
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
    "checkpoints": {"artifact_bytes_before", "artifact_bytes_after", "after_over_before"},
    "plan": {"studies"},
    "adapters": {"results", "methods"},
    "search": {"table", "full", "grid", "stop", "chosen", "ranking"},
    "workers": {"modes", "targets", "pace"},
}
# Benchmarks that start a service of their own, and what they need for it.
NEEDS = {"workers": "PostgreSQL (initdb)"}
# What each quick run must also show, beyond its keys.
CHECKS = {
    "adapters": lambda r: (
        {"convlora r4 qv 8 experts", "adaptformer d64", "lora r4 qv"} <= set(r["methods"])
        and all(
            row["trainable_params"] < row["total_params"]
            for row in r["results"]
            if row["method"] != "full fine-tune"
        )
    ),
    "checkpoints": lambda r: r["artifact_bytes_after"] < r["artifact_bytes_before"],
    "search": lambda r: (
        r["table"]["configurations"] >= 150
        and all(set(s["regret_mean"]) == {"25%", "50%", "100%"} for s in r["full"].values())
        and r["full"]["tpe, warm-started"]["warm_up_cost"] > 0
        and r["chosen"]["full"] in r["full"]
        and r["chosen"]["grid_pruner"] in r["grid"]
    ),
    # The CI version of the load test: 8 workers, both storage modes, a quarter of them killed
    # and restarted, the database restarted mid-run. Nothing lost, nothing run twice.
    "workers": lambda r: (
        r["targets"]
        == {
            "lost": 0,
            "duplicated": 0,
            "workers_failed": 0,
            "connections_within_workers_plus_5": True,
            "torch_in_workers": False,
        }
        and {"kill", "restart"} == set(r["modes"]["direct"])
        and {"kill"} == set(r["modes"]["proxy"])
        and all(
            p["workers"] == 8 and p["trials_per_second"] > 0
            for m in r["modes"].values()
            for p in m.values()
        )
        and any("SIGKILLed 2 workers" in e for e in r["modes"]["proxy"]["kill"]["events"])
        and any("restarted the database" in e for e in r["modes"]["direct"]["restart"]["events"])
    ),
    "plan": lambda r: all(
        s["cache_bytes"]["projected"] == s["cache_bytes"]["measured"] and s["trials"]
        for s in r["studies"]
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_KEYS))
def test_benchmark_prints_json(name, tmp_path):
    if name in NEEDS:
        from conftest import _required

        from bench.services import find_pg_bin

        if find_pg_bin() is None:
            _required(NEEDS[name])
    out = tmp_path / f"{name}.json"
    completed = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = json.loads(completed.stdout)  # the whole stdout is one JSON document
    assert printed == json.loads(out.read_text())
    assert printed["benchmark"] == name and printed["quick"] is True
    assert EXPECTED_KEYS[name] <= printed.keys()
    assert printed["machine"]["cpu"]["isa"]
    assert CHECKS.get(name, lambda r: True)(printed)


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu_in_quick_mode_only():
    def bench_gpu(*flags: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "bench", "gpu", "--device", "cpu", *flags]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)

    refused = bench_gpu()
    assert refused.returncode != 0 and "CUDA machine" in refused.stderr
    completed = bench_gpu("--quick")
    assert completed.returncode == 0, completed.stderr[-3000:]
    printed = json.loads(completed.stdout)
    step = printed["train_step"]
    assert step["compile_off"]["images_per_second"] > 0 and "skipped" in step["compile_on"]
    assert step["meets_targets"] is None  # the targets are an H200's
    studies = [printed[k] for k in ("cached_frozen_trials", "lora_trial", "smoke_study")]
    assert all(s["exit_status"] == 0 and s["wall_seconds"] > 0 for s in studies)
    first, second = printed["cached_frozen_trials"]["trials"]
    assert first["fit_seconds"] > 0 and second["fit_seconds"] > 0
    assert first["cache"]["train_hits"] == 0 and second["cache"]["train_hits"] > 0
    (lora,) = printed["lora_trial"]["trials"]
    assert lora["fit_seconds"] > 0 and lora["trainable_params"] > 0 and lora["latency_ms"] > 0
    assert printed["smoke_study"]["complete_trials"] >= 1


def test_what_a_benchmark_prints_goes_to_stderr_and_stdout_is_one_json(capfd, monkeypatch):
    """Prints, a C-level write to file descriptor 1 and a child process's output all land on
    stderr; stdout parses whole as the result."""
    monkeypatch.syspath_prepend(str(ROOT))
    import bench.__main__ as cli

    def run(quick: bool) -> dict:
        print("progress: epoch 1")
        os.write(1, b"a C library writes here\n")
        subprocess.run([sys.executable, "-c", "print('a child process too')"], check=True)
        return {"value": 1}

    noisy = types.ModuleType("bench.noisy")
    noisy.run = run
    monkeypatch.setitem(sys.modules, "bench.noisy", noisy)
    monkeypatch.setattr(cli, "NAMES", (*cli.NAMES, "noisy"))
    assert cli.main(["noisy", "--quick"]) == 0
    out, err = capfd.readouterr()
    assert json.loads(out) == {"benchmark": "noisy", "quick": True, "value": 1}
    for line in ("progress: epoch 1", "a C library writes here", "a child process too"):
        assert line in err
