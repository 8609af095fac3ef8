"""FP32 against INT8, in one process per model: FP32 eager and compiled; INC static (PT2E,
compiled), dynamic (compiled) and weight-only (eager); and torchao's own X86 Inductor quantizer
(static, compiled) as the peer INC builds on.

Two parts. The embedded model (sam_tiny fine-tuned from the stand-in), measured with mIoU on
its validation set. Then ViT-B, the smallest encoder users quantize, at 512x512 and at SAM's
native 1024x1024, from random weights (speed does not depend on them), with accuracy as argmax
agreement with FP32 on synthetic scenes. Compiled = torch.compile with Inductor freezing, where
int8 kernels come from. Latency is the median of several runs after a warm-up; sizes are the
saved files. Every table carries the CPU's instruction sets: INT8 speed depends on them.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from bench.common import machine, scratch_home
from tuner.core import paths
from tuner.core.checkpoint import load_segmenter
from tuner.core.config import TrainConfig
from tuner.core.data import synth
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.transforms import image_tensor, normalize
from tuner.core.environment import isa_summary
from tuner.core.inference import evaluate
from tuner.core.model import build_segmenter
from tuner.core.train import fit
from tuner.deploy.quantize._inc import (
    _configure_inductor,
    _export,
    _quiet_inc,
    calibration_windows,
    quantize_model,
)
from tuner.deploy.quantize._measure import median_latency_ms, tensor_bytes
from tuner.deploy.quantize._store import save_quantized


def torchao_static(model: torch.nn.Module, crop, windows) -> torch.nn.Module:
    """torchao's PT2E flow with its default X86 Inductor config: what INC's static wraps."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    exported, _ = _export(model, crop)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for window in windows:
            prepared(window.unsqueeze(0))
    return convert_pt2e(prepared, fold_quantize=True)


def candidates(model, crop, windows, tmp: Path) -> list[tuple[str, object, int, bool]]:
    """(name, model, tensor bytes, compiled) for every row, FP32 first: sizes counted alike
    (`tensor_bytes`, uncompressed), so that a ratio shows quantization and not gzip."""
    fp32_size = tensor_bytes(model)
    rows = [("fp32", model, fp32_size, False), ("fp32", torch.compile(model), fp32_size, True)]
    for method in ("static", "dynamic", "weight_only"):
        quantized, example = quantize_model(method, model, crop, windows)
        save_quantized(quantized, method, example, tmp / method)
        compiled = method != "weight_only"
        runnable = torch.compile(quantized) if compiled else quantized
        rows.append((f"inc {method}", runnable, tensor_bytes(quantized), compiled))
    peer = torchao_static(model, crop, windows)
    rows.append(("torchao static", torch.compile(peer), tensor_bytes(peer), True))
    return rows


def finish(rows: list[dict]) -> list[dict]:
    for r in rows:
        base = next(b for b in rows if b["variant"] == "fp32" and b["compiled"] == r["compiled"])
        eager = rows[0]
        r["speed_vs_fp32_same_mode"] = round(base["latency_ms"] / r["latency_ms"], 2)
        r["speed_vs_fp32_eager"] = round(eager["latency_ms"] / r["latency_ms"], 2)
        r["size_mb"] = round(r["size_bytes"] / 1e6, 2)
        r["size_ratio"] = round(r["size_bytes"] / eager["size_bytes"], 3)
    return rows


def embedded(quick: bool, tmp: Path) -> dict:
    """sam_tiny fine-tuned 4 epochs from the stand-in, as `tuner quantize` would see it."""
    if quick:
        spec, size, epochs = synth.SynthSpec(train=8, val=4, height=128, width=256), (64, 128), 1
    else:
        spec, size, epochs = synth.SynthSpec(), (256, 512), 4
    root = synth.embedded(paths.data_dir(), spec, progress=False)
    config = TrainConfig(head="linear", image_size=size, epochs=epochs, lr=3e-3, batch_size=4)
    train, val = CityscapesDataset(root, "train"), CityscapesDataset(root, "val")
    summary = fit(config, train, val, out_dir=tmp / "run", progress=False, log=lambda m: None)
    fp32, _ = load_segmenter(summary.checkpoint)
    windows = calibration_windows(train, size, 4 if quick else 16)
    images = [normalize(image_tensor(val.image(i))) for i in range(2 if quick else 4)]
    rows = []
    for name, model, size_bytes, compiled in candidates(fp32, size, windows, tmp):
        rows.append(
            {
                "variant": name,
                "compiled": compiled,
                "miou": round(evaluate(model, val, size, torch.device("cpu"))["miou"], 4),
                "latency_ms": round(median_latency_ms(model, images, size, 1 if quick else 5), 2),
                "size_bytes": size_bytes,
            }
        )
    for r in rows:
        r["miou_drop_points"] = round(100 * (rows[0]["miou"] - r["miou"]), 2)
    return {"model": config.to_dict(), "results": finish(rows)}


def vit_b(size: int, tmp: Path) -> dict:
    """ViT-B at size x size from random weights: latency, size, argmax agreement with FP32."""
    torch.manual_seed(0)
    config = TrainConfig(model="vit_b", head="linear", image_size=(size, size))
    model = build_segmenter(config).eval()
    scenes = [
        normalize(image_tensor(synth.make_scene(7, "val", i, size, size)["image"]))
        for i in range(2)
    ]
    windows = scenes[:1]
    with torch.no_grad():
        reference = [model(s.unsqueeze(0)).argmax(1) for s in scenes]
    rows = []
    for name, candidate, size_bytes, compiled in candidates(model, (size, size), windows, tmp):
        start = time.perf_counter()
        with torch.no_grad():
            outputs = [candidate(s.unsqueeze(0)).argmax(1) for s in scenes]  # also compiles
        first = time.perf_counter() - start
        agreement = torch.cat([(o == r).flatten() for o, r in zip(outputs, reference)])
        rows.append(
            {
                "variant": name,
                "compiled": compiled,
                "argmax_agreement": round(float(agreement.float().mean()), 4),
                "latency_ms": round(median_latency_ms(candidate, scenes[:1], (size, size), 2), 1),
                "first_run_seconds": round(first, 1),
                "size_bytes": size_bytes,
            }
        )
        del candidate
    return {"size": size, "results": finish(rows)}


SIZE_BASIS = "size_bytes: bytes of the tensors each model holds, uncompressed, for every row"


def run(quick: bool = False) -> dict:
    _quiet_inc()
    _configure_inductor()
    result = {"machine": machine(), "isa": isa_summary(), "size_basis": SIZE_BASIS}
    with scratch_home(), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tiny").mkdir()
        result["embedded"] = embedded(quick, tmp / "tiny")
        if not quick:
            for size in (512, 1024):
                (tmp / f"vit_b{size}").mkdir()
                result[f"vit_b_{size}"] = vit_b(size, tmp / f"vit_b{size}")
    return result
