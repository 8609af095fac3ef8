"""FP32 against INT8 (INC static, dynamic, weight-only; eager and compiled) and plain PyTorch
dynamic quantization (torch.ao) as the peer, on a freshly fine-tuned sam_tiny."""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import torch

from bench.common import machine, scratch_home
from tuner.core import paths
from tuner.core.checkpoint import load_segmenter
from tuner.core.config import TrainConfig
from tuner.core.data import synth
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.synth import SynthSpec
from tuner.core.data.transforms import image_tensor, normalize
from tuner.core.inference import evaluate
from tuner.core.train import fit
from tuner.deploy.quantize._inc import (
    _configure_inductor,
    _quiet_inc,
    calibration_windows,
    quantize_model,
)
from tuner.deploy.quantize._measure import folder_size, median_latency_ms
from tuner.deploy.quantize._store import save_quantized


def torch_ao_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's own dynamic int8 Linear quantization (deprecated in favour of torchao)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def run(quick: bool = False) -> dict:
    _quiet_inc()
    with scratch_home(), tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if quick:
            spec, size, epochs = SynthSpec(train=8, val=4, height=128, width=256), (64, 128), 1
        else:
            spec, size, epochs = SynthSpec(train=64, val=16), (256, 512), 4
        root = synth.embedded(paths.data_dir(), spec, progress=False)
        config = TrainConfig(
            head="linear",
            image_size=size,
            epochs=epochs,
            lr=1e-3,
            encoder_lr_mult=1.0,
            batch_size=4 if not quick else 2,
        )
        summary = fit(
            config,
            CityscapesDataset(root, "train"),
            CityscapesDataset(root, "val"),
            out_dir=tmp / "run",
            progress=False,
            log=lambda m: None,
        )
        fp32, _ = load_segmenter(summary.checkpoint)
        val = CityscapesDataset(root, "val")
        windows = calibration_windows(CityscapesDataset(root, "train"), size, 4 if quick else 16)
        images = [normalize(image_tensor(val.image(i))) for i in range(2 if quick else 4)]
        repeats = 1 if quick else 5
        torch.save(fp32.state_dict(), tmp / "fp32.pt")
        fp32_size = (tmp / "fp32.pt").stat().st_size

        def row(name, model, size_bytes, compiled):
            miou = evaluate(model, val, size, torch.device("cpu"))["miou"]
            return {
                "variant": name,
                "compiled": compiled,
                "miou": round(miou, 4),
                "latency_ms": round(median_latency_ms(model, images, size, repeats), 2),
                "size_bytes": size_bytes,
            }

        rows = [row("fp32", fp32, fp32_size, False)]
        models = {}
        for method in ("static", "dynamic", "weight_only"):
            quantized, example = quantize_model(method, fp32, size, windows)
            save_quantized(quantized, method, example, tmp / method)
            models[method] = (quantized, folder_size(tmp / method))
            rows.append(row(f"inc {method}", quantized, models[method][1], False))
        ao = torch_ao_dynamic(fp32)
        torch.save(ao.state_dict(), tmp / "ao.pt")
        rows.append(row("torch.ao dynamic", ao, (tmp / "ao.pt").stat().st_size, False))
        if not quick:  # compiled: where INC's int8 kernels come from (Inductor with freezing)
            _configure_inductor()
            rows.append(row("fp32", torch.compile(copy.deepcopy(fp32)), fp32_size, True))
            for method in ("static", "dynamic"):
                quantized, size_bytes = models[method]
                rows.append(row(f"inc {method}", torch.compile(quantized), size_bytes, True))
    for r in rows:
        base = next(b for b in rows if b["variant"] == "fp32" and b["compiled"] == r["compiled"])
        r["speed_vs_fp32_same_mode"] = round(base["latency_ms"] / r["latency_ms"], 2)
        r["size_vs_fp32"] = round(r["size_bytes"] / fp32_size, 3)
        r["miou_drop_points"] = round(100 * (rows[0]["miou"] - r["miou"]), 2)
    return {"machine": machine(), "model": config.to_dict(), "results": rows}
