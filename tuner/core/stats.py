"""How much a validation score can be trusted: the headline value of a configuration (its mean
over seeds) with a bootstrap interval of that same value, and the paired comparison of two
configurations on the same images and over their seeds.

Everything starts from per-image counts: a 19x19 confusion matrix and the boundary counts of
each validation image, with the image's name (`PerImage`). A resample draws images with
replacement (and, where a configuration ran with several seeds, which seeds): its mIoU is the
mIoU of the summed matrices, exactly how the whole set is scored, computed for a batch of
resamples at once as a (resamples x images) @ (images x 361) product.

The intervals are `scipy.stats.bootstrap`'s BCa intervals. Images and seeds are two samples of
one bootstrap: each resample draws both, so the interval holds both sources of noise. The
statistic is the score of *summed* counts (not a mean of per-image scores), which is why it is
written here as a vectorised function of resampled indices rather than given to scipy as data.

>>> import numpy as np
>>> truth = np.zeros((4, 2, 2), np.int64); truth[:, 0, 0], truth[:, 1, 1] = 9, 9
>>> run = PerImage(truth, np.zeros((4, 4, 2)), names=("a", "b", "c", "d"))
>>> estimate([run], "miou").value
1.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class PerImage:
    """The counts of each validation image: confusion (N, K, K), truth rows and prediction
    columns; boundary (N, 4, K): predicted boundary px near a true one, predicted boundary px,
    true boundary px near a predicted one, true boundary px; and names (N image stems, None in
    files written before they were recorded), by which two runs are paired."""

    confusion: np.ndarray
    boundary: np.ndarray
    names: tuple[str, ...] | None = None

    def save(self, path: Path) -> None:
        names = {} if self.names is None else {"names": np.asarray(self.names, dtype=str)}
        np.savez_compressed(path, confusion=self.confusion, boundary=self.boundary, **names)

    @classmethod
    def load(cls, path: Path) -> PerImage:
        with np.load(path, allow_pickle=False) as data:
            names = tuple(str(n) for n in data["names"]) if "names" in data.files else None
            return cls(data["confusion"], data["boundary"], names)

    @property
    def images(self) -> int:
        return len(self.confusion)

    def named(self, names: Sequence[str]) -> PerImage:
        if len(names) != self.images:
            raise ValueError(f"{len(names)} names for {self.images} images")
        return PerImage(self.confusion, self.boundary, tuple(names))

    def on(self, names: Sequence[str]) -> PerImage:
        """The same counts in the order of `names` (which must all be here)."""
        if self.names is None:
            raise ValueError("these per-image counts carry no image names")
        where = {name: i for i, name in enumerate(self.names)}
        missing = [n for n in names if n not in where]
        if missing:
            raise ValueError(f"image {missing[0]!r} is not among the counts")
        order = [where[n] for n in names]
        return PerImage(self.confusion[order], self.boundary[order], tuple(names))


def miou(confusion: np.ndarray) -> np.ndarray:
    """mIoU of (..., K, K) summed confusion matrices; classes with an empty union are left out,
    as the official Cityscapes evaluation does."""
    tp = np.diagonal(confusion, axis1=-2, axis2=-1)
    union = confusion.sum(-1) + confusion.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
        return np.nanmean(iou, axis=-1)


def boundary_f1(boundary: np.ndarray) -> np.ndarray:
    """Mean boundary F-score of (..., 4, K) summed boundary counts (as SegmentationMetrics)."""
    near_gt, n_pred, near_pred, n_gt = np.moveaxis(boundary, -2, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, near_gt / np.maximum(n_pred, 1), 0.0)
        recall = np.where(n_gt > 0, near_pred / np.maximum(n_gt, 1), 0.0)
        total = precision + recall
        f1 = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1), 0.0)
        f1 = np.where(n_pred + n_gt > 0, f1, np.nan)
        return np.nanmean(f1, axis=-1)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "miou": lambda confusion, boundary: miou(confusion),
    "boundary_f1": lambda confusion, boundary: boundary_f1(boundary),
}


def _scores(run: PerImage, weights: np.ndarray, metric: str) -> np.ndarray:
    """The metric of `run` under each row of image weights (B, N) -> (B,)."""
    n, k = run.confusion.shape[:2]
    confusion = (weights @ run.confusion.reshape(n, -1).astype(np.float64)).reshape(-1, k, k)
    boundary = (weights @ run.boundary.reshape(n, -1).astype(np.float64)).reshape(-1, 4, k)
    return METRICS[metric](confusion, boundary)


def _weights(indices: np.ndarray, images: int) -> np.ndarray:
    """(B, draws) image indices -> (B, images) how often each image was drawn."""
    weights = np.zeros((len(indices), images))
    np.add.at(weights, (np.arange(len(indices))[:, None], indices), 1.0)
    return weights


def _mean_over_seeds(runs: Sequence[PerImage], images: np.ndarray, seeds, metric) -> np.ndarray:
    """Per resample: the mean, over its drawn seeds, of each drawn run's score on its drawn
    images. `images` (B, draws); `seeds` (B, draws) run indices, or None for one run."""
    weights = _weights(images, runs[0].images)
    by_run = np.stack([_scores(run, weights, metric) for run in runs])  # (runs, B)
    if seeds is None:
        return by_run[0]
    return np.take_along_axis(by_run.T, seeds.astype(int), axis=1).mean(axis=1)


@dataclass(frozen=True)
class Estimate:
    """A headline value (the mean over seeds of the whole-set score) and the 95 % interval of
    that same value: images and seeds resampled together."""

    value: float
    low: float
    high: float
    images: int
    seeds: int

    @property
    def interval_text(self) -> str:
        """ "[low, high]" at 4 decimals: how every surface prints it."""
        return f"[{self.low:.4f}, {self.high:.4f}]"

    @property
    def method(self) -> str:
        seeds = f" and {self.seeds} seeds" if self.seeds > 1 else ", one seed"
        return f"95 % BCa bootstrap over {self.images} validation images{seeds}"


@dataclass(frozen=True)
class Difference:
    """A minus B of one metric, as observed on the whole set, with its 95 % interval."""

    observed: float
    low: float
    high: float

    @property
    def separable(self) -> bool:
        return self.low > 0 or self.high < 0


def _flat(sample: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    return sample.reshape(-1, sample.shape[-1]), sample.shape[:-1]


def _bootstrap(statistic, samples: list[np.ndarray], seed: int) -> tuple[float, float]:
    """BCa interval of `statistic(*resampled index arrays)`; percentile where BCa can't be
    computed (a degenerate jackknife, e.g. every image scoring alike)."""
    import warnings

    from scipy.stats import bootstrap as scipy_bootstrap

    def vectorised(*drawn, axis=-1):
        flat = [_flat(np.asarray(d)) for d in drawn]
        shape = flat[0][1]
        return statistic(*(f for f, _ in flat)).reshape(shape)

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore")  # a degenerate BCa: the percentile interval follows
            result = scipy_bootstrap(
                samples,
                vectorised,
                n_resamples=RESAMPLES,
                confidence_level=LEVEL,
                method=method,
                vectorized=True,
                paired=False,
                batch=250,
                rng=np.random.default_rng(seed),
            )
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            return float(low), float(high)
    return float("nan"), float("nan")


def aligned(*sides: Sequence[PerImage]) -> list[list[PerImage]]:
    """Every run on the images in the first run's order, paired by name. Raises ValueError when
    the runs were scored on different images, or when names are missing and counts differ."""
    first = sides[0][0]
    runs = [run for side in sides for run in side]
    if all(run.names is not None for run in runs):
        names = first.names
        if any(set(run.names) != set(names) for run in runs):
            raise ValueError("the runs were scored on different validation images")
        return [[run.on(names) for run in side] for side in sides]
    if any(run.images != first.images for run in runs):
        raise ValueError("the runs were scored on different validation images")
    return [list(side) for side in sides]  # written before names: same set, same order


def estimate(runs: Sequence[PerImage], metric: str = "miou", seed: int = 0) -> Estimate:
    """The headline value of one configuration and its interval.

    The value is the mean over `runs` (one per seed) of each run's whole-set score, exactly
    what the leaderboard ranks by. The interval resamples images (the same draws for every
    run) and, with several runs, which runs stand for the configuration."""
    (runs,) = aligned(runs)
    images = np.arange(runs[0].images)
    value = float(np.mean([_scores(run, np.ones((1, len(images))), metric)[0] for run in runs]))
    if len(runs) == 1:
        samples = [images]
        statistic = lambda drawn: _mean_over_seeds(runs, drawn, None, metric)  # noqa: E731
    else:
        samples = [images, np.arange(len(runs))]
        statistic = lambda drawn, seeds: _mean_over_seeds(runs, drawn, seeds, metric)  # noqa: E731
    low, high = _bootstrap(statistic, samples, seed)
    return Estimate(value, low, high, len(images), len(runs))


def paired_difference(
    a: Sequence[PerImage], b: Sequence[PerImage], metric: str = "miou", seed: int = 0
) -> Difference:
    """A minus B: the observed difference of their headline values, and its interval over the
    same resampled images (paired by name) and, on each side with several runs, its seeds."""
    a, b = aligned(a, b)
    images = np.arange(a[0].images)
    whole = np.ones((1, len(images)))
    observed = float(
        np.mean([_scores(r, whole, metric)[0] for r in a])
        - np.mean([_scores(r, whole, metric)[0] for r in b])
    )
    samples = [images] + [np.arange(len(side)) for side in (a, b) if len(side) > 1]

    def statistic(drawn, *seed_draws):
        draws = iter(seed_draws)
        seeds_a = next(draws) if len(a) > 1 else None
        seeds_b = next(draws) if len(b) > 1 else None
        return _mean_over_seeds(a, drawn, seeds_a, metric) - _mean_over_seeds(
            b, drawn, seeds_b, metric
        )

    low, high = _bootstrap(statistic, samples, seed)
    return Difference(observed, low, high)
