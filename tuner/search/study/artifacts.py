"""Files in a study's artifact store: a trial's checkpoint down, any file up."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial

from tuner.core.errors import CheckpointError, StudyError
from tuner.search import attrs
from tuner.search.study.storage import artifact_store_for


def fetch_checkpoint(
    study: optuna.Study, trial: FrozenTrial, dest: Path, artifacts: str | Path | None = None
) -> Path:
    """Download a trial's checkpoint artifact to `dest`; clear errors when it is not there."""
    artifact_id = trial.user_attrs.get(attrs.CHECKPOINT)
    if artifact_id is None:
        raise StudyError(
            f"trial {trial.number} of study {study.study_name!r} ({trial.state.name}) has no "
            "checkpoint artifact; only completed trials upload one"
        )
    store = artifact_store_for(study, artifacts)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    try:
        download_artifact(artifact_store=store, file_path=str(dest), artifact_id=artifact_id)
    except (ArtifactNotFound, FileNotFoundError, OSError) as exc:
        raise CheckpointError(
            f"checkpoint artifact {artifact_id} of trial {trial.number} is missing from "
            f"{study.user_attrs.get(attrs.ARTIFACT_STORE)}: {exc}"
        ) from None
    return dest


def upload(study_or_trial, store, path: Path) -> str:
    """Put a file into the artifact store, attached to a study or a trial; its artifact id."""
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study_or_trial)
