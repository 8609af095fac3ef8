"""Where the tool keeps its files: ./studies, or $TUNER_HOME (studies, artifacts, data, cache)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tuner.core.errors import ConfigError

STUDY_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_study_name(name: object, where: str = "study") -> str:
    """Study names become file names (reports, quantized models): letters, digits, _ . -."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"{where}={name!r}: a study name may hold only letters, digits, '_', '.' and '-'"
        )
    return name


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


def cache_dir() -> Path:
    """The frozen-prefix feature cache, shared by every study, worker and run on this machine."""
    return home() / "cache"


def data_dir() -> Path:
    """Where the embedded synthetic data sets are built."""
    return home() / "data"


def runs_dir() -> Path:
    return home() / "runs"
