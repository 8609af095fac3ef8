"""Quantizing a study's trials: the study glue around `tuner.deploy.quantize`. The study side
(which trial, its checkpoint, the artifact store, the attributes) comes from `tuner.search`.

`--top K` quantizes the K best configurations and ships the one with the best INT8 mIoU
(ties within 0.0001 go to the lower latency): the user deploys the INT8 copy, so that is the
score that should pick it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from tuner.core import paths
from tuner.core.errors import StudyError, UserError
from tuner.core.fsutil import replace_dir, staging_dir
from tuner.deploy.quantize import (
    QuantizationError,
    QuantizeOptions,
    QuantizeReport,
    archive,
    quantize_checkpoint,
    write_report,
)
from tuner.search import attrs
from tuner.search.study import (
    artifact_store_for,
    best_trials,
    fetch_checkpoint,
    get_trial,
    load_existing_study,
    open_storage,
    replace_study_artifact,
)
from tuner.search.verdict import standings

TIE = 1e-4  # INT8 mIoU differences below this are ties, decided by latency


@dataclass
class Candidate:
    """One configuration's quantization, for the `--top K` table."""

    trial: FrozenTrial
    report: QuantizeReport | None  # None: no INT8 method stayed within the tolerance
    folder: Path
    failure: str = ""

    @property
    def int8(self):
        if self.report is None:
            return None
        return next(c for c in self.report.candidates if c.name == self.report.chosen)


def quantize_trial(
    study_name: str,
    trial_number: int | None,
    options: QuantizeOptions,
    storage_url: str | None = None,
    data_root: Path | None = None,
    out_dir: Path | None = None,
    log=print,
    top: int = 1,
) -> QuantizeReport:
    """Quantize a study's best trial (or trial N, or the best of its `top` configurations by
    INT8 mIoU) and store the result on the study: the comparison as a user attr, the INT8
    model folder as a study artifact."""
    study = load_existing_study(study_name, open_storage(storage_url, create=False))
    data_root = Path(data_root or study.user_attrs.get(attrs.DATA_ROOT) or "")
    if data_root == Path(""):
        raise UserError(f"study {study_name!r} does not record its data; pass --data DIR")
    trials = _targets(study, trial_number, top)
    out_dir = out_dir or paths.inside_home("quantized", f"{study_name}-trial{trials[0].number}")
    staging = staging_dir(out_dir)
    try:
        candidates = [
            _quantize(study, trial, options, data_root, staging / f"trial{trial.number}", log)
            for trial in trials
        ]
        winner = _winner(candidates)
        report = winner.report
        if len(candidates) > 1:
            report.extras["top"] = [_row(c, c is winner) for c in candidates]
            log(f"INT8 winner: trial {winner.trial.number} ({report.chosen})")
        report.output_dir = str(out_dir)  # where it will be, not the staging folder
        report.extras["trial"] = winner.trial.number
        write_report(winner.folder, report)
        replace_dir(winner.folder, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    packed = archive(Path(out_dir))
    try:
        # The archive cannot name its own id: inside it, output_artifact_id stays null.
        # One artifact per name, and the name says what it holds: quantizing again replaces it.
        kind = re.sub(r"[^A-Za-z0-9_.-]+", "-", report.chosen)
        report.output_artifact_id = replace_study_artifact(
            study,
            artifact_store_for(study),
            packed,
            name=f"{study_name}-trial{winner.trial.number}-{kind}.tar.gz",
            mimetype="application/gzip",
        )
    finally:
        packed.unlink()
    write_report(Path(out_dir), report)
    attrs.set_record(study, attrs.QUANTIZATION, report.to_dict())
    return report


def _targets(study: optuna.Study, number: int | None, top: int) -> list[FrozenTrial]:
    if number is not None:
        return [get_trial(study, number)]
    # One objective: configurations by their mean over seeds (what the leaderboard ranks by);
    # several: members of the Pareto front.
    single = len(study.directions) == 1
    ranked = [s.trial for s in standings(study)] if single else best_trials(study)
    ranked = ranked[:top]
    if not ranked:
        raise StudyError(f"study {study.study_name!r} has no completed trial to quantize")
    return ranked


def _quantize(study, trial, options, data_root: Path, out_dir: Path, log) -> Candidate:
    source = {
        "study": study.study_name,
        "trial": trial.number,
        "checkpoint_artifact_id": trial.user_attrs.get(attrs.CHECKPOINT),
        "artifact_store": study.user_attrs.get(attrs.ARTIFACT_STORE),
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = fetch_checkpoint(study, trial, Path(tmp) / "best.pt")
        log(f"study {study.study_name!r}, trial {trial.number}: {trial.params}")
        try:
            report = quantize_checkpoint(checkpoint, data_root, out_dir, options, log, source)
        except QuantizationError as exc:
            return Candidate(trial, None, out_dir, str(exc))
    return Candidate(trial, report, out_dir)


def _winner(candidates: list[Candidate]) -> Candidate:
    passed = [c for c in candidates if c.report is not None]
    if not passed:
        raise QuantizationError(candidates[0].failure)
    best_miou = max(c.int8.miou for c in passed)
    tied = [c for c in passed if best_miou - c.int8.miou < TIE]
    return min(tied, key=lambda c: c.int8.latency_ms)


def _row(candidate: Candidate, chosen: bool) -> dict[str, Any]:
    trial, int8 = candidate.trial, candidate.int8
    row = {"trial": trial.number, "params": trial.params, "chosen": chosen}
    if int8 is None:
        return {**row, "failure": candidate.failure}
    fp32 = candidate.report.fp32
    return {
        **row,
        "method": candidate.report.chosen,
        "fp32_miou": fp32.miou,
        "int8_miou": int8.miou,
        "drop_points": (fp32.miou - int8.miou) * 100,
        "latency_ms": int8.latency_ms,
        "fp32_latency_ms": candidate.report.fp32.latency_ms,
        "latency_basis": int8.latency_basis,
        "size_mb": int8.size_bytes / 1e6,
        "size_ratio": int8.size_bytes / fp32.size_bytes,
        "source_artifact_id": candidate.report.source_artifact_id,
    }
