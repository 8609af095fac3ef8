"""`tuner quantize`: one FP32 checkpoint in, INT8 candidates measured against it, the chosen
one written (or nothing, when every candidate loses more accuracy than allowed)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from tuner.core.checkpoint import load_segmenter
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.transforms import image_tensor, normalize
from tuner.core.environment import cpu_info, isa_summary
from tuner.core.errors import UserError
from tuner.core.inference import evaluate
from tuner.deploy.quantize._inc import (
    METHODS,
    _configure_inductor,
    _quiet_inc,
    autotune_method,
    calibration_windows,
    ipex_status,
    quantize_model,
)
from tuner.deploy.quantize._measure import Measurement, choose, folder_size, measure
from tuner.deploy.quantize._report import QuantizeReport
from tuner.deploy.quantize._store import (
    MODEL_DIR,
    QuantizationError,
    save_quantized,
    verify_reload,
    write_output,
)


@dataclass
class QuantizeOptions:
    method: str = "auto"  # static | dynamic | weight_only | auto
    tolerance: float = 1.0  # allowed mIoU drop, in points (1.0 = 0.01 mIoU)
    calib: int = 16  # training images for calibration
    compile: bool = True  # torch.compile (Inductor, freezing): where int8 kernels come from
    backend: str = "inc"  # inc | ipex
    val_limit: int | None = None  # evaluate on the first N val images
    latency_images: int = 4
    latency_repeats: int = 3


# The whole job --------------------------------------------------------------------------------
def quantize_checkpoint(
    checkpoint: Path, data_root: Path, out_dir: Path, options: QuantizeOptions, log=print
) -> QuantizeReport:
    """Quantize, measure against FP32, gate on the tolerance, then (only if it passes) write
    the INT8 model and its report to `out_dir`."""
    _quiet_inc()
    if options.calib < 1:
        raise UserError(f"--calib {options.calib}: at least one calibration image is needed")
    usable, ipex_line = ipex_status()
    if options.backend == "ipex":
        if not usable:
            raise UserError(f"--backend ipex: {ipex_line}")
        if options.method != "static":
            raise UserError("--backend ipex: only --method static goes through IPEX")
    info = cpu_info()
    log(f"CPU: {isa_summary(info)}; torch threads: {torch.get_num_threads()}")
    log(ipex_line)

    fp32, ckpt = load_segmenter(checkpoint, "cpu")
    config, crop = ckpt.config, ckpt.config.image_size
    val_set = CityscapesDataset(data_root, "val", limit=options.val_limit)
    windows = calibration_windows(CityscapesDataset(data_root, "train"), crop, options.calib)
    latency_set = [
        normalize(image_tensor(val_set.image(i)))
        for i in range(min(options.latency_images, len(val_set)))
    ]
    if options.compile:
        _configure_inductor()

    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = Path(tmp) / "fp32_state_dict.pt"
        torch.save(fp32.state_dict(), fp32_file)
        log("measuring FP32 ...")

        def row(name: str, model, size_bytes: int, compiled: bool) -> Measurement:
            return measure(
                name,
                model,
                val_set,
                crop,
                latency_set,
                options.latency_repeats,
                size_bytes,
                compiled,
                config.boundary_tolerance,
            )

        # FP32 eager always; FP32 compiled too when compiling, so that every INT8 model is
        # compared with the FP32 model run the same way.
        fp32_size = fp32_file.stat().st_size
        baselines = [row("fp32", fp32, fp32_size, compiled=False)]
        if options.compile:
            baselines.append(row("fp32", torch.compile(fp32), fp32_size, compiled=True))
        fp32_result = min(baselines, key=lambda v: v.latency_ms)

        def miou_fn(model) -> float:
            return evaluate(model, val_set, crop, torch.device("cpu"))["miou"]

        methods = METHODS if options.method == "auto" else (options.method,)
        candidates, models = [], {}
        for method in methods:
            log(f"quantizing: {method} ...")
            if options.method == "auto":
                model, example = autotune_method(
                    method, fp32, crop, windows, miou_fn, options.tolerance, fp32_result.miou
                )
                if model is None:
                    raise UserError(f"INC autotune returned no model for method {method}")
            else:
                model, example = quantize_model(method, fp32, crop, windows, options.backend)
            staging = Path(tmp) / method
            save_quantized(model, method, example, staging)
            # Weight-only layers recompile per module under torch.compile; measure them eager.
            compiled = options.compile and METHODS[method].exported
            variant = row(
                f"int8 {method}",
                torch.compile(model) if compiled else model,
                folder_size(staging / MODEL_DIR),
                compiled,
            )
            variant.passed = (fp32_result.miou - variant.miou) * 100 <= options.tolerance
            candidates.append(variant)
            models[variant.name] = (model, staging, method)

        chosen, reason = choose(fp32_result, candidates, options.tolerance)
        report = QuantizeReport(
            chosen.name, fp32_result, candidates, options.tolerance, info, reason, baselines
        )
        if not chosen.passed:
            raise QuantizationError(
                f"mIoU drops {(fp32_result.miou - chosen.miou) * 100:.2f} points with "
                f"{chosen.name} (FP32 {fp32_result.miou:.4f} -> INT8 {chosen.miou:.4f}); "
                f"the tolerance is {options.tolerance:.2f}. Nothing was written. Try another "
                "--method, more --calib images or a larger --tolerance."
            )
        model, staging, method = models[chosen.name]
        report.reload_max_abs_diff = verify_reload(
            model, staging, method, config, latency_set[0], crop
        )
        report.output_dir = str(out_dir)
        write_output(out_dir, staging, method, config, checkpoint, report)
    return report
