"""Learning-curve tables: recorded by `tuner record-curves`, replayed as an Optuna objective."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState
from test_search import invoke, load, space_file

from tuner.core.errors import ConfigError
from tuner.search.curves import COST, Curve, CurveTable, ReplayObjective, restricted
from tuner.search.samplers import make_pruner, make_sampler
from tuner.search.space import load_space
from tuner.search.stop import StudyStop

# Four configurations; the encoder fully trained (no feature cache: every run computes the
# same features, so a recorded run and a real one are the same computation).
PARAMS = {
    "loss": {"type": "categorical", "choices": ["ce", "dice"]},
    "lr": {"type": "categorical", "choices": [1.0e-3, 3.0e-2]},
}
RECORD = {"seeds": 1, "fixed": {}, "levels": {}}
SEARCH = {
    "sampler": {"name": "tpe", "seed": 3, "n_startup_trials": 2},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
    "trials": 6,
    "fixed": {"epochs": 3, "freeze_depth": 0, "cache": "off"},
    "stop": {"patience": 4, "min_delta": 0.5},
}


def toy_table() -> CurveTable:
    levels = {"loss": ["ce", "dice"], "lr": [0.001, 0.01]}
    curves = []
    for i, (loss, lr) in enumerate((a, b) for a in levels["loss"] for b in levels["lr"]):
        for seed in (0, 1):
            value = round(0.1 * (i + 1) + 0.01 * seed, 5)  # as a saved table holds them
            miou = (round(value / 2, 5), value)
            curves.append(Curve({"loss": loss, "lr": lr}, seed, miou, (0.5, 0.5), (1.0, 2.0)))
    return CurveTable("toy", levels, [0, 1], curves)


def test_replay_gives_the_same_study_as_a_real_one(tuner_home, tmp_path, capsys):
    """Record a 4-configuration table, run the real study, replay it with the same sampler and
    pruner: the same params in the same order, the same values and pruning, the same stop."""
    path = space_file(tmp_path, "four", PARAMS, record=RECORD, **SEARCH)
    result = invoke("record-curves", "--study", "four", "--space", str(path))
    assert result.exit_code == 0, result.output
    assert "4 configurations x 1 seeds x 3 epochs" in result.output
    table = CurveTable.load(tuner_home / "four.curves.json")
    assert len(table.curves) == 4 and table.epochs == 3

    result = invoke("run", "--study", "four", "--space", str(path), "--no-report")
    assert result.exit_code == 0, result.output
    real = load(tuner_home, "four")
    space = load_space(path)
    replay = optuna.create_study(
        direction="maximize",
        sampler=make_sampler(space.sampler, space.grid),
        pruner=make_pruner(space.pruner),
    )
    replay.optimize(
        ReplayObjective(table, space), n_trials=space.trials, callbacks=[StudyStop(space.stop)]
    )

    def seen(study):  # the table keeps 5 decimals
        return [
            (t.params, t.state, {k: round(v, 4) for k, v in t.intermediate_values.items()})
            for t in study.trials
        ]

    assert seen(replay) == seen(real)
    assert [t.value for t in replay.trials] == pytest.approx(
        [t.value for t in real.trials], abs=1e-5
    )
    # The stop rule ended both before the budget of 6, and the run said why.
    assert len(real.trials) == len(replay.trials) == 5
    assert "stopped after 5 trials: the last 4 did not beat the best" in result.output


def test_replay_reads_epoch_by_epoch_and_charges_what_it_read():
    table = toy_table()
    pruned_after_one = type("P", (optuna.pruners.BasePruner,), {"prune": lambda *a: True})()
    study = optuna.create_study(direction="maximize", pruner=pruned_after_one)
    study.enqueue_trial({"loss": "dice", "lr": 0.01})
    study.optimize(ReplayObjective(table, seed=1), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == pytest.approx(
        {1: 0.205}
    )
    assert trial.user_attrs[COST] == 1.0  # the first epoch only
    assert table.mean_value({"loss": "dice", "lr": 0.01}) == pytest.approx(0.405)
    assert table.grid_cost() == 12.0 and table.best_mean() == pytest.approx(0.405)


def test_a_continuous_param_snaps_to_the_nearest_recorded_level(tmp_path):
    table = toy_table()
    path = space_file(
        tmp_path,
        "snap",
        {
            "loss": {"type": "categorical", "choices": ["ce", "dice", "focal"]},
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        },
    )
    space = restricted(load_space(path), table)
    assert space.params[0].choices == ("ce", "dice")  # focal was not recorded
    assert (space.params[1].low, space.params[1].high) == (0.001, 0.01)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"loss": "ce", "lr": 0.0025})  # nearer 1e-3 than 1e-2 on a log scale
    study.enqueue_trial({"loss": "ce", "lr": 0.0045})
    study.optimize(ReplayObjective(table, space), n_trials=2)
    assert [t.user_attrs["replayed"]["lr"] for t in study.trials] == [0.001, 0.01]


def test_a_slice_of_the_table_is_a_smaller_grid():
    piece = toy_table().where(lr=0.01)
    assert piece.levels == {"loss": ["ce", "dice"]}
    assert piece.configurations() == [{"loss": "ce"}, {"loss": "dice"}]
    with pytest.raises(ConfigError, match="no run has"):
        toy_table().where(lr=0.5)


def test_table_round_trips_and_bad_tables_are_refused(tmp_path):
    table = toy_table()
    path = table.save(tmp_path / "t.json")
    again = CurveTable.load(path)
    assert again.curves == table.curves and again.levels == table.levels
    raw = json.loads(path.read_text())
    raw["runs"] = raw["runs"][1:]  # one run missing: the grid is incomplete
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"t\.json: no run of .* with seed 0"):
        CurveTable.load(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ConfigError, match="not a learning-curve table"):
        CurveTable.load(path)
    with pytest.raises(ConfigError, match="not found"):
        CurveTable.load(tmp_path / "absent.json")


@pytest.mark.parametrize(
    "record, message",
    [
        ({"levels": {}}, "record.levels.lr: lr is continuous; list the values to record"),
        ({"levels": {"lr": [0.5]}}, r"record.levels.lr: 0.5 is outside \[0.0001, 0.01\]"),
        ({"levels": {"lr": [1e-3], "loss": ["xent"]}}, "'xent' is not one of its choices"),
        ({"levels": {"lr": [1e-3]}, "fixed": {"lr": 1}}, "record.fixed.lr: varies in the table"),
        ({"levels": {"lr": [1e-3]}, "seeds": 0}, "record.seeds=0: expected a positive integer"),
        ({"levels": {"lr": [1e-3], "epochs": [2]}}, "unknown key record.levels.epochs"),
    ],
)
def test_a_bad_record_section_is_one_line_naming_the_key(tmp_path, record, message):
    params = {
        "loss": {"type": "categorical", "choices": ["ce", "dice"]},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    path = space_file(tmp_path, "bad", params, record=record)
    with pytest.raises(ConfigError, match=message):
        load_space(path)


def test_the_shipped_table_covers_the_full_space_grid():
    """bench/data/full.curves.json: what README and bench/README.md quote."""
    from bench.search import TABLE

    table = CurveTable.load(TABLE)
    space = load_space("search_spaces/full.yaml")
    assert len(table.configurations()) >= 150 and len(table.seeds) == 2
    assert set(table.levels) == {p.name for p in space.params}
    assert TABLE.stat().st_size < 2_000_000
    restricted(space, table)  # every param of the space has recorded levels
