"""The Optuna side: storages, artifact stores, samplers, pruners, studies and their budget.

Everything here is a thin choice among Optuna's own parts, behind the names a search-space file
uses. Training lives in `tuner.train`; `tuner.objective` joins the two.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
from optuna.storages import (
    BaseStorage,
    JournalStorage,
    RDBStorage,
    RetryHeartbeatStaleTrialCallback,
)
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from tuner import paths
from tuner.errors import StudyError, UserError
from tuner.space import FaultTolerance, SearchSpace
from tuner.tables import short

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,
    "cmaes": optuna.samplers.CmaEsSampler,
    "gp": optuna.samplers.GPSampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "nsga3": optuna.samplers.NSGAIIISampler,
}
PRUNERS = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}
SEEDED = {"tpe", "random", "grid", "cmaes", "gp", "nsga2", "nsga3"}
ATTR_ARTIFACTS = "artifact_store"
ATTR_SPACE = "search_space"


def make_sampler(space: SearchSpace) -> optuna.samplers.BaseSampler:
    options = {k: v for k, v in space.sampler.items() if k != "name"}
    name = space.sampler["name"]
    if name in SEEDED:
        options.setdefault("seed", 0)  # reproducible by default; set seed: null to vary
    if name == "grid":
        return optuna.samplers.GridSampler(space.grid(), **options)
    return SAMPLERS[name](**options)


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    options = {k: v for k, v in space.pruner.items() if k != "name"}
    return PRUNERS[space.pruner["name"]](**options)


def open_storage(
    url: str | None = None, fault: FaultTolerance | None = None, create: bool = True
) -> BaseStorage:
    """SQLite under studies/ by default; any SQLAlchemy URL (PostgreSQL for several machines);
    a path ending in .log/.jsonl for a journal file (NFS-friendly, but without heartbeats).

    With `fault`, RDB storages beat a heartbeat, and a trial whose worker died is failed and
    re-queued with the same params by Optuna's RetryHeartbeatStaleTrialCallback. Without
    `create` (read-only commands), a SQLite or journal file that does not exist is an error
    instead of a new, empty database.
    """
    url = url or paths.default_storage_url()
    local = _local_file(url)
    if local is not None and not create and not local.exists():
        raise StudyError(f"no study storage at {local} yet: `tuner run --study NAME` creates it")
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
    if url.endswith((".log", ".jsonl")) or url.startswith("journal:"):
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
    engine_kwargs = None
    if url.startswith("sqlite:///"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(3):
        try:
            return RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
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


def _local_file(url: str) -> Path | None:
    """The file behind a SQLite or journal storage URL (None for database servers)."""
    if url.endswith((".log", ".jsonl")) or url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def open_artifact_store(location: str | Path | None = None):
    """A folder (shared between machines over NFS, say) or s3://bucket for an object store."""
    location = str(location or paths.default_artifact_dir())
    if location.startswith("s3://"):
        try:
            import boto3
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
        sampler=make_sampler(space),
        pruner=make_pruner(space),
        directions=space.directions,
        load_if_exists=True,
    )
    text = Path(space.source).read_text() if Path(space.source).is_file() else space.source
    if existing is None:
        study.set_user_attr(ATTR_SPACE, text)
        study.set_metric_names(space.metric_names)
    elif existing.user_attrs.get(ATTR_SPACE) not in (None, text):
        print(
            f"note: {space.source} differs from the space study {space.study!r} was created "
            "with; earlier and new trials mix"
        )
    if artifacts is not None or ATTR_ARTIFACTS not in study.user_attrs:
        location = str(artifacts or paths.default_artifact_dir())
        if "://" not in location:
            location = str(Path(location).resolve())
        study.set_user_attr(ATTR_ARTIFACTS, location)
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
    return open_artifact_store(override or study.user_attrs.get(ATTR_ARTIFACTS))


# Budget ----------------------------------------------------------------------------------------
def counted_trials(study: optuna.Study) -> int:
    """Trials that use the budget: all of them, except failures that were re-queued (a killed
    or interrupted trial is retried with the same params, and only the retry counts)."""
    trials = study.get_trials(deepcopy=False)
    # retry_history holds every ancestor (0 -> 1 -> 2 gives [0, 1]), not just the first.
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def waiting_trials(study: optuna.Study) -> int:
    """Queued trials (retries, enqueued params): they run even when the budget is reached."""
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def trials_to_run(study: optuna.Study, budget: int) -> int:
    """How many trials a worker should still start: queued ones plus what the budget allows."""
    return max(0, budget - counted_trials(study)) + waiting_trials(study)


class StopAtBudget:
    """Optuna callback: stop this worker once the study holds `budget` counted trials and no
    queued ones. Every worker (here or on other machines) checks the same count, so they share
    one budget."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trials_to_run(study, self.budget) == 0:
            study.stop()


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue the same params again (as RetryHeartbeatStaleTrialCallback does for dead workers),
    so an interrupted trial is not lost to the budget or to a grid."""
    system_attrs = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={"requeued_because": reason},
            system_attrs=system_attrs,
        )
    )


# Inspection ------------------------------------------------------------------------------------
def metric_names(study: optuna.Study) -> list[str]:
    return study.metric_names or ["value"] * len(study.directions)


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial, or the Pareto front of a multi-objective study."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    if len(study.directions) > 1:
        return list(study.best_trials)
    return [study.best_trial]


def get_trial(study: optuna.Study, number: int) -> FrozenTrial:
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial
    raise StudyError(f"study {study.study_name!r} has no trial {number}")


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials best first, then pruned ones by their last value, then the rest."""
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    sign = -1 if maximize else 1

    def key(t: FrozenTrial):
        if t.state == TrialState.COMPLETE:
            return (0, sign * t.values[0])
        if t.state == TrialState.PRUNED and t.intermediate_values:
            last = t.intermediate_values[max(t.intermediate_values)]
            return (1, sign * last)
        return (2, t.number)

    return sorted(study.get_trials(deepcopy=False), key=key)


def leaderboard_rows(study: optuna.Study, limit: int = 20) -> tuple[list[list[Any]], list[str]]:
    metrics = metric_names(study)
    param_names = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    headers = ["#", "state", *metrics, "boundary F1", "epochs", "seconds", *param_names]
    rows = []
    for t in ranked_trials(study)[:limit]:
        values = list(t.values) if t.values else [None] * len(metrics)
        rows.append(
            [
                t.number,
                t.state.name,
                *values,
                t.user_attrs.get("val_boundary_f1"),
                len(t.user_attrs.get("epoch_seconds", [])) or None,
                round(t.duration.total_seconds()) if t.duration else None,
                *[short(t.params.get(p)) for p in param_names],
            ]
        )
    return rows, headers


def state_counts(trials: list[FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def list_studies(storage_url: str | None) -> list[list[Any]]:
    try:
        storage = open_storage(storage_url, create=False)
    except StudyError:
        return []
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        counts = state_counts(trials)
        best = best_trials(study)
        best_text = (
            "; ".join(f"#{t.number}: " + ", ".join(f"{v:.4f}" for v in t.values) for t in best[:3])
            or "-"
        )
        rows.append(
            [
                summary.study_name,
                len(trials),
                counts.get("COMPLETE", 0),
                counts.get("PRUNED", 0),
                counts.get("FAIL", 0),
                counts.get("RUNNING", 0) + counts.get("WAITING", 0),
                best_text,
            ]
        )
    return rows


def describe_best(study_name: str, storage_url: str | None) -> str:
    study = load_existing_study(study_name, open_storage(storage_url, create=False))
    best = best_trials(study)
    if not best:
        raise StudyError(f"study {study_name!r} has no completed trial yet")
    metrics = metric_names(study)
    lines = []
    for trial in best:
        lines.append(f"trial {trial.number} of study {study_name!r}")
        lines += [f"  {m}: {v:.4f}" for m, v in zip(metrics, trial.values)]
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in trial.params.items()))
        attrs = trial.user_attrs
        for key in (
            "val_miou",
            "val_boundary_f1",
            "val_pixel_acc",
            "best_epoch",
            "fit_seconds",
            "trainable_params",
            "device",
        ):
            if key in attrs and key not in metrics:
                value = attrs[key]
                lines.append(
                    f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}"
                )
        lines.append(f"  checkpoint: {checkpoint_location(study, trial)}")
    return "\n".join(lines)


def checkpoint_location(study: optuna.Study, trial: FrozenTrial) -> str:
    from tuner.objective import ATTR_CHECKPOINT

    artifact_id = trial.user_attrs.get(ATTR_CHECKPOINT)
    if artifact_id is None:
        return "none (only completed trials keep a checkpoint)"
    where = study.user_attrs.get(ATTR_ARTIFACTS, str(paths.default_artifact_dir()))
    if "://" in where:
        return f"artifact {artifact_id} in {where}"
    return f"{Path(where) / artifact_id} (artifact {artifact_id})"


def fetch_checkpoint(
    study: optuna.Study, trial: FrozenTrial, dest: Path, artifacts: str | Path | None = None
) -> Path:
    """Download a trial's checkpoint artifact to `dest`; clear errors when it is not there."""
    from optuna.artifacts import download_artifact
    from optuna.artifacts.exceptions import ArtifactNotFound

    from tuner.errors import CheckpointError
    from tuner.objective import ATTR_CHECKPOINT

    artifact_id = trial.user_attrs.get(ATTR_CHECKPOINT)
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
            f"{study.user_attrs.get(ATTR_ARTIFACTS)}: {exc}"
        ) from None
    return dest
