"""Which search strategy finds the best configuration for the least compute, replayed on the
recorded learning-curve table (bench/data/full.curves.json, `tuner record-curves --study full`).

Every trial reads its configuration's recorded curve epoch by epoch (`ReplayObjective`) and
pays the seconds those epochs took when recorded. Search seed s reads the curves of recorded
seed s mod 2, so half the searches see one seed's noise and half the other's; a configuration's
true value is its mean over both seeds.

- `full`: the shipped `full` space, narrowed to the table's levels, searched by each strategy
  until it has spent one grid pass (every configuration once, all epochs). Per strategy, over
  the search seeds: the cost to get within EPSILON of the best mean (the incumbent is the best
  *observed* trial; its regret is measured on the *true* value), and the regret after 25, 50
  and 100 % of a grid pass.
- `grid`: the shape of the grid spaces (`losses`: 7 losses, one trial each): every 7-loss slice
  of the table run as a grid, with each pruner; what each saves and what it loses.
- `stop`: the chosen `full` strategy with a `stop:` rule against without: trials saved, regret
  added.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from bench.common import machine
from tuner.search.curves import COST, RUN, CurveTable, ReplayObjective, restricted
from tuner.search.samplers import make_pruner, make_sampler
from tuner.search.space import SEARCH_SPACE_DIR, Stop, load_space
from tuner.search.stop import StudyStop
from tuner.search.warm import warm_start

TABLE = Path(__file__).parent / "data" / "full.curves.json"
EPSILON = 0.005
BUDGETS = (0.25, 0.5, 1.0)
WARM_TRIALS = 24  # trials of the earlier, 1-epoch study a warm start learns from
PATIENCES = (10, 20)


@dataclass(frozen=True)
class Strategy:
    sampler: dict[str, Any]
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    warm: bool = False  # start from the best of a 1-epoch study (a cheaper fidelity)


def strategies(epochs: int) -> dict[str, Strategy]:
    tpe = {"name": "tpe", "n_startup_trials": 8, "multivariate": True}
    return {
        "random": Strategy({"name": "random"}),
        "tpe": Strategy(tpe),
        "tpe+median": Strategy(tpe, {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1}),
        "tpe+hyperband": Strategy(
            tpe,
            {"name": "hyperband", "min_resource": 1, "max_resource": epochs, "reduction_factor": 3},
        ),
        "tpe+successive_halving": Strategy(
            tpe, {"name": "successive_halving", "min_resource": 1, "reduction_factor": 3}
        ),
        "gp": Strategy({"name": "gp", "n_startup_trials": 8}),
        "freeze_ladder": Strategy({"name": "freeze_ladder", "eta": 3, "n_startup_trials": 8}),
        "freeze_ladder+median": Strategy(
            {"name": "freeze_ladder", "eta": 3, "n_startup_trials": 8},
            {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1},
        ),
        "tpe, warm-started": Strategy(tpe, warm=True),
    }


def grid_pruners(epochs: int) -> dict[str, dict[str, Any]]:
    """The pruners a grid space could ship, scaled to the table's epochs."""
    return {
        "none": {"name": "none"},
        "median": {"name": "median", "n_startup_trials": 3, "n_warmup_steps": max(1, epochs // 3)},
        "successive_halving": {
            "name": "successive_halving",
            "min_resource": 1,
            "reduction_factor": 3,
        },
        "hyperband": {
            "name": "hyperband",
            "min_resource": 1,
            "max_resource": epochs,
            "reduction_factor": 3,
        },
    }


class Budget:
    """Stops the study once its trials have spent `seconds`; keeps the running cost."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.spent = seconds, 0.0

    def __call__(self, study: optuna.Study, trial) -> None:
        self.spent += trial.user_attrs.get(COST, 0.0)
        if self.spent >= self.seconds:
            study.stop()


@dataclass
class Trajectory:
    """After each trial: the cost so far and the true value of the incumbent."""

    costs: list[float]
    values: list[float]
    trials: int
    warm_cost: float = 0.0

    def value_at(self, seconds: float) -> float:
        """The incumbent's true value once `seconds` are spent (-inf: none yet)."""
        value = -math.inf
        for cost, incumbent in zip(self.costs, self.values):
            if cost > seconds:
                break
            value = incumbent
        return value

    def cost_to(self, target: float) -> float:
        return next((c for c, v in zip(self.costs, self.values) if v >= target), math.inf)


def trajectory(study: optuna.Study, table: CurveTable, warm_cost: float = 0.0) -> Trajectory:
    costs, values = [], []
    spent, best_seen, incumbent = warm_cost, -math.inf, -math.inf
    for trial in sorted(study.trials, key=lambda t: t.number):
        spent += trial.user_attrs.get(COST, 0.0)
        if trial.state == optuna.trial.TrialState.COMPLETE and trial.value > best_seen:
            best_seen = trial.value
            incumbent = table.mean_value(trial.user_attrs[RUN])
        costs.append(spent)
        values.append(incumbent)
    return Trajectory(costs, values, len(study.trials), warm_cost)


def search(job: tuple) -> Trajectory:
    """One search: `strategy` with search seed `seed` until `budget_s` is spent."""
    table, space, strategy, seed, budget_s, stop = job
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    recorded = table.seeds[seed % len(table.seeds)]
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler({**strategy.sampler, "seed": seed}, space.grid),
        pruner=make_pruner(strategy.pruner),
    )
    warm_cost = 0.0
    if strategy.warm:
        earlier = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=10_000 + seed)
        )
        earlier.optimize(ReplayObjective(table, space, recorded, epochs=1), n_trials=WARM_TRIALS)
        warm_cost = sum(t.user_attrs[COST] for t in earlier.trials)
        warm_start(study, space, earlier, top=3, fidelity_matches=False)
    callbacks = [Budget(budget_s)]
    if stop is not None:
        callbacks.append(StudyStop(stop))
    study.optimize(
        ReplayObjective(table, space, recorded),
        n_trials=20 * len(table.configurations()),
        callbacks=callbacks,
    )
    return trajectory(study, table, warm_cost)


def summary(runs: list[Trajectory], table: CurveTable, grid_s: float) -> dict[str, Any]:
    best = table.best_mean()
    costs = sorted(r.cost_to(best - EPSILON) / grid_s for r in runs)
    reached = sum(math.isfinite(c) for c in costs)
    out: dict[str, Any] = {
        "cost_to_epsilon_median": _fraction(statistics.median(costs)),
        "reached": f"{reached}/{len(runs)}",
        "regret_median": {
            f"{int(b * 100)}%": round(
                statistics.median(_regret(r, best, b * grid_s) for r in runs), 4
            )
            for b in BUDGETS
        },
        "regret_mean": {
            f"{int(b * 100)}%": round(
                statistics.mean(_regret(r, best, b * grid_s) for r in runs), 4
            )
            for b in BUDGETS
        },
        "trials_median": statistics.median(r.trials for r in runs),
    }
    if any(r.warm_cost for r in runs):  # the costs above include the earlier study's
        out["warm_up_cost"] = round(statistics.median(r.warm_cost for r in runs) / grid_s, 4)
        out["cost_to_epsilon_median_without_warm_up"] = _fraction(
            statistics.median((r.cost_to(best - EPSILON) - r.warm_cost) / grid_s for r in runs)
        )
    return out


def _per_budget(average, runs: list[Trajectory], best: float, grid_s: float) -> dict:
    return {
        f"{int(b * 100)}%": round(average([_regret(r, best, b * grid_s) for r in runs]), 4)
        for b in BUDGETS
    }


def _regret(run: Trajectory, best: float, seconds: float) -> float:
    value = run.value_at(seconds)
    return best - value if math.isfinite(value) else best


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


def _fraction(value: float) -> float | None:
    """A share of one grid pass; None: not reached within the budget."""
    return round(value, 4) if math.isfinite(value) else None


def grid_shape(table: CurveTable, seeds: int, epochs: int) -> dict[str, Any]:
    """Every slice of the table that is a `losses`-shaped grid, run with each pruner."""
    names = [k for k in table.levels if k != "loss"]
    slices = [table.where(**dict(zip(names, point))) for point in _product(table, names)]
    out = {}
    for label, pruner in grid_pruners(epochs).items():
        spent, full, regrets, found = 0.0, 0.0, [], 0
        for piece in slices:
            best = piece.best_mean()
            for seed in range(seeds):
                recorded = piece.seeds[seed % len(piece.seeds)]
                study = optuna.create_study(
                    direction="maximize",
                    sampler=optuna.samplers.GridSampler(dict(piece.levels), seed=seed),
                    pruner=make_pruner(pruner),
                )
                study.optimize(
                    ReplayObjective(piece, None, recorded), n_trials=len(piece.configurations())
                )
                spent += sum(t.user_attrs[COST] for t in study.trials)
                full += sum(piece.curve(p, recorded).cost() for p in piece.configurations())
                regret = best - trajectory(study, piece).values[-1]
                regrets.append(regret)
                found += regret <= EPSILON
        out[label] = {
            "cost_share": round(spent / full, 4),
            "regret_mean": round(statistics.mean(regrets), 4),
            "within_epsilon": f"{found}/{len(regrets)}",
        }
    out["slices"] = len(slices)
    return out


def _product(table: CurveTable, names: list[str]) -> list[tuple]:
    points: list[tuple] = [()]
    for name in names:
        points = [(*p, v) for p in points for v in table.levels[name]]
    return points


def run(quick: bool = False, table_path: Path = TABLE) -> dict:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    table = CurveTable.load(table_path)
    space = restricted(load_space(SEARCH_SPACE_DIR / "full.yaml"), table)
    grid_s = table.grid_cost()
    seeds = 2 if quick else 30
    budget = (0.25 if quick else 1.0) * grid_s
    chosen_strategies = strategies(table.epochs)
    if quick:
        chosen_strategies = {
            k: chosen_strategies[k] for k in ("random", "freeze_ladder", "tpe, warm-started")
        }
    jobs = [
        (name, (table, space, strategy, seed, budget, None))
        for name, strategy in chosen_strategies.items()
        for seed in range(seeds)
    ]
    with mp.get_context("spawn").Pool(min(len(jobs), mp.cpu_count())) as pool:
        results = pool.map(search, [job for _, job in jobs])
    by_strategy: dict[str, list[Trajectory]] = {}
    for (name, _), result in zip(jobs, results):
        by_strategy.setdefault(name, []).append(result)
    full = {name: summary(runs, table, grid_s) for name, runs in by_strategy.items()}
    ranked = sorted(
        full,
        key=lambda n: (_or_inf(full[n]["cost_to_epsilon_median"]), full[n]["regret_mean"]["50%"]),
    )
    winner = ranked[0]
    best = table.best_mean()
    stops = {}
    for patience in PATIENCES[:1] if quick else PATIENCES:
        rule = Stop(patience=patience, min_delta="interval")
        with mp.get_context("spawn").Pool(mp.cpu_count()) as pool:
            stopped = pool.map(
                search,
                [(table, space, chosen_strategies[winner], s, budget, rule) for s in range(seeds)],
            )
        unstopped = by_strategy[winner]
        stops[f"patience {patience}"] = {
            "trials_median": statistics.median(r.trials for r in stopped),
            "trials_saved_median": statistics.median(
                u.trials - s.trials for u, s in zip(unstopped, stopped)
            ),
            "cost_share_median": round(statistics.median(s.costs[-1] / grid_s for s in stopped), 4),
            "regret_added_mean": round(
                statistics.mean(
                    (best - s.values[-1]) - _regret(u, best, budget)
                    for u, s in zip(unstopped, stopped)
                ),
                4,
            ),
        }
    grid = grid_shape(table, 3 if quick else seeds, table.epochs)
    # The cheapest pruner that loses at most a fifth of EPSILON of mean regret against none.
    tolerable = grid["none"]["regret_mean"] + EPSILON / 5
    pruners = [k for k in grid_pruners(table.epochs) if grid[k]["regret_mean"] <= tolerable]
    grid_choice = min(pruners, key=lambda k: grid[k]["cost_share"])
    return {
        "machine": machine(),
        "table": {
            "path": str(table_path),
            "configurations": len(table.configurations()),
            "seeds": table.seeds,
            "epochs": table.epochs,
            "fidelity": table.fidelity,
            "recorded_on": table.recorded_on,
            "grid_pass_seconds": round(grid_s, 1),
            "best_mean": round(best, 4),
        },
        "epsilon": EPSILON,
        "search_seeds": seeds,
        "budget": "one grid pass" if not quick else "25 % of one grid pass",
        "full": full,
        "ranking": ranked,
        "stop": {"strategy": winner, **stops},
        "grid": grid,
        "chosen": {"full": winner, "grid_pruner": grid_choice},
    }
