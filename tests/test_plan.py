"""`tuner plan`: its projections against what `tuner run` then writes, the cache decision it
makes when the features overflow the limit, and the replay of the cache's policy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import main
from tuner.core import paths
from tuner.core.cache import Codec, FeatureCache
from tuner.core.cache._simulate import Read, simulate
from tuner.core.config import TrainConfig
from tuner.core.cost import DataShape, TrialCost
from tuner.search import attrs
from tuner.search.plan import PlannedTrial, choose_cache_plan
from tuner.search.run import RunOptions, project, run
from tuner.search.space import find_space

SMALL = {"epochs": 2, "batch_size": 2, "image_size": [64, 128]}


def shrunk_space(study: str, tmp_path: Path, **extra) -> Path:
    """A shipped space at test size: the same grid, losses, depths, confirmation and keep
    rule, with 2 epochs at 64x128 on the tiny data set."""
    raw = yaml.safe_load(find_space(study).read_text())
    raw["fixed"].update(SMALL)
    raw.update(extra)
    path = tmp_path / f"{study}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def kept_checkpoint_bytes(study) -> int:
    folder = paths.default_artifact_dir()
    total = 0
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        artifact = trial.user_attrs.get(attrs.CHECKPOINT)
        dropped = f"{attrs.CHECKPOINT_DROPPED}{trial.number}" in study.user_attrs
        if artifact and not dropped:
            total += os.path.getsize(folder / artifact)
    return total


@pytest.mark.slow
@pytest.mark.parametrize("study", ["losses", "freeze"])
def test_projected_bytes_match_what_the_run_writes(study, tiny_data, tuner_home, tmp_path):
    # The shipped grid, frozen depths, losses and pruner (it cannot prune 2-epoch trials: its
    # warm-up is 2 epochs). Without the confirmations, whose configurations depend on the
    # results (the plan takes the costliest, an upper bound), and keeping every checkpoint,
    # so that what was written is all on disk.
    space = shrunk_space(study, tmp_path, keep_checkpoints=None)
    raw = yaml.safe_load(space.read_text())
    del raw["confirm"]
    space.write_text(yaml.safe_dump(raw))
    options = RunOptions(
        study=study, space_file=str(space), data_root=str(tiny_data), progress=False
    )
    plan = project(options, log=lambda m: None)
    result = run(options)
    assert len(result.get_trials(states=(TrialState.COMPLETE,))) == len(plan.trials)
    written = FeatureCache.at(paths.cache_dir()).usage().bytes
    assert written > 0
    assert abs(plan.cache_bytes_held - written) <= 0.1 * written
    uploaded = kept_checkpoint_bytes(result)
    assert abs(plan.written_checkpoint_bytes() - uploaded) <= 0.1 * uploaded


@pytest.mark.slow
def test_an_overflowing_cache_is_planned_not_thrashed(tiny_data, tuner_home, tmp_path):
    # The whole encoder frozen, 3 trials x 3 epochs, fresh views: one view-epoch of features
    # (training views and validation windows) is 1.4 times the limit, as Cityscapes vit_b at
    # 1024 against 20 GiB.
    space = shrunk_space(
        "losses",
        tmp_path,
        params={"loss": {"type": "categorical", "choices": ["ce", "dice", "focal"]}},
        pruner={"name": "none"},
    )
    raw = yaml.safe_load(space.read_text())
    raw["fixed"].update(freeze_depth=6, epochs=3, image_size=[128, 256])  # 1 window per image
    del raw["confirm"]
    space.write_text(yaml.safe_dump(raw))
    probe = project(RunOptions("losses", str(space), data_root=str(tiny_data)), log=print)
    shape = probe.trials[0].cost.feature_shape
    entries = probe.data.train_images + probe.data.val_windows((128, 256))
    limit = int(entries * Codec.of("float16").entry_bytes(shape) / 1.4)
    options = RunOptions(
        "losses", str(space), data_root=str(tiny_data), progress=False, cache_limit=str(limit)
    )
    plan = project(options, log=lambda m: None)
    assert plan.cache.changes and "overflow" in plan.cache.reason
    assert plan.cache.aug_views is not None  # one view of everything does not fit in float16
    study = run(options)
    assert study.user_attrs[attrs.CACHE_PLAN] == plan.cache.to_dict()
    trials = sorted(study.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    for trial in trials:
        config = trial.user_attrs[attrs.CONFIG]
        assert config["aug_views"] == plan.cache.aug_views
        assert config["cache_dtype"] == (plan.cache.cache_dtype or "float16")
    for trial in trials[1:]:
        cache = trial.user_attrs[attrs.CACHE]
        reads = sum(cache[k] for k in ("train_hits", "train_misses", "val_hits", "val_misses"))
        assert (cache["train_hits"] + cache["val_hits"]) / reads >= 0.9
    # Open sets draw credit of limit / 16 at a time, so the limit holds to within that.
    assert FeatureCache.at(paths.cache_dir(), limit).usage().bytes <= limit * 17 / 16


def fake_trial(epochs: int = 4) -> PlannedTrial:
    cost = TrialCost("cpu", True, (8, 4, 64), 1.0, 1.0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "RSS", 1)
    return PlannedTrial(TrainConfig(freeze_depth=6, epochs=epochs, image_size=(64, 64)), cost)


def test_the_decision_prefers_distinct_views_then_precision():
    data = DataShape.assumed(train=100, val=10, size=(64, 64))
    trials = [fake_trial() for _ in range(4)]
    fp16, int8 = 8 * 4 * 64 * 2 + 128, 8 * 4 * 66 + 128  # bytes per entry
    assert not choose_cache_plan(trials, data, limit=10**7).changes  # 4 views x 100 + 10 fit
    # int8 keeps the 4 fresh views, which float16 cannot.
    chosen = choose_cache_plan(trials, data, limit=410 * int8)
    assert (chosen.aug_views, chosen.cache_dtype) == (None, "int8")
    assert 410 * fp16 > 410 * int8
    # Less room: 3 views in int8 before 2 views in float16 (more distinct views first).
    chosen = choose_cache_plan(trials, data, limit=310 * int8)
    assert (chosen.aug_views, chosen.cache_dtype) == (3, "int8")
    # Not even one int8 view fits: the best there is, and it says so.
    chosen = choose_cache_plan(trials, data, limit=50 * int8)
    assert "thrashing" in chosen.reason


def test_the_replay_evicts_the_least_recently_used_set_not_in_use():
    a, b, c = ([Read(key, 0, 10, 100)] for key in "abc")  # 1000 bytes each
    # Room for two sets. a is read again after b, so c evicts b, the least recently used, and
    # not a, as the next reads show (a hits, b misses); b then evicts c, not a.
    outcomes, held = simulate([a, b, a, c, a, b, a], limit=2000)
    assert [o.hits for o in outcomes] == [0, 0, 10, 0, 10, 0, 10]
    assert held == 2000
    # A set in use stays even where only it could make room: the wide set stores half of
    # what it reads, and a is still whole in the next trial.
    wide = Read("wide", 0, 20, 100)
    outcomes, held = simulate([a, [*a, wide], a], limit=2000)
    assert [o.hits for o in outcomes] == [0, 10, 10]
    assert outcomes[1].misses_by_set == {"a": 0, "wide": 20} and held == 2000


def test_plan_command_for_data_that_is_not_here(tuner_home):
    result = CliRunner().invoke(
        main,
        [
            "plan",
            "--study",
            "smoke",
            "--assume-images",
            "40,4",
            "--assume-size",
            "128x256",
            "--set",
            "epochs=1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "40 train / 4 val images" in result.output
    for part in ("time:", "feature cache:", "checkpoints:", "peak memory:"):
        assert part in result.output
    bad = CliRunner().invoke(main, ["plan", "--study", "smoke", "--set", "epoch=3"])
    assert bad.exit_code == 2 and "epoch" in bad.output and "Traceback" not in bad.output


def test_checkpoint_bytes_are_projected_from_the_delta(tiny_config, tiny_data, tmp_path):
    from tuner.core.cost import checkpoint_bytes
    from tuner.core.data.cityscapes import CityscapesDataset
    from tuner.core.model import build_segmenter
    from tuner.core.train import fit

    for depth in (0, 4, 6):
        config = tiny_config.replace(freeze_depth=depth)
        projected = checkpoint_bytes(build_segmenter(config), config.model)
        summary = fit(
            config,
            CityscapesDataset(tiny_data, "train"),
            CityscapesDataset(tiny_data, "val"),
            out_dir=tmp_path / str(depth),
            progress=False,
            log=lambda m: None,
        )
        actual = summary.checkpoint.stat().st_size
        assert abs(projected - actual) <= 0.1 * actual, (depth, projected, actual)
    assert torch.get_default_dtype() == torch.float32


def test_the_plan_says_how_far_rolling_confirmations_can_go(tiny_data, tuner_home, tmp_path):
    # confirm: {top: 2, seeds: 1} plans 2 re-runs, but each confirmed configuration that falls
    # back lets the next one rise and be confirmed: up to every one of the 7 losses.
    space = shrunk_space("losses", tmp_path, pruner={"name": "none"})
    plan = project(RunOptions("losses", str(space), data_root=str(tiny_data)), log=None)
    planned = [t for t in plan.trials if t.confirmation]
    searched = [t for t in plan.trials if not t.confirmation]
    assert len(planned) == 2 and len(searched) == 7
    assert plan.most_confirmations == 7
    assert plan.most_seconds == pytest.approx(2 * sum(t.seconds for t in searched))
    text = "\n".join(plan.lines())
    assert "+ 2 confirmation(s) (up to 7 if confirmed ones fall back)" in text
    assert "if every configuration is confirmed" in text
