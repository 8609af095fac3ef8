"""Search-space files: the shipped ones load, and every kind of mistake is named."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from tuner.core.errors import ConfigError
from tuner.search.space import SEARCH_SPACE_DIR, find_space, load_space, parse_space

VALID = {
    "study": "t",
    "objective": {"metric": "val_miou", "direction": "maximize"},
    "sampler": {"name": "tpe", "seed": 1},
    "pruner": {"name": "median"},
    "trials": 4,
    "fixed": {"model": "sam_tiny", "epochs": 1, "image_size": [64, 128]},
    "params": {
        "loss": {"type": "categorical", "choices": ["ce", "dice"]},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "freeze_depth": {"type": "int", "low": 0, "high": 6, "step": 2},
    },
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def with_change(path: tuple[str, ...], value) -> dict:
    data = yaml.safe_load(yaml.safe_dump(VALID))
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


DELETE = object()


@pytest.mark.parametrize(
    "name", ["smoke", "losses", "freeze", "heads", "lr_batch", "full", "edges"]
)
def test_shipped_spaces_load(name):
    space = load_space(find_space(name))
    assert space.study == name
    assert space.trial_budget and space.trial_budget >= 3


def test_every_shipped_space_that_ranks_configurations_confirms_its_best_two():
    """A single-objective space ranks configurations, so its top two get a second seed (the
    verdict says "ahead" only with 2 seeds on each side). `smoke` checks plumbing; a
    multi-objective space has a Pareto front, not a ranking."""
    for path in sorted(SEARCH_SPACE_DIR.glob("*.yaml")):
        space = load_space(path)
        if space.multi_objective or space.study == "smoke":
            continue
        assert space.confirm is not None, path.name
        assert space.confirm.top >= 2 and space.confirm.seeds >= 1, path.name


def test_losses_space_is_a_grid_over_every_loss():
    from tuner.core.losses import LOSSES

    space = load_space(SEARCH_SPACE_DIR / "losses.yaml")
    assert space.sampler["name"] == "grid"
    assert sorted(space.grid()["loss"]) == sorted(LOSSES)
    assert space.trial_budget == len(LOSSES)


def test_full_space_varies_all_five_dimensions():
    space = load_space(SEARCH_SPACE_DIR / "full.yaml")
    assert {p.name for p in space.params} == {"loss", "freeze_depth", "head", "lr", "batch_size"}


def test_sample_merges_fixed_and_params(tmp_path):
    space = load_space(write(tmp_path, VALID))
    trial = optuna.create_study().ask()
    config = space.sample(trial, {"device": "cpu"})
    assert config.model == "sam_tiny" and config.epochs == 1 and config.device == "cpu"
    assert config.loss in ("ce", "dice") and 1e-4 <= config.lr <= 1e-2
    assert config.freeze_depth in (0, 2, 4, 6)


@pytest.mark.parametrize(
    "change, message",
    [
        (("colour",), "unknown key colour"),
        (("fixed", "learning_rate"), "unknown key fixed.learning_rate"),
        (("params", "dropout"), "unknown key params.dropout"),
        (("fixed", "epochs"), "fixed: epochs='six': expected int"),
        (("params", "loss", "choices"), "params.loss.choices: expected a non-empty list"),
        (("params", "lr", "high"), "params.lr: low=0.0001 must be below high=1e-05"),
        (("params", "lr", "low"), "log scale needs low > 0"),
        (("params", "loss", "choices"), "loss='hinge': expected one of"),
        (("fixed", "head"), "head='fcn': expected one of"),
        (("params", "lr", "type"), "type='uniform': expected categorical, float or int"),
        (("sampler", "name"), "sampler.name='bayes': expected one of"),
        (("sampler", "n_trees"), "unknown key sampler.n_trees for tpe"),
        (("pruner", "name"), "pruner.name='early': expected one of"),
        (("trials",), "trials=0: expected a positive integer"),
        (("objective", "metric"), "metric='accuracy': expected one of"),
        (("objective", "direction"), "direction='up': expected maximize or minimize"),
        (("params", "freeze_depth", "type"), "freeze_depth is an integer field"),
        (("study",), "a study name may hold only letters"),
    ],
    ids=lambda v: v if isinstance(v, str) else ".".join(v),
)
def test_bad_yaml_is_named(tmp_path, change, message):
    values = {
        "colour": "blue",
        "learning_rate": 0.1,
        "dropout": {"type": "float", "low": 0, "high": 1},
        "epochs": "six",
        "choices": [],
        "high": 1e-5,
        "low": -1.0,
        "head": "fcn",
        "type": "uniform",
        "name": None,
        "n_trees": 3,
        "trials": 0,
        "metric": "accuracy",
        "direction": "up",
        "study": "",
    }
    value = values[change[-1]]
    if message.startswith("loss='hinge'"):
        value = ["ce", "hinge"]
    elif change == ("sampler", "name"):
        value = "bayes"
    elif change == ("pruner", "name"):
        value = "early"
    elif change == ("params", "freeze_depth", "type"):
        value = "float"
    path = write(tmp_path, with_change(change, value))
    with pytest.raises(ConfigError) as info:
        load_space(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_grid_needs_enumerable_params(tmp_path):
    data = with_change(("sampler",), {"name": "grid"})
    with pytest.raises(ConfigError, match="params.lr: the grid sampler needs categorical or int"):
        load_space(write(tmp_path, data))


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_space(bad)
    with pytest.raises(ConfigError, match="nope.yaml: search space file not found"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="no search space for study 'nope'.*losses"):
        find_space("nope")


def test_multi_objective_space(tmp_path):
    data = with_change(("objective",), DELETE)
    data["objectives"] = [{"metric": "val_miou"}, {"metric": "val_boundary_f1"}]
    data["sampler"] = {"name": "nsga2", "seed": 0}
    space = parse_space(data, "inline")
    assert space.multi_objective and space.directions == ["maximize", "maximize"]
