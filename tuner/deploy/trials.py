"""Quantizing a study's trials: the study glue around `tuner.deploy.quantize`. The study side
(which trial, its checkpoint, the artifact store, the attributes) comes from `tuner.search`."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tuner.core import paths
from tuner.core.errors import StudyError, UserError
from tuner.deploy.quantize import (
    QuantizeOptions,
    QuantizeReport,
    archive,
    quantize_checkpoint,
    write_comparison,
)
from tuner.search import attrs
from tuner.search.study import (
    artifact_store_for,
    best_trials,
    fetch_checkpoint,
    get_trial,
    load_existing_study,
    open_storage,
    upload,
)


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
    study = load_existing_study(study_name, open_storage(storage_url, create=False))
    if trial_number is None:
        best = best_trials(study)
        if not best:
            raise StudyError(f"study {study_name!r} has no completed trial to quantize")
        trial = best[0]
    else:
        trial = get_trial(study, trial_number)
    data_root = data_root or study.user_attrs.get(attrs.DATA_ROOT)
    if data_root is None:
        raise UserError(f"study {study_name!r} does not record its data; pass --data DIR")
    out_dir = out_dir or paths.inside_home("quantized", f"{study_name}-trial{trial.number}")
    source = {
        "study": study_name,
        "trial": trial.number,
        "checkpoint_artifact_id": trial.user_attrs.get(attrs.CHECKPOINT),
        "artifact_store": study.user_attrs.get(attrs.ARTIFACT_STORE),
    }
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = fetch_checkpoint(study, trial, Path(tmp) / "best.pt")
        log(f"study {study_name!r}, trial {trial.number}: {trial.params}")
        report = quantize_checkpoint(checkpoint, Path(data_root), out_dir, options, log, source)
    packed = archive(Path(out_dir))
    try:
        artifact_id = upload(study, artifact_store_for(study), packed)
    finally:
        packed.unlink()
    report.extras = {"trial": trial.number, "artifact_id": artifact_id}
    write_comparison(Path(out_dir), report)
    study.set_user_attr(attrs.QUANTIZATION, report.to_dict())
    return report
