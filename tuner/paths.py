"""Where studies live by default: ./studies, or $TUNER_HOME."""

from __future__ import annotations

import os
from pathlib import Path

from tuner.cache import DEFAULT_LIMIT, FeatureCache, parse_size
from tuner.data import synth
from tuner.errors import ConfigError


def home() -> Path:
    return Path(os.environ.get("TUNER_HOME", "studies")).expanduser()


def default_storage_url() -> str:
    """One SQLite file for all studies: plain `optuna-dashboard sqlite:///studies/tuner.db` opens
    it, and it supports heartbeats (unlike journal files)."""
    return f"sqlite:///{home() / 'tuner.db'}"


def inside_home(*parts: str) -> Path:
    """A default output path under the tuner home; names that would climb out are refused."""
    root = home().resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{'/'.join(parts)}: resolves outside {root}")
    return path


def default_artifact_dir() -> Path:
    return home() / "artifacts"


def check_output(path: Path, folder: bool = True) -> Path:
    """Refuse an --out that cannot be written before any work starts (nothing is created)."""
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path}: exists and is not a folder")
    if not folder and path.is_dir():
        raise ConfigError(f"--out {path}: is a folder; give a file name")
    return path


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
