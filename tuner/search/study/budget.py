"""A study's trial budget, shared by every worker on every machine, and what happens to a
trial that was interrupted: it is queued again with the same params."""

from __future__ import annotations

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tuner.search import attrs


# Budget ----------------------------------------------------------------------------------------
def counted_trials(study: optuna.Study) -> int:
    """Trials that use the budget: all of them, except failures that were re-queued (a killed
    or interrupted trial is retried with the same params, and only the retry counts), trials
    carried over from an earlier study by a warm start and grid points drawn twice (nothing
    ran)."""
    trials = study.get_trials(deepcopy=False)
    # retry_history holds every ancestor (0 -> 1 -> 2 gives [0, 1]), not just the first.
    retried = {n for t in trials for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
    return sum(
        1
        for t in trials
        if not (t.state == TrialState.FAIL and t.number in retried)
        and attrs.CARRIED_FROM not in t.user_attrs
        and attrs.DUPLICATE_OF not in t.user_attrs
    )


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
            user_attrs={
                attrs.REQUEUED_BECAUSE: reason,
                # A seed confirmation stays one: the same trial it repeats, the same seed.
                **{
                    k: trial.user_attrs[k]
                    for k in (attrs.CONFIRMS, attrs.SEED)
                    if k in trial.user_attrs
                },
            },
            system_attrs=system_attrs,
        )
    )
