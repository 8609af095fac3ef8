"""Shared by the benchmarks: machine facts, timing, and a scratch TUNER_HOME."""

from __future__ import annotations

import contextlib
import datetime
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from tuner.core.environment import cpu_info, package_versions


def machine() -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def scratch_home() -> Iterator[Path]:
    """A throwaway TUNER_HOME, so benchmarks never touch the user's studies."""
    old = os.environ.get("TUNER_HOME")
    with tempfile.TemporaryDirectory(prefix="tuner-bench-") as tmp:
        os.environ["TUNER_HOME"] = tmp
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("TUNER_HOME", None)
            else:
                os.environ["TUNER_HOME"] = old


def peak_matmul_gflops(
    sizes: tuple[int, ...] | None = None,
    repeats: int = 3,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> float:
    """This device's achievable matmul rate in `dtype`, measured now, as the utilisation
    yardstick: the best of a few square sizes (small ones under-state what large GEMMs reach)."""
    cuda = device == "cuda"
    sizes = sizes or ((4096, 8192, 16384) if cuda else (1024, 2048, 3072))
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)

        def product(a=a, b=b) -> None:
            a @ b
            if cuda:
                torch.cuda.synchronize()

        seconds = median_seconds(product, repeats if not cuda else 10, warmup=1)
        best = max(best, 2 * size**3 / seconds / 1e9)
    return best
