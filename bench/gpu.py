"""One command for a CUDA machine: `python -m bench gpu --device cuda` measures, in one JSON
document,

- `train_step`: vit_b at 1024x1024, batch 8, linear head, nothing frozen, one training step from
  images under bf16 autocast (bench train_step's step), with compile off and on (compile time
  apart): images/s, peak GiB, GFLOP per step and MFU against a bf16 GEMM peak measured in the
  same run; beside the targets of the cost work and the prototype's figures;
- `cached_frozen_trials`: a 2-trial grid (ce, dice) at full freeze through `tuner run`, from an
  empty feature cache, so trial 2 reads the frozen prefix's features that trial 1 stored;
- `lora_trial`: one trial of LoRA rank 4 on q and v of every (frozen) block;
- `smoke_study`: `tuner run --study smoke`, as a first command would run it.

The README's H200 figures (20.9 img/s and 68.5 GiB before the cost work, 30.1 GiB with SDPA,
2.1x with torch.compile) are prototype measurements until this benchmark reproduces them.
`--quick` runs the same code on the CPU, small (sam_tiny, 64x128 crops), for the tests; it skips
compile-on there, where Inductor's cold compile takes minutes.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import torch
from optuna.trial import FrozenTrial, TrialState

from bench import cache
from bench.common import machine, median_seconds, peak_matmul_gflops, scratch_home, tuner_run
from bench.train_step import measure, step_fn
from tuner.core.config import TrainConfig
from tuner.search import attrs

TARGETS = {"images_per_second_min": 45, "peak_gib_max": 32, "device": "H200"}
PROTOTYPE_BASELINE = {
    "images_per_second": 20.9,
    "peak_gib": 68.5,
    "note": "measured on a prototype, not this code",
}
TRIAL_ATTRS = (
    attrs.FIT_SECONDS,
    attrs.EPOCH_SECONDS,
    attrs.COMPILE_SECONDS,
    attrs.CACHE,
    attrs.TRAINABLE_PARAMS,
    attrs.LATENCY_MS,
)


def settings(quick: bool) -> dict:
    """bench cache's trial settings (at SAM's own 1024x1024 on the full run), and the step's."""
    s = cache.settings(quick)
    if not quick:
        s |= {
            "crop": [1024, 1024],
            "synthetic": {"train": 8, "val": 2, "height": 1024, "width": 1024},
        }
    return s | {"step_batch": 2 if quick else 8, "step_repeats": 2 if quick else 10}


def train_step(s: dict, device: str) -> dict:
    """One step from images, compile off and on, against the targets."""
    cuda = device == "cuda"
    config = TrainConfig(
        model=s["model"], head="linear", image_size=s["crop"], batch_size=s["step_batch"]
    )
    dtype = torch.bfloat16 if cuda else torch.float32
    peak = peak_matmul_gflops(device=device, dtype=dtype)
    eager = measure(config, s["step_repeats"], peak, device)
    eager["mfu"] = eager.pop("utilisation")
    _release(device)
    if cuda:
        compiled = compiled_step(config, s["step_repeats"], peak, eager["gflop_per_step"])
        rows = (eager, compiled)
        meets = any(
            r["images_per_second"] >= TARGETS["images_per_second_min"]
            and r["peak_memory_gib"] <= TARGETS["peak_gib_max"]
            for r in rows
        )
    else:
        compiled = {"skipped": "Inductor's cold compile takes minutes on a CPU"}
        meets = None
    return {
        "peak_matmul_gflops": round(peak, 1),
        "peak_matmul_dtype": str(dtype).removeprefix("torch."),
        "compile_off": eager,
        "compile_on": compiled,
        "targets": TARGETS,
        "meets_targets": meets,
        "prototype_baseline": PROTOTYPE_BASELINE,
    }


def compiled_step(config: TrainConfig, repeats: int, peak: float, gflop: float) -> dict:
    """The step with torch.compile(model, dynamic=False), on CUDA; its FLOPs are the eager
    step's (the same math), and compile time is the first step's excess over a later one."""
    step, _ = step_fn(config, "cuda", compiled=True)
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, repeats, warmup=1)
    return {
        "compile_seconds": round(first - seconds, 1),
        "seconds_per_step": round(seconds, 4),
        "images_per_second": round(config.batch_size / seconds, 3),
        "gflop_per_step": gflop,
        "achieved_gflops": round(gflop / seconds, 1),
        "mfu": round(gflop / seconds / peak, 3),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def _release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def frozen_space(s: dict) -> dict:
    """bench cache's study at full freeze, as a 2-trial grid over the loss."""
    space = cache.space(s, "auto")
    del space["fixed"]["loss"]
    return space | {"params": {"loss": {"type": "categorical", "choices": ["ce", "dice"]}}}


def lora_space(s: dict) -> dict:
    """One trial: LoRA rank 4 on q and v of every block of the frozen encoder."""
    space = cache.space(s, "auto")
    space["fixed"] |= {"adapter": "lora", "lora_rank": 4, "lora_targets": "qv"}
    return space | {"params": {"lr": {"type": "categorical", "choices": [1e-3]}}}


def study(
    name: str, device: str, space: dict | None = None, checkpoint: Path | None = None
) -> dict:
    """One `tuner run` in a fresh scratch home: wall seconds, exit status and its trials. With a
    `space` the figures are not built (`--no-report`); the smoke study runs as a user runs it."""
    args = ["--device", device]
    if checkpoint is not None:
        args += ["--checkpoint", str(checkpoint)]
    if space is not None:
        space = space | {"study": name}
        args.append("--no-report")
    with scratch_home() as home:
        done = tuner_run(home, name, *args, space=space)
    row = {
        "wall_seconds": done.wall_seconds,
        "exit_status": done.returncode,
        "complete_trials": sum(t.state == TrialState.COMPLETE for t in done.trials),
        "trials": [trial_record(t) for t in done.trials],
    }
    if done.returncode != 0:
        row["output_tail"] = done.output
    return row


def trial_record(trial: FrozenTrial) -> dict:
    """A trial's params, state and cost, from what it recorded (tuner.search.attrs)."""
    record = {"number": trial.number, "state": trial.state.name, "params": trial.params}
    return record | {key: trial.user_attrs.get(key) for key in TRIAL_ATTRS}


def run(quick: bool = False, device: str = "cpu") -> dict:
    if device == "cpu" and not quick:
        raise SystemExit(
            "bench gpu is meant for a CUDA machine: run it with --device cuda "
            "(--quick --device cpu runs its tiny version here)"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench gpu --device cuda: no CUDA device here")
    s = settings(quick)
    result: dict = {"machine": machine(), "settings": s}
    if device == "cuda":
        result |= {"device_name": torch.cuda.get_device_name(), "cuda": torch.version.cuda}
    result["train_step"] = train_step(s, device)
    with scratch_home() as home:
        checkpoint = cache.random_checkpoint(s["model"], home)
        result["cached_frozen_trials"] = study("gpu_cache", device, frozen_space(s), checkpoint)
        result["lora_trial"] = study("gpu_lora", device, lora_space(s), checkpoint)
    result["smoke_study"] = study("smoke", device)
    return result
