"""Shared by the benchmarks: machine facts, timing, and a scratch TUNER_HOME."""

from __future__ import annotations

import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from tuner.core.environment import cpu_info, package_versions


def machine() -> dict:
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_info(),
        "threads": torch.get_num_threads(),
        "versions": package_versions(),
    }


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout meanwhile (prints, C libraries, child processes: file
    descriptor 1 itself) to stderr, so that stdout holds the one JSON document alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):  # where sys.stdout is not fd 1
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


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


@dataclass
class TunerRun:
    """What one `tuner run` did: its wall time, exit status, output and the study's trials."""

    wall_seconds: float
    returncode: int
    output: str
    trials: list  # optuna FrozenTrial, by number


def tuner_run(home: Path, study: str, *args: str, space: dict | None = None) -> TunerRun:
    """`tuner run --study STUDY ARGS` in a subprocess, in the scratch TUNER_HOME `home` (see
    scratch_home). A `space` is written there and passed with --space, and its synthetic set
    is generated first, so data generation is not in the wall time."""
    from tuner.core import paths
    from tuner.core.data import synth
    from tuner.core.data.synth import SynthSpec
    from tuner.core.errors import StudyError
    from tuner.search.study import load_existing_study, open_storage

    command = [sys.executable, "-m", "tuner", "run", "--study", study, *args]
    if space is not None:
        path = home / f"{study}.yaml"
        path.write_text(yaml.safe_dump(space))
        synth.embedded(paths.data_dir(), SynthSpec(**space["synthetic"]), progress=False)
        command += ["--space", str(path)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    try:
        trials = load_existing_study(study, open_storage(None)).trials
    except StudyError:  # the run stopped before it created the study; its output says why
        trials = []
    output = done.stdout[-2000:] + done.stderr[-2000:]
    return TunerRun(round(wall, 1), done.returncode, output, sorted(trials, key=lambda t: t.number))
