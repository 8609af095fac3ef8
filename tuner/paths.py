"""Where studies live by default: ./studies, or $TUNER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

from tuner.cache import DEFAULT_LIMIT, FeatureCache, parse_size
from tuner.data import synth


def home() -> Path:
    return Path(os.environ.get("TUNER_HOME", "studies")).expanduser()


def default_storage_url() -> str:
    """One SQLite file for all studies: plain `optuna-dashboard sqlite:///studies/tuner.db` opens
    it, and it supports heartbeats (unlike journal files)."""
    path = home() / "tuner.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def default_artifact_dir() -> Path:
    return home() / "artifacts"


def feature_cache(limit: str | int | None = None) -> FeatureCache:
    """The frozen-prefix feature cache, <home>/cache, shared by every study, worker and run on
    this machine. Its size limit: `limit`, else $TUNER_CACHE_LIMIT, else 20 GiB."""
    limit = limit if limit is not None else os.environ.get("TUNER_CACHE_LIMIT", DEFAULT_LIMIT)
    return FeatureCache(home() / "cache", parse_size(limit))


def runs_dir() -> Path:
    return home() / "runs"


def synthetic_data(spec: synth.SynthSpec | None = None, progress: bool = True) -> Path:
    """The embedded default dataset, built once per spec under <home>/data."""
    spec = spec or synth.SynthSpec()
    name = f"synth-{spec.train}x{spec.val}x{spec.test}-{spec.height}x{spec.width}-s{spec.seed}"
    return synth.ensure(home() / "data" / name, spec, progress=progress)
