"""The quantized model on disk: a folder with the INC model, `quantization.json` (method,
config, provenance, the comparison) and `comparison.json`; written only once it passed."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import torch

from tuner.core.config import TrainConfig
from tuner.core.errors import CheckpointError, ConfigError, UserError
from tuner.core.fsutil import replace_dir, staging_dir
from tuner.core.inference import predict_logits
from tuner.core.model import build_segmenter
from tuner.deploy.quantize._inc import METHODS, _quiet_inc
from tuner.deploy.quantize._report import QuantizeReport

MODEL_DIR = "model"


META_FILE = "quantization.json"


COMPARISON_FILE = "comparison.json"


class QuantizationError(UserError):
    """INT8 lost more accuracy than allowed; nothing was written."""


# Saving and loading -------------------------------------------------------------------------
def save_quantized(model, method: str, example, folder: Path) -> None:
    target = folder / MODEL_DIR
    if example is None:  # eager (weight-only) models
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

    folder = Path(folder)
    meta = read_meta(folder)
    config = meta["config"]
    if not METHODS[meta["method"]].exported:
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
