"""Files in a study's artifact store: a trial's checkpoint down, any file up, and the weights
of trials outside the best K dropped (`keep_checkpoints`)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import optuna
from optuna.artifacts import download_artifact, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.trial import FrozenTrial, TrialState

from tuner.core.errors import CheckpointError, StudyError
from tuner.search import attrs
from tuner.search.study.inspect import ranked_trials
from tuner.search.study.storage import artifact_store_for


def fetch_checkpoint(
    study: optuna.Study, trial: FrozenTrial, dest: Path, artifacts: str | Path | None = None
) -> Path:
    """Download a trial's checkpoint artifact to `dest`; clear errors when it is not there."""
    artifact_id = trial.user_attrs.get(attrs.CHECKPOINT)
    dropped = study.user_attrs.get(f"{attrs.CHECKPOINT_DROPPED}{trial.number}")
    if dropped is not None:
        raise StudyError(
            f"trial {trial.number} of study {study.study_name!r}: its weights were dropped "
            f"({dropped}); its metrics, config and per-image counts remain. Re-run it, or raise "
            "keep_checkpoints in the space file"
        )
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


class KeepBestCheckpoints:
    """A study callback: after each finished trial, remove the checkpoint artifacts of
    completed trials outside the best `keep` (by the objective; for several objectives, those
    off the Pareto front), and record why on the study. Metrics, config and per-image counts
    stay. Removing twice (two workers at once) is harmless."""

    def __init__(self, keep: int | None, store) -> None:
        self.keep, self.store = keep, store

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.prune(study)

    def prune(self, study: optuna.Study, ranked: list[FrozenTrial] | None = None) -> None:
        """Drop the weights outside the best `keep`; `ranked` (best first) replaces the
        ranking by each trial's own value, e.g. by the mean over confirmation seeds."""
        if self.keep is None:
            return
        for dropped, reason in self.outside(study, ranked):
            key = f"{attrs.CHECKPOINT_DROPPED}{dropped.number}"
            if key in study.user_attrs:
                continue
            with contextlib.suppress(ArtifactNotFound, FileNotFoundError):  # removed already
                self.store.remove(dropped.user_attrs[attrs.CHECKPOINT])
            study.set_user_attr(key, reason)

    def outside(
        self, study: optuna.Study, ranked: list[FrozenTrial] | None = None
    ) -> list[tuple[FrozenTrial, str]]:
        """(trial, reason) for each completed trial with weights that the rule drops."""
        done = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if attrs.CHECKPOINT in t.user_attrs
        ]
        if len(study.directions) > 1:
            front = {t.number for t in study.best_trials}
            return [(t, "not on the Pareto front") for t in done if t.number not in front]
        reason = f"outside the best {self.keep} (keep_checkpoints: {self.keep})"
        with_weights = {t.number for t in done}
        order = ranked if ranked is not None else ranked_trials(study)  # own values
        best = [t.number for t in order if t.number in with_weights][: self.keep]
        return [(t, reason) for t in done if t.number not in best]
