"""SAM's own attention against the SDPA one (`tuner.core.model.attention.FusedAttention`): time of
a training step of the encoder and the peak memory it adds, on the CPU and, where there is
one, on CUDA (bf16 autocast). Each CPU measurement runs in its own process, so that its peak
resident memory (`ru_maxrss`) belongs to it alone.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import torch

from bench.common import machine, median_seconds
from tuner.core.config import TrainConfig
from tuner.core.environment import autocast
from tuner.core.model import build_segmenter
from tuner.core.model.attention import use_fused_attention


def cases(quick: bool, device: str) -> list[dict]:
    if quick:
        return [{"model": "sam_tiny", "size": 128, "batch": 1, "repeats": 1}]
    if device == "cuda":
        return [{"model": "vit_b", "size": 1024, "batch": 8, "repeats": 5}]
    return [
        {"model": "sam_tiny", "size": 512, "batch": 2, "repeats": 3},
        {"model": "vit_b", "size": 512, "batch": 1, "repeats": 2},
    ]


def measure(case: dict, fused: bool, device: str) -> dict:
    """Seconds per forward + backward of the encoder and head, and the peak memory added."""
    dev = torch.device(device)
    config = TrainConfig(model=case["model"], head="linear", image_size=(case["size"],) * 2)
    torch.manual_seed(0)
    model = build_segmenter(config).to(dev).train()
    use_fused_attention(model.encoder, fused)
    images = torch.randn(case["batch"], 3, case["size"], case["size"], device=dev)

    def step() -> None:
        with autocast(dev):
            out = model(images)
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    seconds = median_seconds(step, case["repeats"], warmup=1)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        **case,
        "attention": "sdpa" if fused else "manual",
        "device": device,
        "seconds_per_step": round(seconds, 4),
        "images_per_second": round(case["batch"] / seconds, 2),
        "peak_memory_added_mib": round(peak / 2**20, 1),
    }


def run(quick: bool = False, device: str = "cpu") -> dict:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    rows = []
    for dev in devices:
        for case in cases(quick, dev):
            for fused in (False, True):
                if dev == "cpu":  # own process: ru_maxrss only ever grows
                    code = (
                        "import json, sys; from bench.attention import measure; "
                        "print(json.dumps(measure(json.loads(sys.argv[1]), sys.argv[2] == '1', "
                        "'cpu')))"
                    )
                    out = subprocess.run(
                        [sys.executable, "-c", code, json.dumps(case), str(int(fused))],
                        capture_output=True,
                        text=True,
                        check=True,
                    ).stdout
                    rows.append(json.loads(out.strip().splitlines()[-1]))
                else:
                    rows.append(measure(case, fused, dev))
    return {"machine": machine(), "results": rows, "speedup": _speedups(rows)}


def _speedups(rows: list[dict]) -> list[dict]:
    out = []
    for manual in (r for r in rows if r["attention"] == "manual"):
        fused = next(
            r
            for r in rows
            if r["attention"] == "sdpa"
            and (r["model"], r["size"], r["device"])
            == (manual["model"], manual["size"], manual["device"])
        )
        out.append(
            {
                "model": manual["model"],
                "size": manual["size"],
                "device": manual["device"],
                "sdpa_speedup": round(manual["seconds_per_step"] / fused["seconds_per_step"], 2),
                "sdpa_memory_ratio": round(
                    fused["peak_memory_added_mib"] / max(manual["peak_memory_added_mib"], 1e-6), 2
                ),
            }
        )
    return out
