"""Opening what a study lives in: its storage (SQLite, PostgreSQL, a journal file), its
artifact store (a folder or S3) and the study itself."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import BaseStorage, JournalStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from tuner.core import paths
from tuner.core.errors import StudyError, UserError
from tuner.search import attrs
from tuner.search.samplers import make_pruner, make_sampler
from tuner.search.space import FaultTolerance, SearchSpace
from tuner.search.study.proxy import open_proxy_client
from tuner.search.study.retry import RetryingRDBStorage
from tuner.search.study.urls import is_journal, local_file, redact


def open_storage(
    url: str | None = None, fault: FaultTolerance | None = None, create: bool = True
) -> BaseStorage:
    """SQLite under studies/ by default; any SQLAlchemy URL (PostgreSQL for several machines);
    a path ending in .log/.jsonl for a journal file (NFS-friendly, but without heartbeats);
    grpc://host:port for a `tuner storage-proxy` (hundreds of workers, no database
    connection each). A database's pool is bounded and a lost connection is waited out
    (`tuner.search.study.retry`).

    With `fault`, RDB storages beat a heartbeat, and a trial whose worker died is failed and
    re-queued with the same params by Optuna's RetryHeartbeatStaleTrialCallback. Without
    `create` (read-only commands), a SQLite or journal file that does not exist is an error
    instead of a new, empty database.
    """
    url = url or paths.default_storage_url()
    if url.startswith("grpc://"):
        return open_proxy_client(url, fault.heartbeat_interval if fault else None)
    local = local_file(url)
    if local is not None and not create and not local.exists():
        raise StudyError(f"no study storage at {local} yet: `tuner run --study NAME` creates it")
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
    if is_journal(url):
        return JournalStorage(JournalFileBackend(str(local)))
    kwargs: dict[str, Any] = {}
    if fault is not None:
        kwargs = {
            "heartbeat_interval": fault.heartbeat_interval,
            "grace_period": fault.grace_period,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=fault.max_retry
            ),
        }
    for attempt in range(3):
        try:
            return RetryingRDBStorage(url, **kwargs)
        except ImportError as exc:
            raise UserError(
                f"storage {redact(url)}: missing database driver ({exc}); for PostgreSQL "
                "install the extra: pip install 'sam-tuner[postgres]'"
            ) from None
        except Exception as exc:
            # Machines starting together on a fresh database race to create Optuna's tables;
            # the loser sees "already exists" and succeeds on the next try.
            if attempt == 2:
                raise UserError(f"storage {redact(url)}: cannot open: {exc}") from None
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


def open_artifact_store(location: str | Path | None = None):
    """A folder (shared between machines over NFS, say) or s3://bucket for an object store."""
    location = str(location or paths.default_artifact_dir())
    if location.startswith("s3://"):
        try:
            import boto3  # optional: pip install 'sam-tuner[s3]'
            from optuna.artifacts import Boto3ArtifactStore
        except ImportError:
            raise UserError(
                f"artifacts {location}: needs boto3 (pip install 'sam-tuner[s3]')"
            ) from None
        bucket = location.removeprefix("s3://").strip("/")
        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    Path(location).mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(location)


def open_study(
    space: SearchSpace, storage: BaseStorage, artifacts: str | Path | None = None
) -> optuna.Study:
    """Create the study, or load it if it exists. Its objectives must not change; a changed
    space is allowed (to add choices, say) but said, because old and new trials then mix."""
    try:
        existing = optuna.load_study(study_name=space.study, storage=storage)
    except KeyError:
        existing = None
    existing_directions = [d.name.lower() for d in existing.directions] if existing else None
    if existing_directions is not None and existing_directions != space.directions:
        raise UserError(
            f"study {space.study!r} exists with {len(existing.directions)} objective(s) "
            f"{existing_directions}; {space.source} asks for "
            f"{space.directions}. Use another study name or storage."
        )
    study = optuna.create_study(
        study_name=space.study,
        storage=storage,
        sampler=make_sampler(space.sampler, space.grid, space.enumerated),
        pruner=make_pruner(space.pruner),
        directions=space.directions,
        load_if_exists=True,
    )
    text = Path(space.source).read_text() if Path(space.source).is_file() else space.source
    if space.enumerated:  # a conditional grid: its points, queued once
        for point in space.points():
            study.enqueue_trial(point, skip_if_exists=True)
    fault = dataclasses.asdict(space.fault_tolerance)
    if attrs.record(study, attrs.FAULT_TOLERANCE) != fault:  # what the proxy reaps by
        attrs.set_record(study, attrs.FAULT_TOLERANCE, fault)
    if existing is None:
        attrs.set_record(study, attrs.SEARCH_SPACE, text)
        study.set_metric_names(space.metric_names)
    elif attrs.record(study, attrs.SEARCH_SPACE) not in (None, text):
        print(
            f"note: {space.source} differs from the space study {space.study!r} was created "
            "with; earlier and new trials mix"
        )
    if artifacts is not None or attrs.ARTIFACT_STORE not in study.user_attrs:
        location = str(artifacts or paths.default_artifact_dir())
        if "://" not in location:
            location = str(Path(location).resolve())
        study.set_user_attr(attrs.ARTIFACT_STORE, location)
    return study


def load_existing_study(name: str, storage: BaseStorage) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise StudyError(
            f"no study named {name!r} in this storage; studies here: {', '.join(names) or 'none'}"
        ) from None


def artifact_store_for(study: optuna.Study, override: str | Path | None = None):
    return open_artifact_store(override or study.user_attrs.get(attrs.ARTIFACT_STORE))
