"""Where a study's numbers come from: the data (synthetic or not, and how many images), the
weights its trials started from (and their sha256), the versions and machine its trials ran
on, and when. Without it, a synthetic set's class names read like real Cityscapes results."""

from __future__ import annotations

import html
import json
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tuner.core.data.synth import MANIFEST
from tuner.report._sections import SECTIONS, Section
from tuner.search import attrs

SPLITS = ("train", "val")


@dataclass(frozen=True)
class Provenance:
    data: str  # "synthetic Cityscapes-format set (...)" or "Cityscapes-format data at ..."
    images: dict[str, int | None]  # per split; None where the folder is not on this machine
    weights: list[str]  # one line per distinct base: model, source, sha256
    versions: list[str]  # "torch 2.14.1", ... (as the trials recorded them; several if mixed)
    machines: list[str]  # as the trials recorded them
    trials_ran: str  # first and last trial start, UTC
    written: str  # when this report was made, UTC

    def rows(self) -> list[tuple[str, str]]:
        counts = ", ".join(
            f"{split} {'not on this machine' if n is None else n}"
            for split, n in self.images.items()
        )
        return [
            ("data", self.data),
            ("images", counts),
            ("weights", "; ".join(self.weights) or "-"),
            ("versions", "; ".join(self.versions) or "-"),
            ("machine", "; ".join(self.machines) or "-"),
            ("trials ran", self.trials_ran),
            ("report written", self.written),
        ]


def provenance(study: optuna.Study) -> Provenance:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    root = study.user_attrs.get(attrs.DATA_ROOT)
    starts = sorted(t.datetime_start for t in trials if t.datetime_start)
    return Provenance(
        data=_data(root),
        images={split: _image_count(root, split) for split in SPLITS},
        weights=_weights([t.user_attrs.get(attrs.CONFIG) for t in trials]),
        versions=_distinct(
            ", ".join(f"{k} {v}" for k, v in t.user_attrs[attrs.VERSIONS].items())
            for t in trials
            if t.user_attrs.get(attrs.VERSIONS)
        ),
        machines=_distinct(
            str(t.user_attrs[attrs.DEVICE]) for t in trials if t.user_attrs.get(attrs.DEVICE)
        ),
        trials_ran=(
            f"{_utc(starts[0])} to {_utc(starts[-1])}" if starts else "no finished trial yet"
        ),
        written=_utc(datetime.now(UTC)),
    )


def provenance_section(study: optuna.Study) -> Section:
    rows = provenance(study).rows()
    body = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in rows
    )
    return Section("provenance", SECTIONS["provenance"], html=f"<table class='kv'>{body}</table>")


def _data(root: str | None) -> str:
    if not root:
        return "not recorded (the study predates `data_root`)"
    manifest = Path(root) / MANIFEST
    if manifest.is_file():
        try:
            spec = json.loads(manifest.read_text())
        except (OSError, ValueError):
            spec = {}
        size = f", {spec['height']}x{spec['width']} pixels" if "height" in spec else ""
        style = f", style {spec['style']}" if "style" in spec else ""
        return (
            f"SYNTHETIC Cityscapes-format street scenes made by `tuner data synth` ({root}"
            f"{size}{style}): the class names are Cityscapes', the images are not"
        )
    return f"Cityscapes-format data at {root}"


def _image_count(root: str | None, split: str) -> int | None:
    folder = Path(root or "") / "leftImg8bit" / split
    if not root or not folder.is_dir():
        return None
    return sum(1 for _ in folder.glob("*/*_leftImg8bit.png"))


def _weights(configs: list[dict | None]) -> list[str]:
    """Each distinct base the trials started from (`BaseWeights.of`, the same choice the
    trials made) with its full sha256, computed here; or why it can't be, when the weights
    file is on another machine."""
    from tuner.core.config import TrainConfig
    from tuner.core.model.base_weights import BaseWeights

    sources = Counter(
        (c.get("model"), c.get("sam_checkpoint"), c.get("seed", 0)) for c in configs if c
    )
    bases: Counter[str] = Counter()
    for (model, checkpoint, seed), count in sources.items():
        try:
            base = BaseWeights.of(TrainConfig(model=model, sam_checkpoint=checkpoint, seed=seed))
        except Exception as exc:  # a file on another machine, a model this version lacks
            bases[f"{model} from {checkpoint or 'its registered weights'} (no sha256: {exc})"] += (
                count
            )
            continue
        source = base.path or f"a seeded random initialisation (seed {base.seed})"
        bases[f"{model} from {source}, sha256 {base.sha256}"] += count
    return [f"{line} ({count} trials)" for line, count in bases.items()]


def _distinct(lines) -> list[str]:
    return list(dict.fromkeys(lines))


def _utc(moment: datetime) -> str:
    if moment.tzinfo is None:  # Optuna stores naive local times
        moment = moment.astimezone()
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
