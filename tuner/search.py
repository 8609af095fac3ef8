"""`tuner run`: drive a study with one or more worker processes until its budget is spent.

Budget. A search space's `trials` is the number of trials the *study* should hold in all,
shared by every worker on every machine: a rerun continues an interrupted study and does
nothing more once it is complete. `--trials N` instead asks this invocation (all its --jobs
workers together) for N more trials. Failed trials count, except ones that were retried (a
killed worker's trial, an interrupted trial): only their retry counts.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path

import optuna

from tuner import paths
from tuner.config import TrainConfig
from tuner.errors import UserError
from tuner.hardware import cpu_count
from tuner.model import resolve_model
from tuner.objective import TrialRunner
from tuner.space import SearchSpace, find_space, load_space
from tuner.study import (
    StopAtBudget,
    counted_trials,
    get_trial,
    open_artifact_store,
    open_storage,
    open_study,
    requeue,
    trials_to_run,
)


@dataclass
class RunOptions:
    study: str
    space_file: str | None = None
    trials: int | None = None  # N more trials in this invocation (default: the space's total)
    timeout: float | None = None
    storage: str | None = None
    artifacts: str | None = None
    data_root: str | None = None
    checkpoint: str | None = None
    device: str | None = None
    threads: int | None = None
    jobs: int = 1
    progress: bool = True
    cache_limit: str | None = None  # size limit of the feature cache (default 20G)


@dataclass
class WorkerPlan:
    """What one worker needs, resolved once by the launcher so all workers agree."""

    options: RunOptions
    space: SearchSpace
    data_root: str
    budget: int | None
    index: int = 0
    device: str | None = None
    threads: int | None = None
    model: str | None = None  # the variant of --checkpoint, read from its tensor shapes


def load_run_space(options: RunOptions) -> SearchSpace:
    space = load_space(find_space(options.study, options.space_file))
    if space.study != options.study:  # --study names the study; --space only says what varies
        space = dataclasses.replace(space, study=options.study)
    return space


def plan(options: RunOptions) -> list[WorkerPlan]:
    space = load_run_space(options)
    data_root = options.data_root or str(paths.synthetic_data(space.synthetic))
    storage = open_storage(options.storage)
    study = open_study(space, storage, options.artifacts)
    study.set_user_attr("data_root", str(Path(data_root).resolve()))
    if options.trials is not None:
        budget: int | None = counted_trials(study) + options.trials
    else:
        budget = space.trial_budget
    jobs = max(1, options.jobs)
    devices = _worker_devices(options.device, jobs)
    threads = options.threads or (max(1, cpu_count() // jobs) if jobs > 1 else None)
    model = None
    if options.checkpoint:
        model = resolve_model(TrainConfig(sam_checkpoint=options.checkpoint)).model
    return [
        WorkerPlan(options, space, data_root, budget, i, devices[i], threads, model)
        for i in range(jobs)
    ]


def _worker_devices(device: str | None, jobs: int) -> list[str | None]:
    """One GPU per worker where there are enough; otherwise all share the asked device."""
    if device in ("cuda", "auto", None) and jobs > 1:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1:
            return [f"cuda:{i % count}" for i in range(jobs)]
    return [device] * jobs


def run(options: RunOptions) -> optuna.Study:
    """Run the study to its budget (or timeout) and return it."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    plans = plan(options)
    if len(plans) == 1:
        run_worker(plans[0])
    else:
        _run_processes(plans)
    return optuna.load_study(study_name=options.study, storage=open_storage(options.storage))


def _run_processes(plans: list[WorkerPlan]) -> None:
    context = mp.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    workers = [context.Process(target=run_worker, args=(p,), name=f"w{p.index}") for p in plans]
    for worker in workers:
        worker.start()
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


def run_worker(plan: WorkerPlan) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    options, space = plan.options, plan.space
    storage = open_storage(options.storage, space.fault_tolerance)
    study = open_study(space, storage, options.artifacts)
    # A distinct, reproducible sampler seed per worker and per resume point, so that workers
    # and reruns do not replay the same random draws (duplicate trials).
    study.sampler = _reseeded_sampler(space, study, plan.index, options.storage)
    prefix = f"[w{plan.index}] " if options.jobs > 1 else ""
    # Trials whose worker died (no heartbeat within the grace period) are failed and re-queued
    # now, before the budget is counted; Optuna also does this before every new trial.
    optuna.storages.fail_stale_trials(study)
    remaining = None if plan.budget is None else trials_to_run(study, plan.budget)
    if remaining == 0:
        print(
            f"{prefix}study {space.study!r} already holds {counted_trials(study)} trials "
            f"(budget {plan.budget}); pass --trials N to run N more"
        )
        return
    overrides = {
        k: v
        for k, v in {
            "sam_checkpoint": options.checkpoint,
            "model": plan.model,
            "device": plan.device,
            "threads": plan.threads,
        }.items()
        if v is not None
    }
    work_dir = paths.home() / "tmp"
    work_dir.mkdir(parents=True, exist_ok=True)
    runner = TrialRunner(
        space=space,
        data_root=Path(plan.data_root),
        artifact_store=open_artifact_store(study.user_attrs.get("artifact_store")),
        overrides=overrides,
        cache=paths.feature_cache(options.cache_limit),
        work_dir=work_dir,
        progress=options.progress and options.jobs == 1,
        prefix=prefix,
    )
    try:
        study.optimize(
            runner,
            n_trials=remaining,
            timeout=options.timeout if options.timeout is not None else space.timeout,
            callbacks=[StopAtBudget(plan.budget)] if plan.budget is not None else [],
            catch=(Exception,),
            gc_after_trial=True,
        )
    except KeyboardInterrupt:
        if runner.current is not None:
            trial = get_trial(study, runner.current)
            if trial.state == optuna.trial.TrialState.FAIL:
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


def _reseeded_sampler(space: SearchSpace, study: optuna.Study, index: int, storage_url):
    from tuner.study import SEEDED, make_sampler

    # The grid sampler's seed fixes the order of the grid, which all workers must share.
    name = space.sampler["name"]
    if name == "grid" or name not in SEEDED or space.sampler.get("seed", 0) is None:
        return make_sampler(space)
    shared = storage_url is not None and not storage_url.startswith("sqlite")
    seed = sampler_seed(
        int(space.sampler.get("seed", 0)), len(study.get_trials(deepcopy=False)), index, shared
    )
    return make_sampler(dataclasses.replace(space, sampler={**space.sampler, "seed": seed}))
