"""The quantized model on disk: a folder with the INC model, `quantization.json` (method,
config, provenance, the comparison) and `comparison.json`; written only once it passed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
import zipfile
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
EXPORTED_FILE = "model.pt2.gz"  # torch.export archive of a PT2E model, gzipped


def save_quantized(model, method: str, example, folder: Path) -> None:
    """PT2E models: the folded ExportedProgram, without the example inputs torch.export would
    keep (a 2-image batch, 3 MB for the embedded model) and gzipped (its graph is JSON text).
    Weight-only models: INC's own format."""
    target = folder / MODEL_DIR
    if example is None:  # eager (weight-only) models
        model.save(str(target))
        return
    program = torch.export.export(model, example, dynamic_shapes=model.dynamic_shapes)
    program._example_inputs = None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    target.mkdir(parents=True, exist_ok=True)
    with gzip.open(target / EXPORTED_FILE, "wb", compresslevel=6) as handle:
        handle.write(buffer.getvalue())


def check_archive(data: bytes, source: Path) -> None:
    """What can be checked before `torch.export.load`, which unpickles some payloads with
    `weights_only=False` (and retries the example inputs so when `weights_only=True` fails):
    every pickled payload must load as plain tensors with `weights_only=True`, and the
    archive must hold no custom or opaque objects (our exports have none)."""

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{source}: {why}; refused for safety (load only your own exports)")

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except zipfile.BadZipFile:
        raise refuse("not a torch.export archive") from None

    def plain(name: str) -> None:
        payload = archive.read(name)
        if not payload:  # what torch writes for no example inputs: nothing to unpickle
            return
        try:
            torch.load(io.BytesIO(payload), weights_only=True)
        except Exception:
            raise refuse(f"{name} is not plain tensors") from None

    for name in names:
        if "/custom_objs/" in name or "opaque" in name:
            raise refuse(f"it holds {name}, which loads by unpickling")
        if "/sample_inputs/" in name:  # torch retries a failed weights_only load without it
            plain(name)
    for name in names:
        if not name.endswith(("_weights_config.json", "_constants_config.json")):
            continue
        folder = name.rsplit("/", 1)[0]
        config = json.loads(archive.read(name))["config"]
        for entry in config.values():
            path = entry.get("path_name", "")
            if path.startswith(("custom_obj", "opaque")):
                raise refuse(f"it holds a {path} object")
            if entry.get("use_pickle"):
                plain(f"{folder}/{path}")


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
    """(model, TrainConfig) from a folder written by `tuner quantize`. PT2E archives are
    code-bearing (torch.export unpickles parts of them): load only folders you made or trust.
    Before loading, the files are checked against their recorded hashes and the archive against
    `check_archive`."""
    _quiet_inc()
    from neural_compressor.torch.quantization import load

    folder = Path(folder)
    meta = read_meta(folder)
    config = meta["config"]
    _check_files(folder, meta)
    if METHODS[meta["method"]].exported:
        path = folder / MODEL_DIR / EXPORTED_FILE
        try:
            data = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from None
        check_archive(data, path)
        return torch.export.load(io.BytesIO(data)).module(), config
    # Weight-only: INC restores only the quantized Linear layers into `original_model`; the
    # rest (convolutions, norms, position tables) comes from the same saved file, here.
    original = build_segmenter(config, pretrained=False, initialise=False).eval()
    saved = torch.load(
        folder / MODEL_DIR / "quantized_weight.pt", map_location="cpu", weights_only=True
    )
    own = original.state_dict()
    original.load_state_dict(
        {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}, strict=False
    )
    return load(str(folder / MODEL_DIR), original_model=original), config


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file of a saved model, to find a changed or truncated one on load."""
    root = folder / MODEL_DIR
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _check_files(folder: Path, meta: dict[str, Any]) -> None:
    """The model files must be the ones `tuner quantize` wrote (their recorded sha256). This
    catches corruption and a swapped file; it is not a signature: whoever can rewrite the folder
    can rewrite quantization.json too."""
    recorded = meta.get("files")
    if recorded is None:
        return  # written before hashes were recorded
    if file_hashes(folder) != recorded:
        raise CheckpointError(
            f"{folder / MODEL_DIR}: its files differ from those recorded in {META_FILE}"
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


def write_output(out_dir, staging, method, config, source, report) -> None:
    """Replace `out_dir` only now that the model passed: the old one survives any failure.
    `source` says where the FP32 model came from (a study, trial and artifact id, or a file)."""
    out_dir = Path(out_dir)
    final = staging_dir(out_dir)
    try:
        shutil.copytree(staging / MODEL_DIR, final / MODEL_DIR)
        meta = {
            "method": method,
            "config": config.to_dict(),
            "source": source,
            "files": file_hashes(final),
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


def write_report(folder: Path, report: QuantizeReport) -> None:
    """Update the report in both files of a written folder (once its final place and its
    artifact id are known), so that neither names a staging folder."""
    meta_path = Path(folder) / META_FILE
    meta = json.loads(meta_path.read_text())
    meta["report"] = report.to_dict()
    meta["source"] = report.source or meta.get("source")
    meta_path.write_text(json.dumps(meta, indent=2))
    write_comparison(Path(folder), report)


def archive(folder: Path) -> Path:
    """A .tar.gz of a quantized model folder, for the study's artifact store."""
    target = folder.with_name(folder.name + ".tar.gz")
    with tarfile.open(target, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return target
