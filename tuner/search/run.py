"""`tuner run`: drive a study with one or more worker processes until its budget is spent.

Budget. A search space's `trials` is the number of trials the *study* should hold in all,
shared by every worker on every machine: a rerun continues an interrupted study and does
nothing more once it is complete. `--trials N` instead asks this invocation (all its --jobs
workers together) for N more trials. Failed trials count, except ones that were retried (a
killed worker's trial, an interrupted trial): only their retry counts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from tuner.core import paths
from tuner.core.cache import FeatureCache
from tuner.core.config import TrainConfig, coerce_field
from tuner.core.cost import DataShape
from tuner.core.data import synth
from tuner.core.environment import cpu_count, resolve_device
from tuner.core.errors import UserError
from tuner.core.model import resolve_model
from tuner.core.model.backbone import scratch_variant
from tuner.search import attrs
from tuner.search.confirm import enqueue_confirmations, open_confirmation_study, standings
from tuner.search.objective import TrialRunner
from tuner.search.plan import CachePlan, StudyPlan, plan_study
from tuner.search.preflight import preflight
from tuner.search.space import SearchSpace, WarmStart, find_space, load_space
from tuner.search.study import (
    KeepBestCheckpoints,
    counted_trials,
    load_existing_study,
    open_artifact_store,
    open_storage,
    open_study,
    trials_to_run,
)
from tuner.search.warm import warm_start
from tuner.search.worker import (
    WorkerSpec,
    join_processes,
    optimize,
    start_processes,
    work,
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
    from_scratch: bool = False  # sam_tiny from random weights instead of the shipped stand-in
    device: str | None = None
    threads: int | None = None
    jobs: int = 1
    progress: bool = True
    cache_limit: str | None = None  # size limit of the feature cache (default 20G)
    cache_plan: bool = True  # False: store features as configured even when they overflow
    space: SearchSpace | None = None  # a space built in code (a recording grid), not a file
    warm_start: str | None = None  # an earlier study to start from (over the space's warm_start)


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
    cache_plan: CachePlan | None = None  # what trials store in the feature cache (tuner plan)


def load_run_space(options: RunOptions) -> SearchSpace:
    if options.space is not None:
        return options.space
    space = load_space(find_space(options.study, options.space_file))
    if space.study != options.study:  # --study names the study; --space only says what varies
        space = dataclasses.replace(space, study=options.study)
    return space


def plan(options: RunOptions) -> list[WorkerPlan]:
    """Everything checked and resolved before the first trial: a mistake stops here, before
    the study is created or a trial runs."""
    space = load_run_space(options)
    FeatureCache.at(paths.cache_dir(), options.cache_limit)  # a bad --cache-limit is an error now
    model = _run_model(options, space)
    data_root = _data_root(options, space)
    preflight(space, Path(data_root))
    storage = open_storage(options.storage)
    study = open_study(space, storage, options.artifacts)
    study.set_user_attr(attrs.DATA_ROOT, str(Path(data_root).resolve()))
    if options.trials is not None:
        budget: int | None = counted_trials(study) + options.trials
    else:
        budget = space.trial_budget
    jobs = options.jobs
    if jobs < 1 or (options.threads is not None and options.threads < 1):
        raise UserError("--jobs and --threads must be at least 1")
    devices = _worker_devices(options.device, jobs)
    threads = _worker_threads(options)
    return [
        WorkerPlan(options, space, data_root, budget, i, devices[i], threads, model)
        for i in range(jobs)
    ]


def project(
    options: RunOptions,
    assume: tuple[int, int] | None = None,
    assume_size: tuple[int, int] = (1024, 2048),
    settings: dict | None = None,
    log=print,
) -> StudyPlan:
    """`tuner plan`: the study's cost on this device, nothing run. `assume` (train, val) stands
    for data that is not here, as images of `assume_size`; `settings` override every trial's
    config (TrainConfig fields, checked)."""
    space = load_run_space(options)
    for key in settings or {}:
        if key not in TrainConfig.field_names():
            raise UserError(
                f"--set {key}: unknown key; expected one of {', '.join(TrainConfig.field_names())}"
            )
    overrides = {k: coerce_field(k, v, "--set") for k, v in (settings or {}).items()}
    run_values = {
        "sam_checkpoint": options.checkpoint,
        "model": _run_model(options, space),
        "device": options.device,
        "threads": _worker_threads(options),
    }
    overrides |= {k: v for k, v in run_values.items() if v is not None}
    if assume is not None:
        data = DataShape.assumed(*assume, size=assume_size)
    else:
        fixed = TrainConfig.from_dict({**space.fixed, **overrides}, source=space.source)
        data = DataShape.of(Path(_data_root(options, space)), fixed.train_limit, fixed.val_limit)
    return plan_study(
        space,
        data,
        resolve_device(options.device or "auto"),
        FeatureCache.at(paths.cache_dir(), options.cache_limit).limit,
        overrides=overrides,
        jobs=options.jobs,
        budget=options.trials,
        log=log,
    )


def _run_model(options: RunOptions, space: SearchSpace) -> str | None:
    """The model every trial uses by this run's flags: --checkpoint's variant (read from its
    tensor shapes), --from-scratch's random-weights variant, or None (the space's own)."""
    if options.checkpoint and options.from_scratch:
        raise UserError("--checkpoint and --from-scratch exclude each other")
    if options.checkpoint:
        return resolve_model(TrainConfig(sam_checkpoint=options.checkpoint)).model
    if options.from_scratch:
        return _scratch_model(space)
    return None


def _data_root(options: RunOptions, space: SearchSpace) -> str:
    """--data, else the space's embedded synthetic set (built once)."""
    return options.data_root or str(synth.embedded(paths.data_dir(), space.synthetic))


def _worker_threads(options: RunOptions) -> int | None:
    """--threads, else the cores shared out among --jobs workers (None: all, for one)."""
    return options.threads or (max(1, cpu_count() // options.jobs) if options.jobs > 1 else None)


def _scratch_model(space: SearchSpace) -> str:
    """--from-scratch: the space's one model, as its random-weights variant."""
    if any(p.name == "model" for p in space.params):
        raise UserError(
            f"--from-scratch: {space.source} varies the model; list sam_tiny_scratch among its "
            "choices instead"
        )
    return scratch_variant(space.fixed.get("model", TrainConfig().model))


def _worker_devices(device: str | None, jobs: int) -> list[str | None]:
    """One GPU per worker where there are enough; otherwise all share the asked device."""
    if device in ("cuda", "auto", None) and jobs > 1:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count > 1:
            return [f"cuda:{i % count}" for i in range(jobs)]
    return [device] * jobs


def run(options: RunOptions) -> optuna.Study:
    """Run the study to its budget (or timeout) and return it. A run whose trials all failed
    is an error that says why, not a leaderboard of failures with exit status 0."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    plans = plan(options)
    start_warm(plans[0])
    cache_plan = announce_plan(plans[0])
    plans = [dataclasses.replace(p, cache_plan=cache_plan) for p in plans]
    storage = open_storage(options.storage)
    before = len(optuna.load_study(study_name=options.study, storage=storage).trials)
    if len(plans) == 1:
        run_worker(plans[0])
    else:
        join_processes(start_processes(run_worker, plans))
    if plans[0].space.confirm is not None:
        run_confirmations(plans[0])
    study = optuna.load_study(study_name=options.study, storage=storage)
    started = [t for t in study.trials if t.number >= before]
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    if started and not any(t.state in finished for t in started):
        first = next((t for t in started if t.state == TrialState.FAIL), started[0])
        reason = first.user_attrs.get(attrs.FAIL_REASON, first.state.name)
        raise UserError(
            f"study {options.study!r}: none of the {len(started)} trial(s) this run started "
            f"completed; trial {first.number}: {reason}"
        )
    return study


def run_worker(plan: WorkerPlan) -> None:
    """One worker of `tuner run`: the shared loop (`tuner.search.worker`), training trials."""
    work(worker_spec(plan), lambda study, prefix: trial_runner(plan, study, prefix))


def worker_spec(plan: WorkerPlan) -> WorkerSpec:
    options, space = plan.options, plan.space
    return WorkerSpec(
        space=space,
        storage=options.storage,
        artifacts=options.artifacts,
        budget=plan.budget,
        index=plan.index,
        jobs=options.jobs,
        timeout=options.timeout if options.timeout is not None else space.timeout,
        more_trials=options.trials is not None,
    )


def start_warm(plan: WorkerPlan) -> None:
    """--warm-start NAME (or the space's warm_start:), once, before any trial."""
    options, space = plan.options, plan.space
    name = options.warm_start or (space.warm_start.study if space.warm_start else None)
    if name is None:
        return
    storage = open_storage(options.storage)
    earlier = load_existing_study(name, storage)
    study = open_study(space, storage, options.artifacts)
    top = space.warm_start.top if space.warm_start else WarmStart.top
    print(warm_start(study, space, earlier, top))


def run_overrides(plan: WorkerPlan) -> dict:
    """What this run sets in every trial's config, over the space's values."""
    values = {
        "sam_checkpoint": plan.options.checkpoint,
        "model": plan.model,
        "device": plan.device,
        "threads": plan.threads,
    }
    return {k: v for k, v in values.items() if v is not None}


def announce_plan(worker: WorkerPlan) -> CachePlan | None:
    """`tuner plan`'s summary before the first trial, and the cache decision the study keeps
    (made once: a rerun or another machine applies the stored one)."""
    options, space = worker.options, worker.space
    study = open_study(space, open_storage(options.storage), options.artifacts)
    remaining = None if worker.budget is None else trials_to_run(study, worker.budget)
    stored = study.user_attrs.get(attrs.CACHE_PLAN)
    chosen = CachePlan.from_dict(stored) if stored else None
    if chosen is None and not options.cache_plan:
        chosen = CachePlan(None, None, "as configured (--cache-as-configured)")
    if remaining == 0:
        return chosen
    fixed = TrainConfig.from_dict(space.fixed, source=space.source)
    try:
        summary = plan_study(
            space,
            DataShape.of(Path(worker.data_root), fixed.train_limit, fixed.val_limit),
            resolve_device(worker.device or "auto"),
            FeatureCache.at(paths.cache_dir(), options.cache_limit).limit,
            overrides=run_overrides(worker),
            jobs=options.jobs,
            budget=remaining,
            chosen=chosen,
            budget_s=0.5,
        )
    except UserError as exc:  # the trials will meet the same problem and record it
        print(f"plan of study {space.study!r} not made: {exc}")
        return chosen
    for line in summary.lines():
        print(line)
    if stored is None:
        study.set_user_attr(attrs.CACHE_PLAN, summary.cache.to_dict())
    return summary.cache


def trial_runner(plan: WorkerPlan, study: optuna.Study, prefix: str) -> TrialRunner:
    options = plan.options
    overrides = run_overrides(plan)
    work_dir = paths.home() / "tmp"
    work_dir.mkdir(parents=True, exist_ok=True)
    return TrialRunner(
        space=plan.space,
        data_root=Path(plan.data_root),
        artifact_store=open_artifact_store(study.user_attrs.get(attrs.ARTIFACT_STORE)),
        overrides=overrides,
        cache=FeatureCache.at(paths.cache_dir(), options.cache_limit),
        cache_plan=plan.cache_plan,
        work_dir=work_dir,
        progress=options.progress and options.jobs == 1,
        prefix=prefix,
    )


def run_confirmations(plan: WorkerPlan) -> None:
    """After the budget: the best configurations again with other seeds (tuner.search.confirm)."""
    options, space = plan.options, plan.space
    storage = open_storage(options.storage, space.fault_tolerance)
    study = open_study(space, storage, options.artifacts)
    confirm = open_confirmation_study(study, storage)
    optuna.storages.fail_stale_trials(confirm)
    runner = trial_runner(plan, confirm, "[confirm] ")
    while waiting := enqueue_confirmations(study, confirm, space):
        print(
            f"confirming the {space.confirm.top} best configuration(s) with "
            f"{space.confirm.seeds} more seed(s) each: {waiting} trial(s) in "
            f"{confirm.study_name!r}"
        )
        optimize(confirm, runner, n_trials=waiting)
    # Now the ranking is by the mean over seeds: keep the weights of its best K.
    ranked = [standing.trial for standing in standings(study)]
    KeepBestCheckpoints(space.keep_checkpoints, runner.artifact_store).prune(study, ranked)
