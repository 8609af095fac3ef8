"""Decisions you can trust: bootstrap intervals, paired verdicts, seed confirmation, the
INT8-aware choice and per-trial latency."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from tuner.cli import main
from tuner.core.metrics import SegmentationMetrics
from tuner.core.stats import PerImage, estimate, miou, paired_difference
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
    first, again = estimate([counts], seed=0), estimate([counts], seed=0)
    assert first == again
    assert estimate([counts], seed=1) != first
    assert first.value == pytest.approx(float(miou(counts.confusion.sum(0))))
    assert first.low < first.value < first.high
    assert 0 < first.high - first.low < 0.2
    assert (first.images, first.seeds) == (len(truths), 1)


def test_the_headline_interval_is_of_the_mean_over_seeds():
    """The value is the mean of the runs' whole-set scores, and the interval brackets that very
    value, not one run's: the issue was an interval of seed 0 beside a two-seed mean."""
    truths = scenes()
    rng = np.random.default_rng(6)
    runs = [per_image([corrupt(t, f, rng) for t in truths], truths) for f in (0.15, 0.4)]
    scores = [float(miou(r.confusion.sum(0))) for r in runs]
    both = estimate(runs)
    assert both.value == pytest.approx(sum(scores) / 2)
    assert both.low < both.value < both.high
    single = estimate(runs[:1])
    assert both.high - both.low > single.high - single.low  # seed noise is in it
    assert both.seeds == 2 and "2 seeds" in both.method


def test_pairing_is_by_image_name_not_position():
    truths = scenes()
    rng = np.random.default_rng(7)
    names = [f"city_{i:06d}" for i in range(len(truths))]
    a = per_image([corrupt(t, 0.1, rng) for t in truths], truths).named(names)
    b = per_image([corrupt(t, 0.3, rng) for t in truths], truths).named(names)
    order = rng.permutation(len(truths))
    shuffled = PerImage(b.confusion[order], b.boundary[order], tuple(names[i] for i in order))
    assert paired_difference([a], [shuffled]) == paired_difference([a], [b])
    observed = float(miou(a.confusion.sum(0)) - miou(b.confusion.sum(0)))
    assert paired_difference([a], [b]).observed == pytest.approx(observed)
    other = b.named([f"other_{i}" for i in range(len(truths))])
    with pytest.raises(ValueError, match="different validation images"):
        paired_difference([a], [other])


def test_configurations_differing_on_a_few_pixels_are_not_separable():
    """A few pixels differ, in six of 24 images: better in three, worse in three (noise)."""
    truths = scenes()
    rng = np.random.default_rng(3)
    a = [corrupt(t, 0.25, rng) for t in truths]
    b = [p.copy() for p in a]
    for image, truth in zip(b[:3], truths[:3]):
        image[0, :4] = truth[0, :4]  # right where A may be wrong
    for image, truth in zip(b[3:6], truths[3:6]):
        image[0, :4] = (truth[0, :4] + 1) % 6  # wrong where A may be right
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


# The verdict on a study built from known counts ---------------------------------------------
def counts_study(tmp_path, configs: dict[str, list[float]]):
    """A study whose configurations (loss=NAME) ran once per listed corruption level; the first
    run of each is the study's trial, the rest are its confirmations."""
    import optuna

    from tuner.search.confirm import open_confirmation_study
    from tuner.search.study import open_artifact_store, upload

    truths = scenes()
    names = [f"c_{i:06d}" for i in range(len(truths))]
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="v", storage=storage, direction="maximize")
    study.set_user_attr(attrs.ARTIFACT_STORE, str(tmp_path / "artifacts"))
    store = open_artifact_store(tmp_path / "artifacts")
    confirm = open_confirmation_study(study, storage)
    rng = np.random.default_rng(8)
    distribution = optuna.distributions.CategoricalDistribution(list(configs))
    for loss, levels in configs.items():
        for seed, level in enumerate(levels):
            counts = per_image([corrupt(t, level, rng) for t in truths], truths).named(names)
            target = study if seed == 0 else confirm
            target.enqueue_trial({"loss": loss})
            trial = target.ask({"loss": distribution})
            path = tmp_path / f"{loss}-{seed}.npz"
            counts.save(path)
            trial.set_user_attr(attrs.PER_IMAGE, upload(trial, store, path))
            target.tell(trial, float(miou(counts.confusion.sum(0))))
    return study


def test_verdict_ahead_needs_two_seeds_on_each_side(tmp_path):
    from tuner.search.verdict import decide

    one_seed = decide(counts_study(tmp_path / "a", {"ce": [0.05], "dice": [0.5]}))
    assert one_seed.text == "#0 is ahead of #1 on these images, one seed"
    assert one_seed.compared[0][1].separable
    seeded = decide(counts_study(tmp_path / "b", {"ce": [0.05, 0.06], "dice": [0.5, 0.52]}))
    assert seeded.text == "#0 is ahead of #1 over images and seeds"
    mixed = decide(
        counts_study(tmp_path / "c", {"ce": [0.05, 0.06], "dice": [0.5, 0.5], "focal": [0.6]})
    )
    assert (
        mixed.text
        == "#0 is ahead of #1 over images and seeds; ahead of #2 on these images, one seed"
    )


def test_verdict_not_separable_and_one_number_everywhere(tmp_path):
    from tuner.search.verdict import decide

    study = counts_study(tmp_path, {"ce": [0.2, 0.2], "dice": [0.2, 0.21]})
    verdict = decide(study)
    assert verdict.text.endswith("the 95 % interval of the difference includes 0")
    assert verdict.text.startswith(f"#{verdict.best.trial.number} is not separable from #")
    data = verdict.to_dict()
    best = verdict.best
    assert data["value"] == best.mean == pytest.approx(best.score.value)
    low, high = data["interval"]
    assert low <= data["value"] <= high and data["seeds"] == 2
    difference = data["runner_ups"][0]["difference"]
    assert difference["observed"] == pytest.approx(best.mean - verdict.ranked[1].mean)
    # Recorded on the study and served again while the runs are unchanged.
    again = decide(study)
    assert again.to_dict() == data
    from tuner.search.verdict import RECORD

    assert study._storage.get_study_system_attrs(study._study_id)[RECORD]["key"]


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
    assert "95% interval" in table and "val_miou (mean)" in table
    lines = table.splitlines()
    headers = re.split(r"\s{2,}", lines[1].strip())
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines if "COMPLETE" in line]
    seeds = headers.index("seeds")
    # Ranked by the mean: the top 2 are confirmed (a third may be too, if it rose into the top
    # 2 when a confirmed one fell back), and every row says how many seeds it averages.
    assert [row[seeds] for row in rows[:2]] == ["2", "2"]
    assert {row[seeds] for row in rows} <= {"1", "2"}
    verdict = next(line for line in table.splitlines() if line.startswith("verdict: "))
    assert "is ahead" in verdict or "is not separable from #" in verdict


def test_best_prints_the_interval_and_verdict_and_json_has_them(trust_home):
    home, _ = trust_home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        text = CliRunner().invoke(main, ["best", "--study", "trust"]).output
        data = json.loads(CliRunner().invoke(main, ["best", "--study", "trust", "--json"]).output)
        studies = CliRunner().invoke(main, ["studies"]).output
    assert "95% interval" in text and "verdict: " in text and "(mean of 2 seeds:" in text
    low, high = data["interval"]
    assert low <= data["value"] <= high and data["seeds"] == 2
    # One number on every surface: the text, the JSON and `tuner studies` agree.
    assert f"{data['value']:.4f} (mean of 2 seeds" in text
    assert f"#{data['trial']}: {data['value']:.4f} (2 seeds)" in studies
    assert data["verdict"] and len(data["runs"]) == 2  # the best by mean is a confirmed one
    assert data["runner_ups"] and all(
        set(r["difference"]) == {"observed", "low", "high"} for r in data["runner_ups"]
    )
    assert "best epoch: " in text and "(counted from 1)" in text
    assert data["best_epoch"] >= 1 and data["checkpoint"]["artifact_id"]
    assert data["checkpoint"]["location"] in text


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
