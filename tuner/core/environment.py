"""Where code runs: device choice, CPU threads, instruction sets and package versions."""

from __future__ import annotations

import contextlib
import os
import platform
import random
from collections.abc import Sequence
from importlib import metadata

import numpy as np
import torch

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
# A run's parameter dtype (TrainConfig.dtype). float64 is also the tests' stand-in for a second
# device: code that builds a tensor or module with the default dtype breaks there as it would
# break on CUDA with the default device.
PARAMETER_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from tuner.core.errors import UserError

        raise UserError(f"device={name!r} was asked for, but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; plain fp32 on CPU (where bf16 is slow without AMX/AVX-512)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_name(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """What `autocast` computes in on this device, for cache keys and records."""
    if device.type == "cuda":  # bf16 autocast, but a float64 model's residuals stay float64
        return "cuda-bf16" + ("-fp64" if dtype == torch.float64 else "")
    return f"{device.type}-{'fp64' if dtype == torch.float64 else 'fp32'}"


def placement(module: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, floating dtype) of a module's parameters: where a tensor made for it belongs.

    The project's rule: a new tensor or module takes its device and dtype from its source,
    never from torch's defaults (CPU, float32), which are wrong on CUDA and in float64 runs.

        >>> placement(torch.nn.Linear(2, 2).double())
        (device(type='cpu'), torch.float64)
    """
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def loss_precision(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a loss or an average: bf16/fp16 ones upcast to float32, float64 kept."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's generators: what `fit` seeds before it builds a model
    (a seeded initialisation is rebuilt from this seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_threads(threads: int | None) -> int:
    """Intra-op threads for this process; None leaves PyTorch's default (all physical cores)."""
    if threads:
        torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def cpu_info() -> dict[str, object]:
    """CPU model and the instruction sets that decide INT8 speed (VNNI, AMX)."""
    model, flags = platform.processor() or "unknown", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name") and model in ("unknown", "", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {
        "model": model,
        "cores": cpu_count(),
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def isa_summary(info: dict[str, object] | None = None) -> str:
    info = info or cpu_info()
    present = [flag for flag, on in info["isa"].items() if on]  # type: ignore[union-attr]
    return f"{info['model']} ({info['cores']} cores; {', '.join(present) or 'no AVX2'})"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {isa_summary()}"


DEFAULT_VERSIONED = (
    "sam-tuner",
    "torch",
    "torchvision",
    "segment-anything",
    "optuna",
    "neural-compressor-pt",
    "numpy",
)


def package_versions(names: Sequence[str] = DEFAULT_VERSIONED) -> dict[str, str]:
    """Python's version and each named distribution's ("not installed" where absent)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
