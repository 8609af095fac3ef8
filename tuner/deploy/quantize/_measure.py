"""Measuring FP32 and INT8 models the same way, and choosing among the candidates."""

from __future__ import annotations

import gzip
import statistics
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from tuner.core.data.labels import CLASS_NAMES
from tuner.core.inference import predict_logits

# How sizes are counted, stored beside them: the same way for FP32 and every INT8 model, so that
# a ratio shows what quantization did and not what gzip did.
SIZE_BASIS = (
    "size_bytes: bytes of the tensors the model holds (weights, buffers, folded constants), "
    "uncompressed; archive_bytes: the saved model gzipped at level 6 (FP32: its state dict; "
    "INT8: the files `tuner quantize` writes). Both counted the same way for FP32 and INT8."
)


@dataclass
class Measurement:
    """One measured model: FP32 or one INT8 method."""

    name: str
    miou: float
    boundary_f1: float
    pixel_acc: float
    per_class_iou: dict[str, float | None]  # class name -> IoU (None: absent from the val set)
    latency_ms: float
    size_bytes: int  # SIZE_BASIS
    compiled: bool
    passed: bool = True
    note: str = ""
    kept_fp32: list[str] = field(default_factory=list)  # modules the fallback left in FP32
    archive_bytes: int | None = None  # SIZE_BASIS
    latency_basis: str = ""  # "measured: ..." or "derived: ..."

    FIELDS: ClassVar[tuple[str, ...]] = ()


Measurement.FIELDS = tuple(f.name for f in fields(Measurement))


def named_classes(values: list[float | None]) -> dict[str, float | None]:
    """Per-class IoUs keyed by class name, in train-id order."""
    if len(values) != len(CLASS_NAMES):
        raise ValueError(f"per_class_iou has {len(values)} values; expected {len(CLASS_NAMES)}")
    return dict(zip(CLASS_NAMES, values, strict=True))


# Measuring --------------------------------------------------------------------------------
def median_latency_ms(model, images: list[torch.Tensor], crop, repeats: int) -> float:
    """Median ms per whole image (sliding windows included), after one warm-up pass."""
    return interleaved_latency_ms([model], images, crop, repeats)[0]


def interleaved_latency_ms(models: list, images: list[torch.Tensor], crop, repeats: int):
    """Median ms per whole image (sliding windows included) of each model, timed in turns
    (model A on every image, then B, then A again...) after one warm-up pass each (compilation,
    for compiled models), so that a slower or faster spell of a shared machine falls on all of
    them alike: two models timed minutes apart on these 2-core machines differed by up to 25 %
    with nothing changed."""
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:  # warm-up
            for image in images:
                predict_logits(model, image.unsqueeze(0), crop)
        for _ in range(repeats):
            for model, spent in zip(models, times):
                for image in images:
                    start = time.perf_counter()
                    predict_logits(model, image.unsqueeze(0), crop)
                    spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1000 for spent in times]


def latency_basis(images: list[torch.Tensor], crop, repeats: int, compiled: bool) -> str:
    """What a latency figure is, stored beside it: measured here, and how."""
    height, width = images[0].shape[-2:] if images else (0, 0)
    return (
        f"measured: median ms per whole {height}x{width} val image ({len(images)} images x "
        f"{repeats} repeats, sliding {crop[0]}x{crop[1]} windows, batch 1, "
        f"{'compiled' if compiled else 'eager'}, {torch.get_num_threads()} threads)"
    )


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct tensor a model holds: its state dict and, for FX graphs, the
    constants its `get_attr` nodes read (PT2E keeps folded int8 weights there)."""
    tensors = dict.fromkeys(model.state_dict().values())
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            if node.op == "get_attr":
                value = model
                for part in str(node.target).split("."):
                    value = getattr(value, part)
                if isinstance(value, torch.Tensor):
                    tensors[value] = None
    seen, total = set(), 0
    for tensor in tensors:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.shape)
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def gzipped_bytes(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=6))


def archive_size(folder: Path) -> int:
    """The saved files gzipped (level 6); files already gzipped count as they are."""
    return sum(
        f.stat().st_size if f.suffix == ".gz" else gzipped_bytes(f.read_bytes())
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    )


def measurement(
    name: str,
    metrics: dict[str, Any],
    latency_ms: float,
    basis: str,
    size_bytes: int,
    archive_bytes: int | None,
    compiled: bool,
) -> Measurement:
    """One row of the comparison from its accuracy metrics and its measured latency."""
    return Measurement(
        name=name,
        miou=metrics["miou"],
        boundary_f1=metrics["boundary_f1"],
        pixel_acc=metrics["pixel_acc"],
        per_class_iou=named_classes(metrics["per_class_iou"]),
        latency_ms=latency_ms,
        size_bytes=size_bytes,
        compiled=compiled,
        archive_bytes=archive_bytes,
        latency_basis=basis,
    )


# Latencies closer than this are one speed: run-to-run noise on a shared 2-core machine is about
# ±10 % (bench/README.md), so a 3 % lead is not worth a file half again as large.
SPEED_TIE = 0.10
# Sizes closer than this are one size (static and dynamic W8A8 hold the same int8 weights; the
# few activation scales static adds are not worth a slower model).
SIZE_TIE = 0.02


def shippable(fp32: Measurement, candidates: list[Measurement]) -> bool:
    """Whether some candidate is within tolerance, no larger than FP32 and faster than it:
    what `choose` prefers, so that no deferred method could win outright."""
    return any(
        v.passed and v.size_bytes <= fp32.size_bytes and v.latency_ms < fp32.latency_ms
        for v in candidates
    )


def choose(
    fp32: Measurement, candidates: list[Measurement], tolerance: float
) -> tuple[Measurement, str]:
    """Among the candidates within tolerance and no larger than the FP32 model: the fastest if
    any is faster than FP32 here (the smallest of those within SPEED_TIE of the fastest, and the
    fastest of those within SIZE_TIE of that size), else the smallest. When none is within
    tolerance, the most accurate, for the caller to refuse."""
    passing = [v for v in candidates if v.passed]
    if not passing:
        best = max(candidates, key=lambda v: v.miou)
        return best, f"no INT8 method stays within {tolerance:.2f} mIoU points"
    eligible = [v for v in passing if v.size_bytes <= fp32.size_bytes]
    if not eligible:
        best = min(passing, key=lambda v: v.size_bytes)
        return best, "every INT8 model is larger than the FP32 model; nothing worth shipping"
    faster = [v for v in eligible if v.latency_ms < fp32.latency_ms]
    if faster:
        fastest = min(faster, key=lambda v: v.latency_ms)
        tied = [v for v in faster if v.latency_ms <= fastest.latency_ms * (1 + SPEED_TIE)]
        smallest = min(v.size_bytes for v in tied)
        best = min(
            (v for v in tied if v.size_bytes <= smallest * (1 + SIZE_TIE)),
            key=lambda v: (v.latency_ms, v.size_bytes),
        )
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
