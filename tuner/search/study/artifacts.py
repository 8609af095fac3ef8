"""Files in a study's artifact store: a trial's checkpoint down, any file up (under a name that
says what it holds, with its MIME type), and the weights of trials outside the best K dropped
(`keep_checkpoints`)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import ArtifactMeta, download_artifact, upload_artifact
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


# By suffix, longest first. Stated, not guessed: Python's mimetypes reads `.pt` as
# application/vnd.snesdev-page-table and `.tar.gz` as a tar with a gzip *encoding*.
MIMETYPES = {
    ".tar.gz": "application/gzip",
    ".tgz": "application/gzip",
    ".gz": "application/gzip",
    ".pt": "application/octet-stream",
    ".pth": "application/octet-stream",
    ".pt2": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".npz": "application/octet-stream",
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".html": "text/html",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".png": "image/png",
    ".jpg": "image/jpeg",
}
STUDY_ARTIFACT_PREFIX = "artifacts:"  # optuna's key for a study artifact's metadata


def mimetype_of(name: str) -> str:
    """The MIME type a browser should get for a file of this name."""
    lower = name.lower()
    for suffix in sorted(MIMETYPES, key=len, reverse=True):
        if lower.endswith(suffix):
            return MIMETYPES[suffix]
    return "application/octet-stream"


def upload(
    study_or_trial, store, path: Path, name: str | None = None, mimetype: str | None = None
) -> str:
    """Put a file into the artifact store, attached to a study or a trial, under `name` (default:
    the file's own name) and its MIME type (default: by `mimetype_of`); its artifact id."""
    path = Path(path)
    name = name or path.name
    mimetype = mimetype or mimetype_of(name)
    if name == path.name:
        return _upload(study_or_trial, store, path, mimetype)
    if "/" in name or os.sep in name:
        raise ValueError(f"artifact name {name!r}: a file name, without folders")
    with tempfile.TemporaryDirectory(prefix="artifact-") as tmp:
        named = Path(tmp) / name  # optuna names an artifact after the file it reads
        try:
            os.link(path, named)
        except OSError:  # another file system: copy instead
            shutil.copyfile(path, named)
        return _upload(study_or_trial, store, named, mimetype)


def _upload(study_or_trial, store, path: Path, mimetype: str) -> str:
    return upload_artifact(
        artifact_store=store,
        file_path=str(path),
        study_or_trial=study_or_trial,
        mimetype=mimetype,
        # The type says it all: an encoding would be taken for a transfer encoding
        # (optuna guesses "gzip" for .tar.gz).
        encoding="identity",
    )


def study_artifacts(study: optuna.Study, name: str | None = None) -> list[ArtifactMeta]:
    """The study's own artifacts (not its trials'), or those called `name`. Removed ones are
    skipped (optuna's get_all_artifact_meta fails on them)."""
    found = []
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        meta = json.loads(value) if key.startswith(STUDY_ARTIFACT_PREFIX) else None
        if meta is not None and (name is None or meta["filename"] == name):
            found.append(ArtifactMeta(**meta))
    return found


def remove_study_artifact(study: optuna.Study, store, artifact_id: str) -> None:
    """Remove a study artifact from the store and from the study's list (as the dashboard's
    delete button does); one already gone is not an error."""
    with contextlib.suppress(ArtifactNotFound, FileNotFoundError):
        store.remove(artifact_id)
    study._storage.set_study_system_attr(
        study._study_id, STUDY_ARTIFACT_PREFIX + artifact_id, json.dumps(None)
    )


def replace_study_artifact(
    study: optuna.Study, store, path: Path, name: str | None = None, mimetype: str | None = None
) -> str:
    """Upload a study artifact and remove earlier ones of the same name, so that each name in
    the dashboard's list stands for one file; the new artifact id."""
    name = name or Path(path).name
    earlier = [m.artifact_id for m in study_artifacts(study, name)]
    artifact_id = upload(study, store, path, name=name, mimetype=mimetype)
    for old in earlier:
        remove_study_artifact(study, store, old)
    return artifact_id


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
