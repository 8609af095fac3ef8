"""`tuner quantize`: one FP32 checkpoint in, INT8 candidates measured against it, the chosen
one written (or nothing, when every candidate loses more accuracy than allowed)."""

from __future__ import annotations

import copy
import hashlib
import io
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
from tuner.core.model.adapters import (
    deployed_config,
    describe_adapter,
    has_adapters,
    merge_adapters,
    strip_adapters,
)
from tuner.deploy.quantize._inc import (
    METHODS,
    _configure_inductor,
    _quiet_inc,
    calibration_windows,
    fallback_groups,
    ipex_status,
    plan_methods,
    quantize_model,
)
from tuner.deploy.quantize._measure import (
    Measurement,
    archive_size,
    choose,
    gzipped_bytes,
    interleaved_latency_ms,
    latency_basis,
    measurement,
    median_latency_ms,
    shippable,
    tensor_bytes,
)
from tuner.deploy.quantize._report import AdapterCost, QuantizeReport, utc_now, versions
from tuner.deploy.quantize._store import (
    MODEL_DIR,
    QuantizationError,
    save_quantized,
    verify_reload,
    write_output,
)


@dataclass
class QuantizeOptions:
    # auto: the methods this CPU's ISA favours, the others only if those leave nothing worth
    # shipping (`plan_methods`); all: every method; or names in METHODS, comma-separated.
    method: str = "auto"
    tolerance: float = 1.0  # allowed mIoU drop, in points (1.0 = 0.01 mIoU)
    calib: int = 16  # training images for calibration
    compile: bool = True  # torch.compile (Inductor, freezing): where int8 kernels come from
    backend: str = "inc"  # inc | ipex
    val_limit: int | None = None  # evaluate on the first N val images
    fallback_steps: int = 3  # per-layer fallback: at most this many more modules kept in FP32
    latency_images: int = 4
    latency_repeats: int = 3


# The whole job --------------------------------------------------------------------------------
def _evaluate(name: str, model, val_set, crop, boundary_tolerance: int) -> dict:
    """Accuracy of one model on the val set (`name` says which, for logs and tests)."""
    return evaluate(
        model, val_set, crop, torch.device("cpu"), boundary_tolerance=boundary_tolerance
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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
    from (default: its path); its `checkpoint_artifact_id` becomes `source_artifact_id`.

    Each model is compiled once and scored once: a candidate is compiled, scored, and when its
    mIoU drop exceeds the tolerance quantized again with one more suspect module kept in FP32
    (`fallback_groups`), up to `fallback_steps` times; only the accepted one is timed. Under
    `--method auto`, methods the CPU's ISA rules out run only if the others leave nothing worth
    shipping; the report lists them under `skipped`."""
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
    first, deferred = plan_methods(options.method, info["isa"])

    fp32, ckpt = load_segmenter(checkpoint, "cpu")
    # LoRA is folded into its Linears first: the deployed model has no extra layers, and its
    # config says so. ConvLoRA and AdaptFormer cannot be folded: INT8 quantizes them too, and
    # `adapter_costs` times the model without them (the graph a merged LoRA has) beside it.
    merge_adapters(fp32)
    config, crop = deployed_config(ckpt.config, fp32), ckpt.config.image_size
    val_set = CityscapesDataset(data_root, "val", limit=options.val_limit)
    train_set = CityscapesDataset(data_root, "train")
    windows = calibration_windows(train_set, crop, options.calib)
    latency_set = [
        normalize(image_tensor(val_set.image(i)))
        for i in range(min(options.latency_images, len(val_set)))
    ]
    if options.compile:
        _configure_inductor()
    tolerance_px = config.boundary_tolerance

    def timed(name: str, model, metrics: dict, sizes: tuple[int, int | None], compiled: bool):
        latency = median_latency_ms(model, latency_set, crop, options.latency_repeats)
        basis = latency_basis(latency_set, crop, options.latency_repeats, compiled)
        return measurement(name, metrics, latency, basis, *sizes, compiled)

    state = io.BytesIO()
    torch.save(fp32.state_dict(), state)
    fp32_sizes = (tensor_bytes(fp32), gzipped_bytes(state.getvalue()))
    baselines: dict[bool, Measurement] = {}

    def baseline(compiled: bool) -> Measurement:
        """FP32 run as a candidate is (compiled or eager), measured once, when first needed."""
        if compiled not in baselines:
            name = f"fp32 {'compiled' if compiled else 'eager'}"
            log(f"measuring {name} ...")
            model = torch.compile(fp32) if compiled else fp32
            metrics = _evaluate(name, model, val_set, crop, tolerance_px)
            baselines[compiled] = timed(name, model, metrics, fp32_sizes, compiled)
        return baselines[compiled]

    # The gate: FP32 run the way the INT8 kernels are (compiled, when compiling).
    fp32_result = baseline(options.compile)
    groups = fallback_groups(fp32)
    candidates: list[Measurement] = []
    models: dict[str, tuple] = {}

    with tempfile.TemporaryDirectory() as tmp:

        def run(method: str) -> None:
            # Weight-only layers recompile per module under torch.compile; measure them eager.
            compiled = options.compile and METHODS[method].exported
            if compiled != options.compile:
                baseline(compiled)  # its "speed vs FP32" is against FP32 run the same way
            name, kept = f"int8 {method}", []
            while True:
                note = f" (kept in FP32: {', '.join(kept)})" if kept else ""
                log(f"quantizing: {method}{note} ...")
                model, example = quantize_model(
                    method, fp32, crop, windows, tuple(kept), options.backend
                )
                runnable = torch.compile(model) if compiled else model
                metrics = _evaluate(name, runnable, val_set, crop, tolerance_px)
                drop = (fp32_result.miou - metrics["miou"]) * 100
                steps_left = len(kept) < min(options.fallback_steps, len(groups))
                if drop <= options.tolerance or not steps_left:
                    break
                log(f"  mIoU drop {drop:.2f} points > {options.tolerance:.2f}: falling back")
                kept.append(groups[len(kept)])
            staging = Path(tmp) / method
            save_quantized(model, method, example, staging)
            sizes = (tensor_bytes(model), archive_size(staging / MODEL_DIR))
            variant = timed(name, runnable, metrics, sizes, compiled)
            variant.kept_fp32 = kept
            variant.passed = drop <= options.tolerance
            candidates.append(variant)
            models[name] = (model, staging, method)

        for method in first:
            run(method)
        skipped = []
        if deferred and shippable(fp32_result, candidates):
            skipped = [{"name": f"int8 {m}", "reason": why} for m, why in deferred.items()]
            for entry in skipped:
                log(f"skipped {entry['name']}: {entry['reason']} (--method names it to force it)")
        else:
            for method in deferred:
                run(method)

        chosen, reason = choose(fp32_result, candidates, options.tolerance)
        source = source or {"checkpoint": str(Path(checkpoint).resolve())}
        report = QuantizeReport(
            chosen.name,
            fp32_result,
            candidates,
            options.tolerance,
            info,
            reason,
            sorted(baselines.values(), key=lambda b: b.compiled),
            created_utc=utc_now(),
            versions=versions(),
            val_images=len(val_set),
            calibration_images=min(options.calib, len(train_set)),
            calibration_windows=len(windows),
            skipped=skipped,
            source={**source, "checkpoint_sha256": _sha256(checkpoint)},
            source_artifact_id=source.get("checkpoint_artifact_id"),
        )
        if not chosen.passed or chosen.size_bytes > fp32_result.size_bytes:
            raise QuantizationError(
                f"{reason}: with {chosen.name}, mIoU {fp32_result.miou:.4f} -> "
                f"{chosen.miou:.4f} ({(fp32_result.miou - chosen.miou) * 100:.2f} points; the "
                f"tolerance is {options.tolerance:.2f}), "
                f"{chosen.size_bytes / fp32_result.size_bytes:.0%} of the FP32 size. Nothing "
                "was written. Try another --method, more --calib images or a larger --tolerance."
            )
        if has_adapters(fp32):
            report.adapter_costs = _adapter_costs(
                fp32, fp32_result, chosen, models, crop, windows, latency_set, options
            )
            for cost in report.adapter_costs:
                log(f"{describe_adapter(ckpt.config)}: {cost.describe()}")
        model, staging, method = models[chosen.name]
        report.reload_max_abs_diff = verify_reload(
            model, staging, method, config, latency_set[0], crop
        )
        report.output_dir = str(out_dir)
        write_output(out_dir, staging, method, config, report.source, report)
    return report


# Alternating rounds of the adapted model and the one without adapters: at least this many.
ADAPTER_COST_REPEATS = 5


def _adapter_costs(
    fp32, gate: Measurement, chosen: Measurement, models, crop, windows, latency_set, options
) -> list[AdapterCost]:
    """The FP32 gate model and the chosen INT8 model, each timed against the same model without
    its adapters (quantized the same way), in alternating rounds and run the same way
    (compiled or eager) as its row in the table."""
    plain = strip_adapters(copy.deepcopy(fp32))
    pairs = [("fp32 without adapters", fp32, plain, gate)]
    if chosen.name in models:
        model, _, method = models[chosen.name]
        plain_int8, _ = quantize_model(method, plain, crop, windows, (), options.backend)
        pairs.append((f"int8 {method} without adapters", model, plain_int8, chosen))
    repeats = max(options.latency_repeats, ADAPTER_COST_REPEATS)
    costs = []
    for name, adapted, without, row in pairs:
        runnable = [torch.compile(m) if row.compiled else m for m in (adapted, without)]
        adapted_ms, without_ms = interleaved_latency_ms(runnable, latency_set, crop, repeats)
        basis = latency_basis(latency_set, crop, repeats, row.compiled)
        costs.append(
            AdapterCost(
                name=name,
                adapted=row.name,
                compiled=row.compiled,
                latency_ms=without_ms,
                adapted_latency_ms=adapted_ms,
                size_bytes=tensor_bytes(without),
                latency_basis=f"{basis}; alternating with {row.name}, timed again",
            )
        )
    return costs
