"""One feature set: the entries of one key, one `.npy` file each."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tuner.core.cache._codec import HEADER_BYTES, Codec

if TYPE_CHECKING:
    import torch

ENTRY_SUFFIX = ".npy"


class FeatureSet:
    """Entries `<folder>/<name>.npy` of one key, with a byte budget for new ones.

    Writes go to a temporary file that is fsynced and then renamed into place, so a reader
    (another worker, a later trial) sees a whole entry or none, even after a kill. A file that
    does not load as an array of the expected shape and dtype counts as a miss and is
    rewritten. When the budget runs out, `make_room(bytes)` may evict other sets and return a
    new budget. It pickles read-only, so DataLoader workers can read entries.
    """

    def __init__(
        self,
        folder: Path,
        dtype: torch.dtype | str,
        shape: tuple[int, ...] | None = None,
        budget: int | None = None,
        make_room: Callable[[int], int] | None = None,
    ) -> None:
        self.folder, self.codec, self.shape = folder, Codec.of(dtype), shape
        self.budget = budget  # bytes this process may still add; None: read-only
        self.make_room = make_room
        self.hits = self.misses = self.stored = 0
        self.full = False  # a put was refused because the cache reached its size limit

    def __getstate__(self) -> dict:
        return {**self.__dict__, "budget": None, "make_room": None}

    def path(self, name: str) -> Path:
        return self.folder / f"{name}{ENTRY_SUFFIX}"

    def get(self, name: str) -> torch.Tensor | None:
        try:
            array = np.load(self.path(name), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            self.misses += 1
            return None
        if array.dtype != self.codec.array_dtype:
            self.misses += 1
            return None
        tensor = self.codec.decode(array)
        if self.shape is not None and tensor.shape != self.shape:
            self.misses += 1
            return None
        self.hits += 1
        return tensor

    def put(self, name: str, tensor: torch.Tensor) -> bool:
        """Store `tensor` in this set's storage dtype; False when there is no room."""
        array = self.codec.encode(tensor)
        size = array.nbytes + HEADER_BYTES
        if self.budget is None or self.full:
            return False
        if size > self.budget and self.make_room is not None:
            self.budget = self.make_room(size)
        if size > self.budget:
            self.full = True  # stays full for this trial: no rescan per entry
            return False
        target = self.path(name)
        tmp = self.folder / f".{target.name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as handle:  # the folder is never re-created here: an
                np.save(handle, array, allow_pickle=False)  # evicted set stays gone
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        self.budget -= size
        self.stored += 1
        return True
