"""`tuner plan`: what a study will cost before it runs, and the one cache decision it needs.

A study's trials are enumerated (a grid's points, or for other samplers `budget` random draws
of its space, seeded), and each distinct *cost signature* (model, head, loss, frozen depth,
adapter, crop, batch, device...) is timed once on this device by `tuner.core.cost`. The
feature cache's policy is replayed on counts (`tuner.core.cache.simulate`), in the order the
trials run, under the cache's limit: that gives each trial's hits, and so its time.

**The cache decision.** When the study's features do not fit its limit, the cache would write
a lot and hit little (Cityscapes vit_b at 1024²: 18.7 GB per view of the training set against
20 GiB). The plan then chooses, before the first trial, what to store, trying in order: the
views as configured, then bounded `aug_views` K (fewer distinct views per image, reused
across epochs), each first in the configured storage dtype and then in int8 (per-token scales:
half of float16). It keeps the first choice whose replay hits at least 90 % of what an
unlimited cache would; it prefers more distinct views over precision. A shallower cut is never
a choice: a ViT's tokens are the same size after every block, so only the neck (used when the
whole encoder is frozen) is smaller. The choice is printed, stored on the study and applied to
every trial that caches a frozen prefix.

Time assumes every trial runs all its epochs (pruning, which stops some early, is not foreseen).
It is an estimate from timed steps, not a bound: the `adapters` study ran longer than planned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from tuner.core.cache import DEFAULT_LIMIT, Codec
from tuner.core.cache._simulate import Read, TrialOutcome, simulate
from tuner.core.config import TrainConfig
from tuner.core.cost import DataShape, TrialCost, measure_trial
from tuner.core.data.transforms import view_number
from tuner.core.errors import UserError
from tuner.search.space import SearchSpace

RANDOM_DRAWS = 10  # trials planned for a space with no budget (a timeout, or none)
GOOD_ENOUGH = 0.9  # of the hits an unlimited cache would give
UNLIMITED = 2**62  # a cache limit that nothing reaches
# Fields that change what a trial costs; the others (lr, seed, ...) change only its result.
COST_FIELDS = (
    "model",
    "head",
    "loss",
    "freeze_depth",
    "adapter",
    "lora_rank",
    "lora_targets",
    "convlora_experts",
    "adapter_dim",
    "sam_checkpoint",
    "batch_size",
    "micro_batch_size",
    "image_size",
    "cache",
    "compile",
    "device",
    "dtype",
    "threads",
)


@dataclass(frozen=True)
class CachePlan:
    """What the feature cache stores in this study: applied to every trial that caches."""

    aug_views: int | None  # None: as each trial's config says
    cache_dtype: str | None  # None: as configured
    reason: str

    @property
    def changes(self) -> bool:
        return self.aug_views is not None or self.cache_dtype is not None

    def apply(self, config: TrainConfig) -> TrainConfig:
        """The trial's config under this plan. Only trials that cache a frozen prefix (frozen
        blocks, no adapter on them, cache on) change."""
        caches = config.cache != "off" and config.freeze_depth > 0 and config.adapter == "none"
        if not (self.changes and caches):
            return config
        changes: dict[str, Any] = {}
        if self.cache_dtype is not None:
            changes["cache_dtype"] = self.cache_dtype
        if self.aug_views is not None and (
            config.aug_views is None or config.aug_views > self.aug_views
        ):
            changes["aug_views"] = self.aug_views
        return config.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CachePlan:
        return cls(**values)


@dataclass
class PlannedTrial:
    config: TrainConfig
    cost: TrialCost
    outcome: TrialOutcome | None = None  # cache hits and misses; None when nothing is cached
    seconds: float = 0.0
    confirmation: bool = False


@dataclass
class StudyPlan:
    study: str
    device: str
    data: DataShape
    limit: int
    jobs: int
    trials: list[PlannedTrial]
    cache: CachePlan
    cache_bytes_needed: int  # what an unlimited cache would hold at the end
    cache_bytes_held: int  # what the cache holds at the end under its limit
    keep_checkpoints: int | None
    enumerated: str  # how the trials were enumerated
    warnings: list[str] = field(default_factory=list)
    pareto: bool = False  # several objectives: the Pareto front keeps its weights, not K
    # Confirmation rolls on (tuner.search.confirm): when a confirmed configuration falls back,
    # the next one rises into the top and is confirmed in turn, up to every configuration.
    most_confirmations: int = 0
    most_seconds: float = 0.0  # every trial plus every configuration confirmed

    @property
    def seconds(self) -> float:
        return sum(t.seconds for t in self.trials)

    @property
    def wall_seconds(self) -> float:
        return self.seconds / max(1, self.jobs)

    def written_checkpoint_bytes(self, confirmation: bool = False) -> int:
        """Bytes of checkpoints the study (or its confirmation study) uploads over the run,
        before the best-K rule drops any: one per trial (pruned trials upload none)."""
        return sum(t.cost.checkpoint_bytes for t in self.trials if t.confirmation == confirmation)

    def kept_checkpoint_bytes(self, confirmation: bool = False) -> int:
        """Bytes of checkpoints the study (or its confirmation study) keeps at the end: its
        best K, taken as the K largest (an upper bound: which trials are best is not known)."""
        sizes = sorted(
            (t.cost.checkpoint_bytes for t in self.trials if t.confirmation == confirmation),
            reverse=True,
        )
        return sum(sizes[: self.keep_checkpoints] if self.keep_checkpoints else sizes)

    @property
    def checkpoint_bytes(self) -> int:
        """Bytes of checkpoints kept at the end, the study's and its confirmations'."""
        return self.kept_checkpoint_bytes(False) + self.kept_checkpoint_bytes(True)

    @property
    def hit_rate_after_first(self) -> float | None:
        """Feature reads served by the cache, over the trials after the first that cache."""
        outcomes = [t.outcome for t in self.trials if t.outcome is not None][1:]
        reads = sum(o.reads for o in outcomes)
        return sum(o.hits for o in outcomes) / reads if reads else None

    def lines(self) -> list[str]:
        """The summary `tuner plan` prints, and `tuner run` before its first trial."""
        costs = [t.cost for t in self.trials]
        per_trial = [t.seconds for t in self.trials]
        peak = max(costs, key=lambda c: c.peak_memory_bytes)
        main = [t for t in self.trials if not t.confirmation]
        confirmations = len(self.trials) - len(main)
        head = f"plan of study {self.study!r}: {len(main)} trial(s) ({self.enumerated})"
        if confirmations:
            head += f" + {confirmations} confirmation(s)"
            if self.most_confirmations > confirmations:
                head += f" (up to {self.most_confirmations} if confirmed ones fall back)"
        out = [
            f"{head}, {self.data.train_images} train / {len(self.data.val_sizes)} val images, "
            f"on {self.device}"
        ]
        time_line = (
            f"  time: {_duration(min(per_trial))}-{_duration(max(per_trial))} per trial, "
            f"{_duration(self.wall_seconds)} in all"
        )
        if self.jobs > 1:
            time_line += f" with {self.jobs} workers"
        if self.most_confirmations > confirmations:
            most = _duration(self.most_seconds / max(1, self.jobs))
            time_line += f" ({most} if every configuration is confirmed)"
        if self.device.startswith("cuda"):
            time_line += f" ({self.seconds / 3600:.2f} GPU-hours)"
        out.append(time_line + "; every epoch of every trial: pruning is not foreseen")
        cache = f"  feature cache: the trials compute {_bytes(self.cache_bytes_needed)} of features"
        if self.cache_bytes_needed:
            cache += (
                f", {_bytes(self.cache_bytes_held)} stay under the limit of {_bytes(self.limit)}"
            )
            rate = self.hit_rate_after_first
            if rate is not None:
                cache += f"; trials after the first read {rate:.0%} of their features from it"
        else:
            cache += " (nothing frozen is cached)"
        out.append(cache)
        if self.cache.changes:
            out.append(f"  cache plan: {self.cache.reason}")
        keep = self.keep_checkpoints
        out.append(
            f"  checkpoints: {_bytes(max(c.checkpoint_bytes for c in costs))} per trial at most "
            f"(the whole model: {_bytes(max(c.whole_model_bytes for c in costs))}), "
            f"{_bytes(self.written_checkpoint_bytes(False) + self.written_checkpoint_bytes(True))}"
            + (
                " written over the study; the Pareto front keeps its weights"
                if self.pareto and keep
                else f" written over the study, at most {_bytes(self.checkpoint_bytes)} kept"
                + (f" (the best {keep})" if keep else " (every trial)")
            )
        )
        out.append(f"  peak memory: {_bytes(peak.peak_memory_bytes)} ({peak.peak_memory_kind})")
        out += [f"  warning: {w}" for w in self.warnings]
        return out


def plan_study(
    space: SearchSpace,
    data: DataShape,
    device: torch.device,
    limit: int = DEFAULT_LIMIT,
    overrides: dict[str, Any] | None = None,
    jobs: int = 1,
    budget: int | None = None,
    chosen: CachePlan | None = None,
    budget_s: float = 2.0,
    log=None,
) -> StudyPlan:
    """The study's trials, timed and replayed against the cache (see the module docstring).
    `chosen` is a cache plan the study already made (a rerun keeps it)."""
    configs, how = study_configs(space, overrides or {}, budget)
    costs: dict[tuple, TrialCost] = {}
    for config in configs:
        signature = cost_signature(config)
        if signature not in costs:
            if log is not None:
                log(f"timing {describe_signature(config)} on {device} ...")
            try:
                costs[signature] = measure_trial(config, data, device, budget_s)
            except UserError:
                raise
            except Exception as exc:  # the trial would fail the same way: say where
                raise UserError(
                    f"could not time {describe_signature(config)}: {type(exc).__name__}: {exc}"
                ) from None
    confirmations = confirmation_configs(space, configs, costs)
    trials = [PlannedTrial(c, costs[cost_signature(c)]) for c in configs]
    trials += [PlannedTrial(c, costs[cost_signature(c)], confirmation=True) for c in confirmations]

    searched = {param.name for param in space.params}
    cache = chosen or choose_cache_plan(trials, data, limit, searched)
    replayed = replay(cache, trials, data, limit)
    for trial, outcome in zip(replayed.trials, replayed.limited):
        trial.outcome = outcome if trial.cost.prefix_cached else None
        trial.seconds = trial_seconds(trial, data)
    plan = StudyPlan(
        study=space.study,
        device=str(device),
        data=data,
        limit=limit,
        jobs=jobs,
        trials=replayed.trials,
        cache=cache,
        cache_bytes_needed=replayed.needed,
        cache_bytes_held=replayed.held,
        keep_checkpoints=space.keep_checkpoints,
        enumerated=how,
        pareto=space.multi_objective,
    )
    if space.confirm is not None:
        plan.most_confirmations, plan.most_seconds = _rolling_confirmations(plan, space)
    plan.warnings = warnings(plan, replayed)
    return plan


def _rolling_confirmations(plan: StudyPlan, space: SearchSpace) -> tuple[int, float]:
    """How many confirmation runs, and how many seconds in all, if every configuration rises
    into the top in turn: each distinct one re-run `seeds` times at its own trial's cost."""
    searched = [t for t in plan.trials if not t.confirmation]
    first = [searched[i] for i in _first_of_each([t.config for t in searched])]
    seeds = space.confirm.seeds
    seconds = sum(t.seconds for t in searched) + seeds * sum(t.seconds for t in first)
    return len(first) * seeds, seconds


def _first_of_each(configs: list[TrainConfig]) -> list[int]:
    """Indices of each distinct configuration's first occurrence (a grid may repeat points)."""
    return [i for i, config in enumerate(configs) if config not in configs[:i]]


def study_configs(
    space: SearchSpace, overrides: dict[str, Any], budget: int | None
) -> tuple[list[TrainConfig], str]:
    """The configurations the study will train, in order, and how they were found."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line
    if space.sampler["name"] == "grid":
        points = space.points()
        count = budget or len(points)
        configs = [
            space.sample(optuna.trial.FixedTrial(points[i % len(points)], number=i), overrides)
            for i in range(count)
        ]
        return configs, f"the grid's {len(points)} points"
    count = budget or space.trial_budget or RANDOM_DRAWS
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [space.sample(study.ask(), overrides) for _ in range(count)]
    return configs, f"{count} random draws of the space"


def confirmation_configs(
    space: SearchSpace, configs: list[TrainConfig], costs: dict[tuple, TrialCost]
) -> list[TrainConfig]:
    """`confirm: {top, seeds}` re-runs the best configurations, which no plan can know; it
    assumes the costliest ones (an upper bound): those that cache features first, each with
    its own cached prefix where there are several, then by checkpoint bytes."""
    if space.confirm is None:
        return []

    def weight(config: TrainConfig) -> tuple:
        cost = costs[cost_signature(config)]
        return (cost.prefix_cached, cost.checkpoint_bytes, cost.step_seconds)

    distinct = [configs[i] for i in _first_of_each(configs)]
    ranked = sorted(distinct, key=weight, reverse=True)
    chosen: list[TrainConfig] = []
    for config in ranked:  # one per cached prefix first ...
        if _prefix(config) not in {_prefix(c) for c in chosen}:
            chosen.append(config)
    chosen += [c for c in ranked if c not in chosen]  # ... then the rest, costliest first
    chosen = chosen[: space.confirm.top]
    return [
        config.replace(seed=config.seed + offset)
        for config in chosen
        for offset in range(1, space.confirm.seeds + 1)
    ]


def _prefix(config: TrainConfig) -> tuple:
    return (config.freeze_depth, config.adapter, tuple(config.image_size))


def cost_signature(config: TrainConfig) -> tuple:
    return tuple(repr(getattr(config, name)) for name in COST_FIELDS)


def describe_signature(config: TrainConfig) -> str:
    return (
        f"{config.model}/{config.head}, loss={config.loss}, freeze_depth={config.freeze_depth}, "
        f"adapter={config.adapter}, {config.image_size[0]}x{config.image_size[1]}, "
        f"batch {config.batch_size}"
    )


def reads_of(trial: PlannedTrial, data: DataShape) -> list[Read]:
    """The feature reads of one trial, epoch by epoch: its training views, then the
    validation windows. Empty when the trial caches nothing."""
    config, cost = trial.config, trial.cost
    if not cost.prefix_cached:
        return []
    entry = Codec.of(config.cache_dtype).entry_bytes(cost.feature_shape)
    prefix = (config.model, config.sam_checkpoint, config.freeze_depth, tuple(config.image_size))
    prefix += (config.cache_dtype, config.dtype)
    augment = (config.seed, config.scale_range, config.hflip, config.color_jitter)
    train_key, val_key = f"train:{(*prefix, *augment)!r}", f"val:{prefix!r}"
    windows = data.val_windows(config.image_size)
    reads = []
    for epoch in range(config.epochs):
        view = view_number(epoch, config.aug_views)
        read = data.train_images // config.batch_size * config.batch_size  # drop_last
        reads.append(Read(train_key, view, read, entry))
        reads.append(Read(val_key, "windows", windows, entry))
    return reads


def trial_seconds(trial: PlannedTrial, data: DataShape) -> float:
    """Build; per epoch the steps, every label, and per training view either a hit (a read)
    or a miss (decode, augment, prefix, write); per evaluation every window and image, and
    the misses' prefix and writes; the latency measurement once."""
    config, cost = trial.config, trial.cost
    steps = data.train_images // config.batch_size
    windows = data.val_windows(config.image_size) * config.epochs
    views = data.train_images * config.epochs
    seconds = cost.build_seconds + steps * config.epochs * cost.step_seconds
    seconds += views * cost.label_seconds
    seconds += windows * cost.window_seconds + len(data.val_sizes) * config.epochs * (
        cost.val_image_seconds
    )
    if trial.outcome is not None:
        train_misses = sum(trial.outcome.misses_by_set.get(k, 0) for k in _train_sets(trial))
        val_misses = trial.outcome.misses - train_misses
        miss = cost.prefix_seconds + cost.write_seconds
        seconds += train_misses * (miss + cost.load_seconds)
        seconds += (views - train_misses) * cost.read_seconds
        seconds += val_misses * miss + (windows - val_misses) * cost.read_seconds
    else:  # every view decoded, and a frozen prefix (cache off) run per image
        seconds += views * (cost.load_seconds + cost.prefix_seconds)
    seconds += 13 * (cost.window_seconds + cost.prefix_seconds)  # latency, once per trial
    return seconds


def _train_sets(trial: PlannedTrial) -> list[str]:
    return [k for k in trial.outcome.misses_by_set if k.startswith("train:")]


def choose_cache_plan(
    trials: list[PlannedTrial], data: DataShape, limit: int, searched: set[str] = frozenset()
) -> CachePlan:
    """The first candidate (most distinct views, then most precise) whose replay hits at
    least 90 % of an unlimited cache's hits; as configured when that fits. A field the space
    searches (`aug_views`, `cache_dtype`) is the sampler's, never changed here."""
    cached = [t for t in trials if t.cost.prefix_cached]
    if not cached:
        return CachePlan(None, None, "nothing frozen is cached")
    epochs = max(t.config.epochs for t in cached)
    configured = max((t.config.aug_views or t.config.epochs) for t in cached)
    dtypes = [None, "int8"] if any(t.config.cache_dtype != "int8" for t in cached) else [None]
    if "cache_dtype" in searched:
        dtypes = [None]
    views_tried = range(min(configured, epochs), 0, -1)
    if "aug_views" in searched:
        views_tried = [configured]
    best: tuple[float, CachePlan] | None = None
    as_configured = None
    for views in views_tried:
        for dtype in dtypes:
            bound = None if views == configured else views
            candidate = CachePlan(bound, dtype, "")
            replayed = replay(candidate, trials, data, limit)
            ratio, stored = replayed.ratio, replayed.needed
            as_configured = ratio if as_configured is None else as_configured
            if ratio >= GOOD_ENOUGH:
                reason = _reason(candidate, stored, limit, ratio, as_configured)
                return dataclasses.replace(candidate, reason=reason)
            if best is None or ratio > best[0]:
                best = (ratio, candidate)
    ratio, candidate = best
    return dataclasses.replace(
        candidate,
        reason=_reason(candidate, 0, limit, ratio, as_configured)
        + "; even this leaves the cache thrashing: raise --cache-limit",
    )


@dataclass
class Replay:
    """A cache plan applied to the trials, replayed under the limit and without one."""

    trials: list[PlannedTrial]  # each with its config under the plan
    limited: list[TrialOutcome]
    held: int  # bytes the limited cache holds at the end
    unlimited: list[TrialOutcome]
    needed: int  # bytes an unlimited cache holds at the end

    @property
    def ratio(self) -> float:
        """Hits under the limit over an unlimited cache's hits (1 when there are none)."""
        ideal = sum(o.hits for o in self.unlimited)
        return sum(o.hits for o in self.limited) / ideal if ideal else 1.0


def replay(cache: CachePlan, trials: list[PlannedTrial], data: DataShape, limit: int) -> Replay:
    planned = [dataclasses.replace(t, config=cache.apply(t.config)) for t in trials]
    reads = [reads_of(t, data) for t in planned]
    limited, held = simulate(reads, limit)
    unlimited, needed = simulate(reads, UNLIMITED)
    return Replay(planned, limited, held, unlimited, needed)


def _reason(
    candidate: CachePlan, stored: int, limit: int, ratio: float, as_configured: float
) -> str:
    if not candidate.changes:
        return f"the study's features fit: {_bytes(stored)} under {_bytes(limit)}"
    parts = []
    if candidate.aug_views is not None:
        parts.append(f"aug_views: {candidate.aug_views} (views reused across epochs)")
    if candidate.cache_dtype is not None:
        parts.append(f"cache_dtype: {candidate.cache_dtype}")
    return (
        f"the features as configured overflow {_bytes(limit)}, so trials that cache use "
        f"{', '.join(parts)}: {ratio:.0%} of an unlimited cache's hits (as configured: "
        f"{as_configured:.0%})"
    )


def warnings(plan: StudyPlan, replayed: Replay) -> list[str]:
    """One line for each thing that will not fit."""
    out = []
    if replayed.ratio < GOOD_ENOUGH:
        out.append(
            f"the feature cache will serve {replayed.ratio:.0%} of the hits an unlimited one "
            f"would: raise --cache-limit above {_bytes(plan.cache_bytes_needed)}"
        )
    if plan.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(torch.device(plan.device)).total_memory
        peak = max(t.cost.peak_memory_bytes for t in plan.trials)
        if peak > 0.9 * total:
            out.append(
                f"peak GPU memory {_bytes(peak)} is over 90 % of {_bytes(total)}: set "
                "micro_batch_size"
            )
    return out


def _bytes(count: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"
