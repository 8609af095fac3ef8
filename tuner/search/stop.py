"""Study-level stopping: end a study once further trials are unlikely to beat its best.

The rule is a space's `stop: {patience: N, min_delta: interval}`: the study ends after N
finished trials in a row that did not beat the best by more than `min_delta`. By default that
margin is the best trial's own noise, the half-width of its 95 % bootstrap interval over the
validation images, so a "better" trial that is within the best one's noise does not keep the
study alive. (Optuna's own `optuna.terminator` is deprecated since Optuna 4.9 and leaves for
OptunaHub, which loads code from the network at run time, so the rule is written here.) The
callback records why it stopped, for `tuner run` to say::

    >>> import optuna
    >>> from tuner.search.space import Stop
    >>> study = optuna.create_study(direction="maximize")
    >>> for value in (0.30, 0.35, 0.351, 0.349, 0.352):
    ...     study.add_trial(optuna.trial.create_trial(value=value))
    >>> print(StudyStop(Stop(patience=3, min_delta=0.01)).reason(study))  # doctest: +ELLIPSIS
    stopped after 5 trials: the last 3 did not beat the best (0.3500, trial 1) by more than 0.01...
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.search import attrs
from tuner.search._space import Stop

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyStop:
    """Optuna callback: stops the study (and records why) when the space's `stop:` rule holds."""

    def __init__(self, stop: Stop) -> None:
        self.stop = stop

    def since_improvement(self, trials: list[FrozenTrial], direction) -> tuple[int, FrozenTrial]:
        """Finished trials since the best last moved by more than its margin, and the best."""
        sign = -1.0 if direction == optuna.study.StudyDirection.MINIMIZE else 1.0
        best: FrozenTrial | None = None
        since = 0
        for trial in sorted(trials, key=lambda t: t.number):
            if trial.state not in FINISHED:
                continue
            if trial.state == TrialState.COMPLETE and (
                best is None or sign * (trial.value - best.value) > self.margin(best)
            ):
                best, since = trial, 0
            else:
                since += 1
        return since, best

    def margin(self, best: FrozenTrial) -> float:
        if self.stop.min_delta != "interval":
            return float(self.stop.min_delta)
        interval = best.user_attrs.get(attrs.MIOU_CI)
        return (interval[1] - interval[0]) / 2 if interval else 0.0

    def reason(self, study: optuna.Study) -> str | None:
        """Why the study should stop now, or None."""
        trials = study.get_trials(deepcopy=False)
        finished = sum(1 for t in trials if t.state in FINISHED)
        since, best = self.since_improvement(trials, study.direction)
        if best is None or finished < self.stop.min_trials or since < self.stop.patience:
            return None
        how = "min_delta" if self.stop.min_delta != "interval" else "its 95 % interval half-width"
        return (
            f"stopped after {finished} trials: the last {self.stop.patience} did not beat the "
            f"best ({best.value:.4f}, trial {best.number}) by more than "
            f"{self.margin(best):.4f} ({how})"
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        reason = self.reason(study)
        if reason is not None:
            study.set_user_attr(attrs.STOPPED, reason)
            study.stop()
