"""The Optuna side of a study, one concept per module: where it is stored (`storage`), how
many trials it runs and what becomes of an interrupted one (`budget`), what it found (`inspect`)
and the files beside it (`artifacts`). Samplers and pruners are in `tuner.search.samplers`."""

from tuner.search.study.artifacts import (
    KeepBestCheckpoints,
    fetch_checkpoint,
    replace_study_artifact,
    upload,
)
from tuner.search.study.budget import (
    StopAtBudget,
    counted_trials,
    requeue,
    trials_to_run,
    waiting_trials,
)
from tuner.search.study.inspect import (
    best_trials,
    checkpoint_location,
    get_trial,
    list_studies,
    metric_names,
    ranked_trials,
    state_counts,
)
from tuner.search.study.storage import (
    artifact_store_for,
    load_existing_study,
    open_artifact_store,
    open_storage,
    open_study,
    redact,
)

__all__ = [
    "KeepBestCheckpoints",
    "StopAtBudget",
    "artifact_store_for",
    "best_trials",
    "checkpoint_location",
    "counted_trials",
    "fetch_checkpoint",
    "get_trial",
    "list_studies",
    "load_existing_study",
    "metric_names",
    "open_artifact_store",
    "open_storage",
    "open_study",
    "ranked_trials",
    "redact",
    "replace_study_artifact",
    "requeue",
    "state_counts",
    "trials_to_run",
    "upload",
    "waiting_trials",
]
