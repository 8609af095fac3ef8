"""A search that spends less: study-level stopping, warm start and the freeze ladder."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from test_search import FAST, invoke, load, space_file

from tuner.core.errors import ConfigError, UserError
from tuner.search import attrs
from tuner.search.ladder import RUNG, FreezeLadderSampler
from tuner.search.space import Stop, load_space
from tuner.search.stop import StudyStop
from tuner.search.study import counted_trials
from tuner.search.warm import warm_start

FULLISH = {
    "loss": {"type": "categorical", "choices": ["ce", "dice", "focal"]},
    "head": {"type": "categorical", "choices": ["linear", "conv"]},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
}


def finished(study: optuna.Study, value: float, interval: float | None = None, pruned=False):
    user_attrs = {attrs.MIOU_CI: [value - interval, value + interval]} if interval else {}
    if pruned:
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: value}))
    else:
        study.add_trial(create_trial(value=value, user_attrs=user_attrs))


# Study-level stopping ---------------------------------------------------------------------------
def test_gains_within_the_best_trials_noise_do_not_keep_the_study_alive():
    study = optuna.create_study(direction="maximize")
    stop = StudyStop(Stop(patience=3, min_delta="interval"))
    finished(study, 0.30, interval=0.02)
    finished(study, 0.31, interval=0.02)  # within 0.02 of the best: not an improvement
    finished(study, 0.10, pruned=True)
    assert stop.reason(study) is None
    finished(study, 0.315, interval=0.02)
    assert stop.reason(study).startswith(
        "stopped after 4 trials: the last 3 did not beat the best (0.3000, trial 0) by more than "
        "0.0200 (its 95 % interval half-width)"
    )
    finished(study, 0.40, interval=0.01)  # a real improvement resets the count
    assert stop.reason(study) is None


def test_a_fixed_margin_and_min_trials_and_minimisation():
    study = optuna.create_study(direction="minimize")
    stop = StudyStop(Stop(patience=1, min_delta=0.1, min_trials=3))
    finished(study, 1.0)
    finished(study, 0.95)
    assert stop.reason(study) is None  # only 2 trials finished
    finished(study, 0.5)  # 0.5 lower: an improvement when minimising
    finished(study, 0.45)
    assert "the last 1 did not beat the best (0.5000, trial 2) by more than 0.1000" in (
        stop.reason(study)
    )


def test_the_callback_stops_optimize_and_records_why():
    study = optuna.create_study(direction="maximize")
    study.optimize(
        lambda trial: 0.5,
        n_trials=50,
        callbacks=[StudyStop(Stop(patience=5, min_delta=0.0))],
    )
    assert len(study.trials) == 6
    assert study.user_attrs[attrs.STOPPED].startswith("stopped after 6 trials")


def test_a_stopped_study_is_not_resumed_by_a_rerun(tuner_home, tmp_path):
    path = space_file(
        tmp_path,
        "stops",
        {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        trials=5,
        stop={"patience": 1, "min_delta": 1.0},
    )
    first = invoke("run", "--study", "stops", "--space", str(path), "--no-report")
    assert "stopped after 2 trials: the last 1 did not beat the best" in first.output
    again = invoke("run", "--study", "stops", "--space", str(path), "--no-report")
    assert "pass --trials N to run N more" in again.output
    assert len(load(tuner_home, "stops").trials) == 2


@pytest.mark.parametrize(
    "stop, message",
    [
        ({"patience": 0}, r"stop.patience=0: expected a positive integer"),
        ({"patience": 3, "min_delta": "noise"}, r"stop.min_delta='noise': expected a number"),
        ({"patiance": 3}, "unknown key stop.patiance"),
        ("soon", "stop: expected a mapping"),
    ],
)
def test_a_bad_stop_section_is_named(tmp_path, stop, message):
    path = space_file(tmp_path, "bad", FULLISH, stop=stop)
    with pytest.raises(ConfigError, match=message):
        load_space(path)


# Warm start ------------------------------------------------------------------------------------
def earlier_study(fixed: dict, results: list[tuple[dict, float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="earlier")
    for values, value in results:
        config = {**fixed, **values}
        study.add_trial(create_trial(value=value, user_attrs={attrs.CONFIG: config}))
    return study


BASE = {k: v for k, v in FAST.items() if k != "head"}  # what the test spaces fix


def new_study(tmp_path, params=FULLISH, **extra):
    space = load_space(space_file(tmp_path, "new", params, **extra))
    return space, optuna.create_study(direction="maximize", study_name="new")


def test_same_fidelity_trials_are_added_and_do_not_count_against_the_budget(tmp_path):
    space, study = new_study(tmp_path)
    earlier = earlier_study(
        {**BASE, "head": "linear", "lr": 3e-3},
        [({"loss": "ce"}, 0.3), ({"loss": "dice"}, 0.4), ({"loss": "lovasz"}, 0.5)],
    )
    line = warm_start(study, space, earlier)
    assert line == (
        "warm start from 'earlier': 2 of its 3 completed trials added (same fidelity; they do "
        "not count against the budget)"
    )  # lovasz is not one of the new space's losses
    assert [t.params for t in study.trials] == [
        {"loss": "ce", "head": "linear", "lr": 3e-3},
        {"loss": "dice", "head": "linear", "lr": 3e-3},
    ]
    assert [t.value for t in study.trials] == [0.3, 0.4]
    assert study.trials[1].user_attrs[attrs.CARRIED_FROM] == "earlier#1"
    assert counted_trials(study) == 0
    assert warm_start(study, space, earlier).startswith("warm start: already done")
    assert len(study.trials) == 2


def test_another_fidelity_enqueues_the_best_distinct_configurations(tmp_path):
    space, study = new_study(tmp_path)
    earlier = earlier_study(
        {**BASE, "head": "conv", "lr": 1e-3, "epochs": 6},  # 6 epochs; the new space has 2
        [
            ({"loss": "ce"}, 0.3),
            ({"loss": "dice"}, 0.45),
            ({"loss": "dice"}, 0.44),
            ({"loss": "focal"}, 0.2),
        ],
    )
    line = warm_start(study, space, earlier, top=2)
    assert line.startswith("warm start from 'earlier': its 2 best configurations enqueued")
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"loss": "dice", "head": "conv", "lr": 1e-3},
        {"loss": "ce", "head": "conv", "lr": 1e-3},
    ]
    assert waiting[0].user_attrs[attrs.WARM_FROM] == "earlier#1"


def test_warm_start_refuses_what_cannot_be_carried(tmp_path):
    space, study = new_study(tmp_path)
    outside = earlier_study({**BASE, "head": "mask_decoder", "lr": 3e-3}, [({"loss": "ce"}, 0.3)])
    with pytest.raises(UserError, match="none of its 1 completed trials lies inside"):
        warm_start(study, space, outside)
    minimise = optuna.create_study(direction="minimize")
    with pytest.raises(UserError, match="direction differs"):
        warm_start(study, space, minimise)
    grid_space, grid_study = new_study(
        tmp_path,
        params={"loss": {"type": "categorical", "choices": ["ce"]}},
        sampler={"name": "grid"},
    )
    with pytest.raises(UserError, match="needs a sampler that learns"):
        warm_start(grid_study, grid_space, outside)


def test_run_warm_start_says_what_it_carried(tuner_home, tmp_path):
    lr = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
    first = space_file(tmp_path, "first", lr, trials=2)
    assert invoke("run", "--study", "first", "--space", str(first), "--no-report").exit_code == 0
    second = space_file(tmp_path, "second", lr, trials=1, fixed={"epochs": 1})
    result = invoke(
        "run", "--study", "second", "--space", str(second), "--warm-start", "first", "--no-report"
    )
    assert result.exit_code == 0, result.output
    assert "warm start from 'first': its 2 best configurations enqueued" in result.output
    best_first = load(tuner_home, "first").best_trial
    trials = load(tuner_home, "second").trials
    # The best earlier configuration runs first.
    assert trials[0].params == best_first.params and trials[0].state == TrialState.COMPLETE


# The freeze ladder -----------------------------------------------------------------------------
def ladder_objective(trial: optuna.Trial) -> float:
    depth = trial.suggest_int("freeze_depth", 0, 4, step=2)
    loss = trial.suggest_categorical("loss", ["ce", "dice", "focal", "lovasz"])
    return {"ce": 0.1, "dice": 0.4, "focal": 0.2, "lovasz": 0.3}[loss] - depth / 100


def test_the_ladder_starts_every_configuration_frozen_and_promotes_the_best():
    # A random base sampler: which configurations are new is not what is tested here.
    ladder = FreezeLadderSampler(eta=2, base=optuna.samplers.RandomSampler(seed=1))
    study = optuna.create_study(direction="maximize", sampler=ladder)
    study.optimize(ladder_objective, n_trials=16)
    rungs = [t.system_attrs[RUNG] for t in study.trials]
    depths = [t.params["freeze_depth"] for t in study.trials]
    assert [4 - 2 * r for r in rungs] == depths
    assert rungs[:2] == [0, 0]  # nothing to promote before two trials finished
    for trial in study.trials:  # a promoted configuration ran before, one rung cheaper
        if trial.system_attrs[RUNG] > 0:
            before = [
                t
                for t in study.trials[: trial.number]
                if t.params["loss"] == trial.params["loss"]
                and t.params["freeze_depth"] == trial.params["freeze_depth"] + 2
            ]
            assert before
    # The most promising configuration reached the least frozen rung.
    assert study.best_params == {"freeze_depth": 0, "loss": "dice"}


def test_the_ladder_leaves_enqueued_trials_alone_and_is_a_space_sampler(tmp_path):
    study = optuna.create_study(direction="maximize", sampler=FreezeLadderSampler(eta=2, seed=0))
    study.enqueue_trial({"freeze_depth": 0, "loss": "ce"})
    study.optimize(ladder_objective, n_trials=1)
    assert study.trials[0].params == {"freeze_depth": 0, "loss": "ce"}
    space = load_space(
        space_file(
            tmp_path,
            "ladder",
            {"freeze_depth": {"type": "int", "low": 0, "high": 4, "step": 2}},
            sampler={"name": "freeze_ladder", "eta": 3, "seed": 0},
        )
    )
    assert space.sampler == {"name": "freeze_ladder", "eta": 3, "seed": 0}
