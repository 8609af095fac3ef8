"""Measuring FP32 and INT8 models the same way, and choosing among the candidates."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch

from tuner.core.inference import evaluate, predict_logits


@dataclass
class Measurement:
    """One measured model: FP32 or one INT8 method."""

    name: str
    miou: float
    boundary_f1: float
    pixel_acc: float
    per_class_iou: list
    latency_ms: float
    size_bytes: int
    compiled: bool
    passed: bool = True
    note: str = ""
    kept_fp32: list[str] = field(default_factory=list)  # modules the fallback left in FP32

    FIELDS: ClassVar[tuple[str, ...]] = ()


Measurement.FIELDS = tuple(f.name for f in fields(Measurement))


# Measuring --------------------------------------------------------------------------------
def median_latency_ms(model, images: list[torch.Tensor], crop, repeats: int) -> float:
    """Median seconds per whole image (sliding windows included), after one warm-up pass."""
    times = []
    with torch.no_grad():
        for image in images:  # warm-up (and compilation, for compiled models)
            predict_logits(model, image.unsqueeze(0), crop)
        for _ in range(repeats):
            for image in images:
                start = time.perf_counter()
                predict_logits(model, image.unsqueeze(0), crop)
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(name, model, val_set, crop, latency_set, repeats, size_bytes, compiled, tolerance):
    """One row of the comparison: accuracy on `val_set`, latency on `latency_set`."""
    metrics = evaluate(model, val_set, crop, torch.device("cpu"), boundary_tolerance=tolerance)
    return Measurement(
        name=name,
        miou=metrics["miou"],
        boundary_f1=metrics["boundary_f1"],
        pixel_acc=metrics["pixel_acc"],
        per_class_iou=metrics["per_class_iou"],
        latency_ms=median_latency_ms(model, latency_set, crop, repeats),
        size_bytes=size_bytes,
        compiled=compiled,
    )


# Latencies closer than this are one speed: run-to-run noise on a shared 2-core machine is about
# ±10 % (bench/README.md), so a 3 % lead is not worth a file half again as large.
SPEED_TIE = 0.10


def choose(
    fp32: Measurement, candidates: list[Measurement], tolerance: float
) -> tuple[Measurement, str]:
    """Among the candidates within tolerance and no larger than the FP32 file: the fastest if
    any is faster than FP32 here (the smallest of those within SPEED_TIE of the fastest), else
    the smallest. When none is within tolerance, the most accurate, for the caller to refuse."""
    passing = [v for v in candidates if v.passed]
    if not passing:
        best = max(candidates, key=lambda v: v.miou)
        return best, f"no INT8 method stays within {tolerance:.2f} mIoU points"
    eligible = [v for v in passing if v.size_bytes <= fp32.size_bytes]
    if not eligible:
        best = min(passing, key=lambda v: v.size_bytes)
        return best, "every INT8 file is larger than the FP32 file; nothing worth shipping"
    faster = [v for v in eligible if v.latency_ms < fp32.latency_ms]
    if faster:
        fastest = min(faster, key=lambda v: v.latency_ms)
        tied = [v for v in faster if v.latency_ms <= fastest.latency_ms * (1 + SPEED_TIE)]
        best = min(tied, key=lambda v: (v.size_bytes, v.latency_ms))
        why = (
            f"{fp32.latency_ms / best.latency_ms:.2f}x the FP32 speed on this CPU, "
            f"{best.size_bytes / fp32.size_bytes:.0%} of its size"
        )
        if best is fastest:
            return best, f"fastest within tolerance: {why}"
        return best, (
            f"smallest of the fastest within tolerance: {why} (the fastest, {fastest.name}, "
            f"is under {SPEED_TIE:.0%} faster, within run-to-run noise, and "
            f"{fastest.size_bytes / fp32.size_bytes:.0%} of the FP32 size)"
        )
    best = min(eligible, key=lambda v: v.size_bytes)
    return best, (
        "no INT8 method is faster than FP32 on this CPU, so the choice is by size "
        f"({best.size_bytes / fp32.size_bytes:.0%} of FP32)"
    )
