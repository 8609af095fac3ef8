"""Decisions you can trust: bootstrap intervals, paired verdicts, seed confirmation, the
INT8-aware choice and per-trial latency."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tuner.cli import main
from tuner.core.metrics import SegmentationMetrics
from tuner.core.stats import PerImage, bootstrap, miou, paired_difference
from tuner.search import attrs
from tuner.search.study import load_existing_study, open_storage


def per_image(predictions, truths) -> PerImage:
    import torch

    metrics = SegmentationMetrics()
    for pred, truth in zip(predictions, truths):
        metrics.update(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
    return metrics.per_image()


def scenes(count: int = 24, seed: int = 0):
    """Label maps with a few blocky classes, as validation images."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 6, (4, 8))
        out.append(np.kron(coarse, np.ones((8, 8), dtype=np.int64)))
    return out


def corrupt(labels: np.ndarray, fraction: float, rng) -> np.ndarray:
    noisy = labels.copy()
    flip = rng.random(labels.shape) < fraction
    noisy[flip] = rng.integers(0, 6, flip.sum())
    return noisy


def test_per_image_counts_add_up_to_the_whole_set_score():
    truths = scenes()
    rng = np.random.default_rng(1)
    preds = [corrupt(t, 0.2, rng) for t in truths]
    counts = per_image(preds, truths)
    whole = SegmentationMetrics()
    import torch

    for p, t in zip(preds, truths):
        whole.update(torch.from_numpy(p)[None], torch.from_numpy(t)[None])
    assert counts.images == len(truths)
    assert miou(counts.confusion.sum(0)) == pytest.approx(whole.compute()["miou"])


def test_bootstrap_is_deterministic_under_a_seed_and_brackets_the_score():
    truths = scenes()
    rng = np.random.default_rng(2)
    counts = per_image([corrupt(t, 0.3, rng) for t in truths], truths)
    first, again = bootstrap(counts, seed=0), bootstrap(counts, seed=0)
    assert first == again
    assert bootstrap(counts, seed=1) != first
    low, high = first["miou"]
    assert low < float(miou(counts.confusion.sum(0))) < high
    assert 0 < high - low < 0.2


def test_configurations_differing_on_a_few_pixels_are_not_separable():
    truths = scenes()
    rng = np.random.default_rng(3)
    a = [corrupt(t, 0.25, rng) for t in truths]
    b = [p.copy() for p in a]
    for image in b[:3]:  # a handful of pixels differ, in three of 24 images
        image[0, :4] = (image[0, :4] + 1) % 6
    difference = paired_difference([per_image(a, truths)], [per_image(b, truths)])
    assert not difference.separable and difference.low <= 0 <= difference.high


def test_a_clearly_better_configuration_is_ahead():
    truths = scenes()
    rng = np.random.default_rng(4)
    good = per_image([corrupt(t, 0.1, rng) for t in truths], truths)
    bad = per_image([corrupt(t, 0.5, rng) for t in truths], truths)
    difference = paired_difference([good], [bad])
    assert difference.separable and difference.low > 0.1


def test_seed_noise_widens_the_interval():
    """Two runs of each side that disagree (seed noise) give a wider interval than one."""
    truths = scenes()
    rng = np.random.default_rng(5)
    a1 = per_image([corrupt(t, 0.2, rng) for t in truths], truths)
    a2 = per_image([corrupt(t, 0.35, rng) for t in truths], truths)
    b1 = per_image([corrupt(t, 0.27, rng) for t in truths], truths)
    one = paired_difference([a1], [b1])
    both = paired_difference([a1, a2], [b1])
    assert both.high - both.low > one.high - one.low


# Through the study -----------------------------------------------------------------------------
SPACE = {
    "study": "trust",
    "sampler": {"name": "grid", "seed": 0},
    "pruner": {"name": "none"},
    "fixed": {
        "model": "sam_tiny",
        "head": "linear",
        "freeze_depth": 4,
        "epochs": 1,
        "batch_size": 2,
        "image_size": [64, 128],
        "lr": 3e-3,
    },
    "params": {"loss": {"type": "categorical", "choices": ["ce", "dice", "focal"]}},
    "confirm": {"top": 2, "seeds": 1},
    "synthetic": {"train": 8, "val": 4, "height": 128, "width": 256},
}


@pytest.fixture(scope="module")
def trust_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("trust")
    (home / "trust.yaml").write_text(yaml.safe_dump(SPACE))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        result = CliRunner().invoke(
            main, ["run", "--study", "trust", "--space", str(home / "trust.yaml"), "--no-report"]
        )
        assert result.exit_code == 0, result.output
        yield home, result.output


def load(home, name):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        return load_existing_study(name, open_storage(None))


def test_every_trial_records_its_interval_latency_and_per_image_counts(trust_home):
    home, _ = trust_home
    for trial in load(home, "trust").trials:
        low, high = trial.user_attrs[attrs.MIOU_CI]
        assert low <= trial.user_attrs["val_miou"] <= high
        assert trial.user_attrs[attrs.LATENCY_MS] > 0
        assert trial.user_attrs[attrs.PER_IMAGE]


def test_confirmation_trials_never_feed_the_sampler(trust_home):
    home, output = trust_home
    study, confirm = load(home, "trust"), load(home, "trust.confirm")
    assert len(study.trials) == 3  # the grid, and nothing else: the sampler saw only these
    assert not any(attrs.CONFIRMS in t.user_attrs for t in study.trials)
    assert study.user_attrs[attrs.CONFIRMATION_STUDY] == "trust.confirm"
    from tuner.search.confirm import standings

    confirmed = {t.user_attrs[attrs.CONFIRMS]: t for t in confirm.trials}
    ranked = sorted(study.trials, key=lambda t: -t.value)
    assert {ranked[0].number, ranked[1].number} <= set(confirmed)  # the top 2 by one run
    # ... and, once confirmed, the top 2 by their mean over seeds are all confirmed too.
    top = [s.trial.number for s in standings(study)[:2]]
    assert set(top) <= set(confirmed)
    for number, trial in confirmed.items():
        original = next(t for t in study.trials if t.number == number)
        assert trial.params == original.params
        assert (
            trial.user_attrs[attrs.CONFIG]["seed"] == original.user_attrs[attrs.CONFIG]["seed"] + 1
        )
    assert "confirming the 2 best configuration(s)" in output
    # A rerun does nothing more: the budget is spent and the confirmations exist.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        again = CliRunner().invoke(
            main, ["run", "--study", "trust", "--space", str(home / "trust.yaml"), "--no-report"]
        )
    assert again.exit_code == 0 and "confirming" not in again.output
    assert len(load(home, "trust.confirm").trials) == len(confirmed)


def test_leaderboard_carries_intervals_seeds_and_a_verdict(trust_home):
    _, output = trust_home
    table = output[output.index("leaderboard of study") :]
    assert "95% CI" in table and "±0." in table
    assert "2 (±" in table  # a confirmed configuration: 2 seeds and their spread
    verdict = next(line for line in table.splitlines() if line.startswith("verdict: "))
    assert "is ahead" in verdict or "is not separable from #" in verdict


def test_best_prints_the_interval_and_verdict_and_json_has_them(trust_home):
    home, _ = trust_home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        text = CliRunner().invoke(main, ["best", "--study", "trust"]).output
        data = json.loads(CliRunner().invoke(main, ["best", "--study", "trust", "--json"]).output)
    assert "95% interval" in text and "verdict: " in text and "over 2 seeds" in text
    assert len(data["miou_ci"]) == 2 and data["miou_ci"][0] <= data["miou_ci"][1]
    assert data["verdict"] and data["runs"] == 2  # the best by mean is a confirmed one
    assert {r["trial"] for r in data["runner_ups"]} and all(
        len(r["difference"]) == 3 for r in data["runner_ups"]
    )


def test_top_k_ships_the_best_int8_miou_ties_to_lower_latency():
    from dataclasses import dataclass

    from tuner.deploy.trials import Candidate, _winner

    @dataclass
    class Row:
        name: str
        miou: float
        latency_ms: float

    @dataclass
    class Report:
        chosen: str
        candidates: list

    def candidate(number, miou_value, latency):
        report = Report("int8 x", [Row("int8 x", miou_value, latency)])
        trial = type("T", (), {"number": number})()
        return Candidate(trial, report, None)

    a, b, c = candidate(0, 0.40, 30.0), candidate(1, 0.42, 50.0), candidate(2, 0.41, 10.0)
    assert _winner([a, b, c]) is b  # the best INT8 mIoU, though not the fastest
    tie = candidate(3, 0.42 - 5e-5, 20.0)
    assert _winner([a, b, tie]) is tie  # within 1e-4: the lower latency
    failed = Candidate(type("T", (), {"number": 4})(), None, None, "no method within tolerance")
    assert _winner([failed, a]) is a
