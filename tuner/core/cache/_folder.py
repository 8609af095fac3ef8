"""The cache folder: one sub-folder per key, a size limit, least-recently-used eviction."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.core.cache._fingerprint import key_digest
from tuner.core.cache._set import ENTRY_SUFFIX, FeatureSet
from tuner.core.errors import ConfigError
from tuner.core.fsutil import atomic_write

if TYPE_CHECKING:  # torch is imported by the commands that train, not by `tuner studies`
    import torch

KEY_FILE = "key.json"
LOCK_FILE = ".lock"
TRASH_PREFIX = ".trash-"
DEFAULT_LIMIT = 20 * 2**30
STALE_TMP_SECONDS = 3600
CREDIT_PARTS = 16  # a set re-checks the folder's size after writing limit / 16 bytes

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str | int) -> int:
    """'20G', '500M', '1.5GiB', '0' or an int -> bytes."""
    if isinstance(text, int):
        value = text
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", str(text).upper())
        if not match:
            raise ConfigError(f"cache limit {text!r}: expected a size such as 20G or 500M")
        value = int(float(match.group(1)) * _UNITS[match.group(2)])
    if value < 0:
        raise ConfigError(f"cache limit {text!r}: expected a size >= 0")
    return value


@dataclass(frozen=True)
class CacheUsage:
    folder: Path
    sets: int
    entries: int
    bytes: int
    limit: int

    def describe(self) -> str:
        return (
            f"feature cache {self.folder}: {self.sets} feature set(s), {self.entries} entries, "
            f"{self.bytes / 2**20:.1f} MiB of {self.limit / 2**30:.1f} GiB"
        )


@dataclass
class _SetInfo:
    folder: Path
    entries: int
    bytes: int
    last_used: float


class FeatureCache:
    """`<folder>/<key digest>/` per feature set, each with `key.json` saying what it holds.

    Sets in use hold a shared flock on their `.lock`; eviction takes an exclusive one without
    waiting, so it never deletes a set another process reads or fills. The least recently
    opened sets go first, until the folder is under `limit` bytes.
    """

    def __init__(self, folder: str | Path, limit: int = DEFAULT_LIMIT) -> None:
        self.folder, self.limit = Path(folder), limit

    @classmethod
    def at(cls, folder: str | Path, limit: str | int | None = None) -> FeatureCache:
        """The cache in `folder`, limited to `limit`, else $TUNER_CACHE_LIMIT, else 20 GiB."""
        limit = limit if limit is not None else os.environ.get("TUNER_CACHE_LIMIT", DEFAULT_LIMIT)
        return cls(folder, parse_size(limit))

    @contextlib.contextmanager
    def open(
        self, key: dict[str, Any], dtype: torch.dtype | str, shape: tuple[int, ...] | None = None
    ) -> Iterator[FeatureSet]:
        """The feature set of `key`, created if new; entries may be added within the limit."""
        folder = self.folder / key_digest(key)
        handle = self._lock_shared(folder)
        try:
            key_file = folder / KEY_FILE
            if key_file.exists():
                if json.loads(key_file.read_text()) != json.loads(json.dumps(key)):
                    raise RuntimeError(f"{key_file}: a different key with the same digest")
                os.utime(key_file)  # last used, for eviction
            else:
                atomic_write(key_file, lambda tmp: tmp.write_text(json.dumps(key, indent=1)))
            _remove_stale_tmp(folder)

            def make_room(need: int) -> int:
                # A credit of at most a 16th of the limit (or `need`), then a fresh look at
                # the folder: the sets open at once (a trial's train and val sets, other
                # workers') share the limit instead of each believing all free room is its own.
                free = max(0, self.limit - self._make_room(keep=folder, need=need))
                return min(free, max(need, self.limit // CREDIT_PARTS))

            yield FeatureSet(folder, dtype, shape, budget=make_room(0), make_room=make_room)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def _lock_shared(self, folder: Path):
        """A shared lock on `folder/.lock`, re-taken if eviction removed the folder meanwhile."""
        while True:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / LOCK_FILE, "a")  # noqa: SIM115 - held until the set closes
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
            try:
                if os.stat(folder / LOCK_FILE).st_ino == os.fstat(handle.fileno()).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def _sets(self) -> list[_SetInfo]:
        if not self.folder.is_dir():
            return []
        sets = []
        for entry in os.scandir(self.folder):
            if entry.name.startswith(TRASH_PREFIX):  # left by a killed eviction
                shutil.rmtree(entry.path, ignore_errors=True)
                continue
            if not entry.is_dir():
                continue
            count = size = 0
            for item in os.scandir(entry.path):
                if item.name.endswith(ENTRY_SUFFIX):
                    count += 1
                    size += item.stat().st_size
            try:
                last_used = os.stat(Path(entry.path) / KEY_FILE).st_mtime
            except FileNotFoundError:
                last_used = 0.0
            sets.append(_SetInfo(Path(entry.path), count, size, last_used))
        return sets

    def usage(self) -> CacheUsage:
        sets = self._sets()
        return CacheUsage(
            self.folder,
            len(sets),
            sum(s.entries for s in sets),
            sum(s.bytes for s in sets),
            self.limit,
        )

    def _make_room(self, keep: Path, need: int = 0) -> int:
        """Evict least recently used sets (never `keep`, never one in use) until `need` more
        bytes fit under the limit, or nothing more can go; return the bytes then held."""
        sets = self._sets()
        used = sum(s.bytes for s in sets)
        for info in sorted(sets, key=lambda s: s.last_used):
            if used + need <= self.limit:
                break
            if info.folder != keep and _remove_unused(info.folder):
                used -= info.bytes
        return used

    def clear(self) -> int:
        """Remove every set not in use; return how many were removed."""
        return sum(_remove_unused(info.folder) for info in self._sets())


def _remove_unused(folder: Path) -> bool:
    try:
        handle = open(folder / LOCK_FILE, "a")  # noqa: SIM115
    except FileNotFoundError:
        return False
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # another process reads or fills it
        trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}.{os.getpid()}")
        os.replace(folder, trash)  # atomic: the set is gone at once, deleted below
        shutil.rmtree(trash, ignore_errors=True)
    return True


def _remove_stale_tmp(folder: Path) -> None:
    """Temporary files of writers that were killed mid-write (an hour old or more)."""
    cutoff = time.time() - STALE_TMP_SECONDS
    for item in os.scandir(folder):
        if item.name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                if item.stat().st_mtime < cutoff:
                    os.unlink(item.path)
