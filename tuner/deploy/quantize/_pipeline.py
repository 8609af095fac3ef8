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
from tuner.core.model.adapters import merge_adapters
from tuner.deploy.quantize._inc import (
    METHODS,
    _configure_inductor,
    _quiet_inc,
    calibration_windows,
    fallback_groups,
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
    method: str = "auto"  # a name in METHODS, or auto: each one, the best kept
    tolerance: float = 1.0  # allowed mIoU drop, in points (1.0 = 0.01 mIoU)
    calib: int = 16  # training images for calibration
    compile: bool = True  # torch.compile (Inductor, freezing): where int8 kernels come from
    backend: str = "inc"  # inc | ipex
    val_limit: int | None = None  # evaluate on the first N val images
    fallback_steps: int = 3  # per-layer fallback: at most this many more modules kept in FP32
    latency_images: int = 4
    latency_repeats: int = 3


# The whole job --------------------------------------------------------------------------------
def quantize_checkpoint(
    checkpoint: Path,
    data_root: Path,
    out_dir: Path,
    options: QuantizeOptions,
    log=print,
    source: dict | None = None,
) -> QuantizeReport:
    """Quantize, measure against FP32, gate on the tolerance, then (only if it passes) write
    the INT8 model and its report to `out_dir`. `source` records where the checkpoint came
    from (default: its path).

    Each method is quantized once; when its mIoU drop (measured eagerly, which is cheap) exceeds
    the tolerance, it is quantized again with one more suspect module kept in FP32
    (`fallback_groups`), up to `fallback_steps` times. Only the accepted model of each method is
    compiled and measured for the table."""
    _quiet_inc()
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
    # Adapters are folded into their Linears first: the deployed model has no extra layers,
    # and its config says so.
    merge_adapters(fp32)
    config, crop = ckpt.config.replace(adapter="none"), ckpt.config.image_size
    val_set = CityscapesDataset(data_root, "val", limit=options.val_limit)
    windows = calibration_windows(CityscapesDataset(data_root, "train"), crop, options.calib)
    latency_set = [
        normalize(image_tensor(val_set.image(i)))
        for i in range(min(options.latency_images, len(val_set)))
    ]
    if options.compile:
        _configure_inductor()

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

    def miou(model) -> float:
        return evaluate(model, val_set, crop, torch.device("cpu"))["miou"]

    with tempfile.TemporaryDirectory() as tmp:
        fp32_file = Path(tmp) / "fp32_state_dict.pt"
        torch.save(fp32.state_dict(), fp32_file)
        log("measuring FP32 ...")
        # FP32 eager always; FP32 compiled too when compiling, so that every INT8 model is
        # compared with the FP32 model run the same way.
        fp32_size = fp32_file.stat().st_size
        baselines = [row("fp32", fp32, fp32_size, compiled=False)]
        if options.compile:
            baselines.append(row("fp32", torch.compile(fp32), fp32_size, compiled=True))
        fp32_result = min(baselines, key=lambda v: v.latency_ms)
        groups = fallback_groups(fp32)

        methods = list(METHODS) if options.method == "auto" else [options.method]
        candidates, models = [], {}
        for method in methods:
            kept: list[str] = []
            while True:
                note = f" (kept in FP32: {', '.join(kept)})" if kept else ""
                log(f"quantizing: {method}{note} ...")
                model, example = quantize_model(
                    method, fp32, crop, windows, tuple(kept), options.backend
                )
                drop = (fp32_result.miou - miou(model)) * 100
                steps_left = len(kept) < min(options.fallback_steps, len(groups))
                if drop <= options.tolerance or not steps_left:
                    break
                log(f"  mIoU drop {drop:.2f} points > {options.tolerance:.2f}: falling back")
                kept.append(groups[len(kept)])
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
            variant.kept_fp32 = kept
            variant.passed = (fp32_result.miou - variant.miou) * 100 <= options.tolerance
            candidates.append(variant)
            models[variant.name] = (model, staging, method)

        chosen, reason = choose(fp32_result, candidates, options.tolerance)
        report = QuantizeReport(
            chosen.name, fp32_result, candidates, options.tolerance, info, reason, baselines
        )
        if not chosen.passed or chosen.size_bytes > fp32_result.size_bytes:
            raise QuantizationError(
                f"{reason}: with {chosen.name}, mIoU {fp32_result.miou:.4f} -> "
                f"{chosen.miou:.4f} ({(fp32_result.miou - chosen.miou) * 100:.2f} points; the "
                f"tolerance is {options.tolerance:.2f}), "
                f"{chosen.size_bytes / fp32_result.size_bytes:.0%} of the FP32 size. Nothing "
                "was written. Try another --method, more --calib images or a larger --tolerance."
            )
        model, staging, method = models[chosen.name]
        report.reload_max_abs_diff = verify_reload(
            model, staging, method, config, latency_set[0], crop
        )
        report.output_dir = str(out_dir)
        source = source or {"checkpoint": str(Path(checkpoint).resolve())}
        write_output(out_dir, staging, method, config, source, report)
    return report
