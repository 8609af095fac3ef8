"""The worker loop of `tuner run`, apart from what a trial does.

A worker opens the study, takes a sampler seed of its own, fails and re-queues the trials of
dead workers, counts the shared budget, and runs trials until the budget or the space's stop:
rule ends it. What a trial does is the objective handed in: `tuner run` trains a model
(`tuner.search.objective.TrialRunner`); the load test `python -m bench workers` replays recorded
curves at a recorded pace. This module imports no torch, so dozens of stand-in workers fit in
memory and the loop under test is the loop users run.

    >>> import tempfile
    >>> from tuner.search.space import parse_space
    >>> space = parse_space({"study": "toy", "sampler": {"name": "random", "seed": 0},
    ...     "trials": 3, "params": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}, "toy")
    >>> class Objective:
    ...     space, artifact_store, current = space, None, None
    ...     def __call__(self, trial):
    ...         return trial.suggest_float("lr", 1e-3, 1e-2)
    >>> url = f"sqlite:///{tempfile.mkdtemp()}/toy.db"
    >>> work(WorkerSpec(space, url, budget=3), lambda study, prefix: Objective())
    >>> work(WorkerSpec(space, url, budget=3), lambda study, prefix: Objective())
    study 'toy' already holds 3 trials (budget 3); pass --trials N to run N more
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import optuna
from optuna.trial import FrozenTrial, TrialState

from tuner.core.errors import UserError
from tuner.search import attrs
from tuner.search.samplers import SAMPLERS, make_sampler, options_of
from tuner.search.space import SearchSpace
from tuner.search.stop import StudyStop
from tuner.search.study import (
    KeepBestCheckpoints,
    StopAtBudget,
    counted_trials,
    get_trial,
    open_storage,
    open_study,
    requeue,
    trials_to_run,
    waiting_trials,
)
from tuner.search.study.urls import is_sqlite


class Objective(Protocol):
    """What `work` runs per trial: an Optuna objective that says which trial is in flight
    (for Ctrl-C) and where its checkpoints go (None: it writes none)."""

    space: SearchSpace
    artifact_store: Any
    current: int | None

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]: ...


@dataclass(frozen=True)
class WorkerSpec:
    """One worker's share of a run, resolved by the launcher so that all workers agree."""

    space: SearchSpace
    storage: str | None  # a storage URL (None: the default SQLite file)
    artifacts: str | None = None
    budget: int | None = None  # trials the study should hold in all (None: no limit)
    index: int = 0
    jobs: int = 1  # workers started together (for the log prefix)
    timeout: float | None = None
    more_trials: bool = False  # --trials N: the study's stop: rule does not end this run

    @property
    def prefix(self) -> str:
        return f"[w{self.index}] " if self.jobs > 1 else ""


def work(
    spec: WorkerSpec,
    make_objective: Callable[[optuna.Study, str], Objective],
    callbacks: Sequence[Callable] = (),
) -> None:
    """Run trials of `spec.space`'s study until its budget, stop rule or timeout ends them.
    `callbacks` run after each trial, before the budget's."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, prefix = spec.space, spec.prefix
    storage = open_storage(spec.storage, space.fault_tolerance)
    study = open_study(space, storage, spec.artifacts)
    # A distinct, reproducible sampler seed per worker and per resume point, so that workers
    # and reruns do not replay the same random draws (duplicate trials).
    study.sampler = reseeded_sampler(space, study, spec.index, spec.storage)
    # Trials whose worker died (no heartbeat within the grace period) are failed and re-queued
    # now, before the budget is counted; Optuna also does this before every new trial.
    optuna.storages.fail_stale_trials(study)
    stop = StudyStop(space.stop) if space.stop is not None else None
    stopped = stop.reason(study) if stop is not None and not spec.more_trials else None
    if stopped is not None:
        print(f"{prefix}study {space.study!r} {stopped}; pass --trials N to run N more")
        return
    remaining = None if spec.budget is None else trials_to_run(study, spec.budget)
    if remaining == 0:
        print(
            f"{prefix}study {space.study!r} already holds {counted_trials(study)} trials "
            f"(budget {spec.budget}); pass --trials N to run N more"
        )
        return
    objective = make_objective(study, prefix)
    if SAMPLERS[space.sampler["name"]] is optuna.samplers.GridSampler and not space.enumerated:
        objective = OncePerGridPoint(objective)
    callbacks = [
        *callbacks,
        *([StopAtBudget(spec.budget)] if spec.budget is not None else []),
        *([stop] if stop is not None else []),
    ]
    while remaining != 0:
        optimize(study, objective, n_trials=remaining, timeout=spec.timeout, callbacks=callbacks)
        # GridSampler stops the study once every point was drawn, though retries of killed
        # trials may still wait in the queue: run those too (not after a timeout or stop rule).
        if spec.timeout is not None or attrs.STOPPED in study.user_attrs:
            break
        remaining = waiting_trials(study)
        if spec.budget is not None:
            remaining = min(remaining, trials_to_run(study, spec.budget))
    if attrs.STOPPED in study.user_attrs and stop is not None:
        print(f"{prefix}study {space.study!r} {study.user_attrs[attrs.STOPPED]}")


SETTLE_S = 10.0  # how long a trial waits for earlier trials to draw their grid points


class DuplicateGridPoint(Exception):
    """The trial drew a grid point that an earlier trial holds (see `OncePerGridPoint`)."""


class OncePerGridPoint:
    """Every grid point runs once, however many workers share the grid.

    Optuna's GridSampler draws an unvisited point per trial, but workers that ask at the same
    moment can draw the same one (so can a fresh draw and a queued retry). So a trial first
    looks for an earlier-numbered trial with its params that is queued, running or finished;
    if there is one, it ends at once as a FAIL marked `attrs.DUPLICATE_OF`, which uses no
    budget. Earlier numbers win, so of two trials that drew one point exactly one goes on."""

    HOLDING = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.space, self.artifact_store = objective.space, objective.artifact_store

    @property
    def current(self) -> int | None:
        return self.objective.current

    def __call__(self, trial: optuna.Trial) -> float | Sequence[float]:
        trials = self.settled(trial)
        point = grid_point(next(t for t in trials if t.number == trial.number))
        holder = next(
            (
                t.number
                for t in trials
                if t.number < trial.number and t.state in self.HOLDING and grid_point(t) == point
            ),
            None,
        )
        if holder is not None:
            self.objective.current = trial.number
            reason = f"grid point drawn again; trial {holder} holds it"
            trial.set_user_attr(attrs.DUPLICATE_OF, holder)
            trial.set_user_attr(attrs.FAIL_REASON, reason)
            raise DuplicateGridPoint(reason)
        return self.objective(trial)

    def settled(self, trial: optuna.Trial) -> list[FrozenTrial]:
        """The study's trials once every earlier running one has its grid point: a trial is
        created before its point is drawn, and an earlier trial that drew this point a moment
        after this one looked would otherwise run it too. A worker that died in that moment
        leaves no point; after SETTLE_S this trial goes on regardless."""
        deadline = time.monotonic() + SETTLE_S
        while True:
            trials = trial.study.get_trials(deepcopy=False)
            undrawn = any(
                t.number < trial.number and t.state == TrialState.RUNNING and not grid_point(t)
                for t in trials
            )
            if not undrawn or time.monotonic() > deadline:
                return trials
            time.sleep(0.05)


def grid_point(trial: FrozenTrial) -> tuple:
    """Which grid point a trial runs: GridSampler's grid id (set before the objective runs;
    a retry carries its original's), else its params (an enqueued point)."""
    grid_id = trial.system_attrs.get("grid_id")
    if grid_id is not None:
        return ("grid_id", grid_id)
    return tuple(sorted(trial.params.items()))  # empty: not drawn yet


def optimize(study: optuna.Study, objective: Objective, callbacks=(), **kwargs) -> None:
    """study.optimize, where Ctrl-C queues the interrupted trial again with the same params,
    the weights of trials outside the best `keep_checkpoints` are dropped as trials end, and a
    trial failed under a live worker (its heartbeats were lost longer than the grace period,
    and another worker retried it) costs that one trial, not the worker."""
    callbacks = list(callbacks)
    confirmed_later = objective.space.confirm is not None and (
        attrs.CONFIRMS_STUDY not in study.user_attrs
    )
    # With confirmations, the best K are known only after them.
    if objective.artifact_store is not None and not confirmed_later:
        keep = objective.space.keep_checkpoints
        callbacks.append(KeepBestCheckpoints(keep, objective.artifact_store))
    n_trials = kwargs.pop("n_trials", None)
    timeout = kwargs.pop("timeout", None)
    deadline = None if timeout is None else time.monotonic() + timeout
    told: list[int] = []  # trials this worker ended and told (their callbacks ran)
    callbacks.append(lambda study, trial: told.append(trial.number))
    while True:
        before = len(told)
        try:
            study.optimize(
                objective,
                n_trials=n_trials,
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
                catch=(Exception,),
                gc_after_trial=True,
                callbacks=callbacks,
                **kwargs,
            )
            return
        except Exception:
            # Telling a trial that another worker failed meanwhile (its heartbeats did not
            # reach the storage within the grace period) raises inside Optuna; its retry runs.
            # Only that: the trial in flight, never told, now FAIL; anything else is raised.
            number = objective.current
            if number is None or number in told:
                raise
            if get_trial(study, number).state != TrialState.FAIL:
                raise
            told.append(number)  # handled: the same error again is not this case
            print(
                f"trial {number} was failed and retried elsewhere while it ran here (its "
                "heartbeats did not reach the storage in time); going on"
            )
            if n_trials is not None:
                n_trials -= len(told) - before
                if n_trials <= 0:
                    return
        except KeyboardInterrupt:
            if objective.current is not None:
                trial = get_trial(study, objective.current)
                if trial.state == TrialState.FAIL:
                    requeue(study, trial, reason="interrupted")
            raise


def sampler_seed(base: int, trials_so_far: int, index: int, machine_shared: bool) -> int:
    """Reproducible for one machine (same history, same worker -> same seed); on a storage other
    machines may share (not SQLite), the host and process enter too, so that machines started
    together do not draw the same configurations."""
    seed = base + 7919 * index + trials_so_far
    if machine_shared:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    return seed % 2**32


def reseeded_sampler(space: SearchSpace, study: optuna.Study, index: int, storage_url):
    """The space's sampler with a seed of its own for this worker and resume point. The grid
    sampler keeps its seed: it fixes the order of the grid, which all workers must share."""
    cls = SAMPLERS[space.sampler["name"]]
    seed = space.sampler.get("seed", 0)
    grid = cls is optuna.samplers.GridSampler
    if grid or "seed" not in options_of(cls) or seed is None:
        return make_sampler(space.sampler, space.grid, space.enumerated)
    shared = storage_url is not None and not is_sqlite(storage_url)
    seed = sampler_seed(int(seed), len(study.get_trials(deepcopy=False)), index, shared)
    return make_sampler({**space.sampler, "seed": seed}, space.grid)


def start_processes(target: Callable, specs: Sequence[Any]) -> list[mp.Process]:
    """One fresh interpreter per spec (spawn: no forked torch thread pools or database
    connections), named w0, w1, ..."""
    context = mp.get_context("spawn")
    workers = [
        context.Process(target=target, args=(spec,), name=f"w{i}") for i, spec in enumerate(specs)
    ]
    for worker in workers:
        worker.start()
    return workers


def join_processes(workers: Sequence[mp.Process]) -> None:
    """Wait for every worker; one that failed is an error naming it."""
    try:
        for worker in workers:
            worker.join()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the workers too; let each record and re-queue its trial.
        for worker in workers:
            worker.join(timeout=60)
        raise
    failed = [f"{w.name} (status {w.exitcode})" for w in workers if w.exitcode != 0]
    if failed:
        raise UserError(f"workers {', '.join(failed)} failed; their output is above")
