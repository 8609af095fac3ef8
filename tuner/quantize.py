"""INT8 for CPU deployment with Intel Neural Compressor 3.x, gated on accuracy.

Methods (all through `neural-compressor-pt`, no IPEX needed):
- static:      W8A8 through PT2E (export, prepare with X86InductorQuantizer, calibrate, convert);
               real int8 kernels appear only under torch.compile with Inductor freezing.
- dynamic:     weights int8, activations quantized on the fly (PT2E).
- weight_only: RTN int8 weights, fp32 compute (smaller, not faster).
- auto:        INC's `autotune` per candidate, eval function = val mIoU, allowed loss = the
               tolerance; then the fastest passing candidate on this machine, or the smallest
               when none beats FP32 here.

The FP32 and INT8 models are measured the same way in one process: mIoU, per-class IoU,
boundary F1, median latency per image after warm-up at the same thread count, size on disk.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import shutil
import statistics
import tarfile
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tuner.config import TrainConfig
from tuner.errors import CheckpointError, ConfigError, UserError
from tuner.fsutil import replace_dir, staging_dir
from tuner.hardware import cpu_info, isa_summary
from tuner.inference import evaluate, pad_to_crop, predict_logits, windows

METHODS = ("static", "dynamic", "weight_only")
MODEL_DIR = "model"
META_FILE = "quantization.json"
COMPARISON_FILE = "comparison.json"


class QuantizationError(UserError):
    """INT8 lost more accuracy than allowed; nothing was written."""


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


@dataclass
class Variant:
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


@dataclass
class QuantizeReport:
    chosen: str
    fp32: Variant
    candidates: list[Variant]
    tolerance: float
    cpu: dict[str, Any]
    reason: str
    baselines: list[Variant] = field(default_factory=list)  # FP32 eager (and compiled)
    output_dir: str | None = None
    reload_max_abs_diff: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeReport:
        """Back from JSON (a study's user attr, comparison.json)."""
        variants = ("fp32", "candidates", "baselines")
        return cls(
            **{k: v for k, v in data.items() if k not in variants},
            fp32=Variant(**data["fp32"]),
            candidates=[Variant(**v) for v in data["candidates"]],
            baselines=[Variant(**v) for v in data.get("baselines", [])],
        )


# Environment -------------------------------------------------------------------------------
def _quiet_inc() -> None:
    """INC logs at INFO on import; keep its warnings for real problems only."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._inductor")
    from neural_compressor.common.utils import logger as inc_logger  # noqa: F401

    logging.getLogger("neural_compressor").setLevel(logging.ERROR)
    # PT2E save/load chatter about archive formats; the fallback it describes is the normal path.
    for name in ("torch.export", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def ipex_status() -> tuple[bool, str]:
    """(usable, one line saying why or why not)."""
    if importlib.util.find_spec("intel_extension_for_pytorch") is None:
        return False, (
            f"IPEX not used: not installed (its last release pins torch 2.8; this is torch "
            f"{torch.__version__.split('+')[0]}); INC quantizes through PT2E without it"
        )
    import intel_extension_for_pytorch as ipex

    ours = torch.__version__.split("+")[0].rsplit(".", 1)[0]
    theirs = ipex.__version__.split("+")[0].rsplit(".", 1)[0]
    if ours != theirs:
        return False, f"IPEX not used: version {ipex.__version__} does not match torch {ours}"
    return True, f"IPEX {ipex.__version__} available"


def _configure_inductor() -> None:
    import torch._inductor.config as inductor

    inductor.freezing = True  # constant-folds weights: required for int8 GEMM/conv lowering
    inductor.compile_threads = 1  # a worker pool only competes with the main process on 2 cores


# Data --------------------------------------------------------------------------------------
def calibration_windows(dataset, crop: tuple[int, int], count: int) -> list[torch.Tensor]:
    """Crop-sized windows from the first `count` images, as the model sees them at inference."""
    from tuner.data.transforms import image_tensor, normalize

    out = []
    for index in range(min(count, len(dataset))):
        image = pad_to_crop(normalize(image_tensor(dataset.image(index))), crop)
        for top, left in windows(image.shape[1], image.shape[2], crop):
            out.append(image[:, top : top + crop[0], left : left + crop[1]])
    return out


# Quantizers ---------------------------------------------------------------------------------
def _export(model: torch.nn.Module, crop: tuple[int, int]):
    """PT2E export with a dynamic batch (an example batch of 1 would be specialised to 1)."""
    from neural_compressor.torch.export import export
    from torch.export import Dim

    example = (torch.randn(2, 3, *crop),)
    exported = export(model, example, dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    return exported, example


def _calibrate(model, windows: list[torch.Tensor], batch: int = 4) -> None:
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            model(torch.stack(windows[start : start + batch]))


def quant_config(method: str):
    from neural_compressor.torch.quantization import (
        DynamicQuantConfig,
        RTNConfig,
        StaticQuantConfig,
    )

    if method == "static":
        return StaticQuantConfig()
    if method == "dynamic":
        return DynamicQuantConfig()
    if method == "weight_only":
        # int8 per output channel; layer-wise loading would need `accelerate`.
        return RTNConfig(use_layer_wise=False, bits=8, group_size=-1)
    raise UserError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}, auto")


def quantize_model(
    method: str,
    fp32: torch.nn.Module,
    crop: tuple[int, int],
    windows: list[torch.Tensor],
    backend: str = "inc",
):
    """(quantized model, example inputs for saving or None)."""
    from neural_compressor.torch.quantization import convert, prepare

    if backend == "ipex":
        # INC routes static quantization through IPEX once it is imported (eager model, no
        # export). Only reachable where IPEX matches torch, which is not the case here.
        import intel_extension_for_pytorch  # noqa: F401

        example = (torch.stack(windows[:2]),)
        prepared = prepare(copy.deepcopy(fp32), quant_config(method), example_inputs=example)
        _calibrate(prepared, windows)
        return convert(prepared), None
    if method == "weight_only":
        return convert(prepare(copy.deepcopy(fp32), quant_config(method))), None
    exported, example = _export(fp32, crop)
    prepared = prepare(exported, quant_config(method))
    # Static needs calibration; dynamic needs one forward too, or its weight observers never
    # run and every weight scale stays 1.0 (silently wrong outputs).
    _calibrate(prepared, windows if method == "static" else windows[:2])
    return convert(prepared), example


def autotune_method(method, fp32, crop, windows, miou_fn, tolerance_points, baseline_miou):
    """INC's autotune over one candidate: eval = val mIoU, tolerable loss = the tolerance.

    PT2E configs need the exported graph and weight-only needs the eager module, so INC cannot
    tune them in one config set; each candidate gets its own autotune call.
    """
    from neural_compressor.torch.quantization import TuningConfig, autotune

    relative = (tolerance_points / 100) / max(baseline_miou, 1e-6)
    # max_trials=1: INC then returns the candidate even when it misses the tolerance (with the
    # default of 100 it returns None); the gate below decides with our own measurement.
    tuning = TuningConfig(config_set=[quant_config(method)], tolerable_loss=relative, max_trials=1)

    def run_fn(model):
        _calibrate(model, windows if method == "static" else windows[:2])

    if method == "weight_only":
        model = autotune(copy.deepcopy(fp32), tuning, eval_fn=miou_fn, run_fn=run_fn)
        return model, None
    exported, example = _export(fp32, crop)
    model = autotune(exported, tuning, eval_fn=miou_fn, run_fn=run_fn, example_inputs=example)
    return model, example


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
    return Variant(
        name=name,
        miou=metrics["miou"],
        boundary_f1=metrics["boundary_f1"],
        pixel_acc=metrics["pixel_acc"],
        per_class_iou=metrics["per_class_iou"],
        latency_ms=median_latency_ms(model, latency_set, crop, repeats),
        size_bytes=size_bytes,
        compiled=compiled,
    )


# Saving and loading -------------------------------------------------------------------------
def save_quantized(model, method: str, example, folder: Path) -> None:
    target = folder / MODEL_DIR
    if method == "weight_only" or example is None:
        model.save(str(target))
    else:  # PT2E graphs save through their own method (the top-level save() fails on them)
        model.save(example_inputs=example, output_dir=str(target))


def read_meta(folder: Path) -> dict[str, Any]:
    """quantization.json, checked field by field: a broken file is one line naming the field."""
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{folder}: not a quantized model folder (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object")
    if meta.get("method") not in METHODS:
        raise CheckpointError(
            f"{meta_path}: field 'method' is {meta.get('method')!r}; "
            f"expected one of {', '.join(METHODS)}"
        )
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{meta_path}: field 'config' is missing or not a mapping")
    try:
        config = TrainConfig.from_dict(meta["config"], source=f"{meta_path}: field 'config'")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return {**meta, "config": config}


def load_quantized(folder: str | Path):
    """(model, TrainConfig) from a folder written by `tuner quantize`."""
    _quiet_inc()
    from neural_compressor.torch.quantization import load

    from tuner.model import build_segmenter

    folder = Path(folder)
    meta = read_meta(folder)
    config = meta["config"]
    if meta["method"] == "weight_only":
        # INC restores only the quantized Linear layers into `original_model`; everything else
        # (convolutions, norms, position tables) comes from the same saved file, here.
        original = build_segmenter(config, pretrained=False).eval()
        saved = torch.load(
            folder / MODEL_DIR / "quantized_weight.pt", map_location="cpu", weights_only=True
        )
        own = original.state_dict()
        original.load_state_dict(
            {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}, strict=False
        )
        model = load(str(folder / MODEL_DIR), original_model=original)
    else:
        model = load(str(folder / MODEL_DIR))
    return model, config


# The whole job --------------------------------------------------------------------------------
def quantize_checkpoint(
    checkpoint: Path, data_root: Path, out_dir: Path, options: QuantizeOptions, log=print
) -> QuantizeReport:
    """Quantize, measure against FP32, gate on the tolerance, then (only if it passes) write
    the INT8 model and its report to `out_dir`."""
    from tuner.checkpoint import load_segmenter
    from tuner.data.cityscapes import CityscapesDataset
    from tuner.data.transforms import image_tensor, normalize

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

        def row(name: str, model, size_bytes: int, compiled: bool) -> Variant:
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
            compiled = options.compile and method != "weight_only"
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


def choose(fp32: Variant, candidates: list[Variant], tolerance: float) -> tuple[Variant, str]:
    """The fastest candidate within tolerance; if none is faster than FP32 here, the smallest."""
    if len(candidates) == 1:
        only = candidates[0]
        speed = fp32.latency_ms / only.latency_ms
        verdict = (
            f"{speed:.2f}x the FP32 speed on this CPU"
            if speed > 1
            else f"not faster than FP32 on this CPU ({speed:.2f}x its speed)"
        )
        size = f"{only.size_bytes / fp32.size_bytes:.0%} of the FP32 size"
        return only, f"the method asked for; {verdict}; {size}"
    passing = [v for v in candidates if v.passed]
    if not passing:
        best = max(candidates, key=lambda v: v.miou)
        return best, f"no INT8 method stays within {tolerance:.2f} mIoU points"
    faster = [v for v in passing if v.latency_ms < fp32.latency_ms]
    if faster:
        best = min(faster, key=lambda v: v.latency_ms)
        return best, (
            f"fastest within tolerance: {fp32.latency_ms / best.latency_ms:.2f}x the FP32 "
            "speed on this CPU"
        )
    best = min(passing, key=lambda v: v.size_bytes)
    return best, (
        "no INT8 method is faster than FP32 on this CPU, so the choice is by size "
        f"({best.size_bytes / fp32.size_bytes:.0%} of FP32)"
    )


def verify_reload(model, staging, method, config, image, crop) -> float:
    """Reload the saved model through INC's load API; its outputs must equal the original's."""
    reloaded, _ = load_quantized_staging(staging, method, config)
    with torch.no_grad():
        before = predict_logits(model, image.unsqueeze(0), crop)
        after = predict_logits(reloaded, image.unsqueeze(0), crop)
    diff = float((before - after).abs().max())
    if diff > 1e-4:
        raise QuantizationError(f"the saved INT8 model reloads with different outputs ({diff})")
    return diff


def load_quantized_staging(staging: Path, method: str, config: TrainConfig):
    (staging / META_FILE).write_text(json.dumps({"method": method, "config": config.to_dict()}))
    return load_quantized(staging)


def write_output(out_dir, staging, method, config, checkpoint, report) -> None:
    """Replace `out_dir` only now that the model passed: the old one survives any failure."""
    out_dir = Path(out_dir)
    final = staging_dir(out_dir)
    try:
        shutil.copytree(staging / MODEL_DIR, final / MODEL_DIR)
        meta = {
            "method": method,
            "config": config.to_dict(),
            "source_checkpoint": str(checkpoint),
            "report": report.to_dict(),
        }
        (final / META_FILE).write_text(json.dumps(meta, indent=2))
        write_comparison(final, report)
        replace_dir(final, out_dir)
    finally:
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)


def write_comparison(folder: Path, report: QuantizeReport) -> None:
    (folder / COMPARISON_FILE).write_text(json.dumps(report.to_dict(), indent=2))


def archive(folder: Path) -> Path:
    """A .tar.gz of a quantized model folder, for the study's artifact store."""
    target = folder.with_name(folder.name + ".tar.gz")
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return target


def comparison_rows(report: QuantizeReport) -> tuple[list[list[Any]], list[str]]:
    headers = [
        "model",
        "run as",
        "mIoU",
        "drop (pts)",
        "boundary F1",
        "latency ms",
        "speed vs FP32 (same run)",
        "size MB",
        "size vs FP32",
        "within tol.",
    ]
    rows = []
    for v in [*(report.baselines or [report.fp32]), *report.candidates]:
        same_mode = next((b for b in report.baselines if b.compiled == v.compiled), report.fp32)
        rows.append(
            [
                v.name + (" (chosen)" if v.name == report.chosen else ""),
                "compiled" if v.compiled else "eager",
                v.miou,
                (report.fp32.miou - v.miou) * 100,
                v.boundary_f1,
                round(v.latency_ms, 2),
                f"{same_mode.latency_ms / v.latency_ms:.2f}x",
                round(v.size_bytes / 1e6, 2),
                f"{v.size_bytes / report.fp32.size_bytes:.0%}",
                "yes" if v.passed else "NO",
            ]
        )
    return rows, headers


# Studies ------------------------------------------------------------------------------------
def quantize_trial(
    study_name: str,
    trial_number: int | None,
    options: QuantizeOptions,
    storage_url: str | None = None,
    data_root: Path | None = None,
    out_dir: Path | None = None,
    log=print,
) -> QuantizeReport:
    """Quantize a study's best trial (or trial N) and store the result on the study: the
    comparison as a user attr, the INT8 model folder as a study artifact."""
    from optuna.artifacts import upload_artifact

    from tuner import paths
    from tuner.errors import StudyError
    from tuner.study import (
        artifact_store_for,
        best_trials,
        fetch_checkpoint,
        get_trial,
        load_existing_study,
        open_storage,
    )

    study = load_existing_study(study_name, open_storage(storage_url, create=False))
    if trial_number is None:
        best = best_trials(study)
        if not best:
            raise StudyError(f"study {study_name!r} has no completed trial to quantize")
        trial = best[0]
    else:
        trial = get_trial(study, trial_number)
    data_root = data_root or study.user_attrs.get("data_root")
    if data_root is None:
        raise UserError(f"study {study_name!r} does not record its data; pass --data DIR")
    out_dir = out_dir or paths.inside_home("quantized", f"{study_name}-trial{trial.number}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = fetch_checkpoint(study, trial, Path(tmp) / "best.pt")
        log(f"study {study_name!r}, trial {trial.number}: {trial.params}")
        report = quantize_checkpoint(checkpoint, Path(data_root), out_dir, options, log)
    packed = archive(Path(out_dir))
    try:
        artifact_id = upload_artifact(
            artifact_store=artifact_store_for(study), file_path=str(packed), study_or_trial=study
        )
    finally:
        packed.unlink()
    report.extras = {"trial": trial.number, "artifact_id": artifact_id}
    write_comparison(Path(out_dir), report)
    study.set_user_attr("quantization", report.to_dict())
    return report
