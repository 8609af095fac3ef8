"""Intel Neural Compressor 3.x, without IPEX: the quantization methods and how each is run.

A method is a name in `METHODS`: the INC config it builds, whether it quantizes the exported
PT2E graph (activations observed on calibration windows) or the eager module (weights only),
and how much calibration it needs. Adding one is one registration::

    >>> from neural_compressor.torch.quantization import StaticQuantConfig
    >>> from tuner.deploy.quantize import METHODS, Method
    >>> METHODS["static_per_tensor"] = Method(
    ...     lambda: StaticQuantConfig(w_granularity="per_tensor"), exported=True, calibrate="all"
    ... )
    >>> "static_per_tensor" in METHODS
    True
    >>> del METHODS["static_per_tensor"]

It is then a valid `tuner quantize --method` and one of the candidates of `--method auto`.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tuner.core.data.transforms import image_tensor, normalize
from tuner.core.inference import pad_to_crop, windows
from tuner.core.registry import Registry


@dataclass(frozen=True)
class Method:
    """One way to quantize: `config()` builds INC's config; `exported` methods run on the
    PT2E graph (export, prepare, calibrate, convert), the others on the eager module;
    `calibrate` is "all" windows, "one batch" (so that weight observers run) or "none"."""

    config: Callable[[], Any]
    exported: bool
    calibrate: str = "all"


def _static():
    from neural_compressor.torch.quantization import StaticQuantConfig

    return StaticQuantConfig()


def _dynamic():
    from neural_compressor.torch.quantization import DynamicQuantConfig

    return DynamicQuantConfig()


def _weight_only():
    from neural_compressor.torch.quantization import RTNConfig

    # int8 per output channel; layer-wise loading would need `accelerate`.
    return RTNConfig(use_layer_wise=False, bits=8, group_size=-1)


METHODS: Registry = Registry("quantization method")
METHODS["static"] = Method(_static, exported=True, calibrate="all")  # W8A8
# Dynamic quantization needs one forward before convert, or every weight scale stays 1.0.
METHODS["dynamic"] = Method(_dynamic, exported=True, calibrate="one batch")
METHODS["weight_only"] = Method(_weight_only, exported=False, calibrate="none")


# Environment -------------------------------------------------------------------------------
def _quiet_inc() -> None:
    """INC logs at INFO on import; keep its warnings for real problems only."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._inductor")
    from neural_compressor.common.utils import logger as inc_logger  # noqa: F401

    logging.getLogger("neural_compressor").setLevel(logging.ERROR)
    # PT2E save/load chatter about archive formats; the fallback it describes is the normal path.
    for name in ("torch.export", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def ipex_status() -> tuple[bool, str]:
    """(usable, one line saying why or why not)."""
    if importlib.util.find_spec("intel_extension_for_pytorch") is None:
        return False, (
            f"IPEX not used: not installed (its last release pins torch 2.8; this is torch "
            f"{torch.__version__.split('+')[0]}); INC quantizes through PT2E without it"
        )
    import intel_extension_for_pytorch as ipex

    ours = torch.__version__.split("+")[0].rsplit(".", 1)[0]
    theirs = ipex.__version__.split("+")[0].rsplit(".", 1)[0]
    if ours != theirs:
        return False, f"IPEX not used: version {ipex.__version__} does not match torch {ours}"
    return True, f"IPEX {ipex.__version__} available"


def _configure_inductor() -> None:
    import torch._inductor.config as inductor

    inductor.freezing = True  # constant-folds weights: required for int8 GEMM/conv lowering
    inductor.compile_threads = 1  # a worker pool only competes with the main process on 2 cores


# Data --------------------------------------------------------------------------------------
def calibration_windows(dataset, crop: tuple[int, int], count: int) -> list[torch.Tensor]:
    """Crop-sized windows from the first `count` images, as the model sees them at inference."""
    out = []
    for index in range(min(count, len(dataset))):
        image = pad_to_crop(normalize(image_tensor(dataset.image(index))), crop)
        for top, left in windows(image.shape[1], image.shape[2], crop):
            out.append(image[:, top : top + crop[0], left : left + crop[1]])
    return out


# Quantizers ---------------------------------------------------------------------------------
def _export(model: torch.nn.Module, crop: tuple[int, int]):
    """PT2E export with a dynamic batch (an example batch of 1 would be specialised to 1)."""
    from neural_compressor.torch.export import export
    from torch.export import Dim

    example = (torch.randn(2, 3, *crop),)
    exported = export(model, example, dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    return exported, example


def _calibrate(model, windows: list[torch.Tensor], batch: int = 4) -> None:
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            model(torch.stack(windows[start : start + batch]))


def method_of(name: str) -> Method:
    return METHODS.get_or_fail(name, "--method")


def calibration_set(method: Method, windows: list[torch.Tensor]) -> list[torch.Tensor]:
    return {"all": windows, "one batch": windows[:2], "none": []}[method.calibrate]


def quantize_model(
    name: str,
    fp32: torch.nn.Module,
    crop: tuple[int, int],
    windows: list[torch.Tensor],
    backend: str = "inc",
):
    """(quantized model, example inputs for saving or None)."""
    from neural_compressor.torch.quantization import convert, prepare

    method = method_of(name)
    if backend == "ipex":
        # INC routes static quantization through IPEX once it is imported (eager model, no
        # export). Only reachable where IPEX matches torch, which is not the case here.
        import intel_extension_for_pytorch  # noqa: F401

        example = (torch.stack(windows[:2]),)
        prepared = prepare(copy.deepcopy(fp32), method.config(), example_inputs=example)
        _calibrate(prepared, windows)
        return convert(prepared), None
    if not method.exported:
        prepared = prepare(copy.deepcopy(fp32), method.config())
        _calibrate(prepared, calibration_set(method, windows))
        return convert(prepared), None
    exported, example = _export(fp32, crop)
    prepared = prepare(exported, method.config())
    _calibrate(prepared, calibration_set(method, windows))
    return convert(prepared), example


def autotune_method(name, fp32, crop, windows, miou_fn, tolerance_points, baseline_miou):
    """INC's autotune over one candidate: eval = val mIoU, tolerable loss = the tolerance.

    PT2E configs need the exported graph and weight-only needs the eager module, so INC cannot
    tune them in one config set; each candidate gets its own autotune call.
    """
    from neural_compressor.torch.quantization import TuningConfig, autotune

    method = method_of(name)
    relative = (tolerance_points / 100) / max(baseline_miou, 1e-6)
    # max_trials=1: INC then returns the candidate even when it misses the tolerance (with the
    # default of 100 it returns None); the gate below decides with our own measurement.
    tuning = TuningConfig(config_set=[method.config()], tolerable_loss=relative, max_trials=1)

    def run_fn(model):
        _calibrate(model, calibration_set(method, windows))

    if not method.exported:
        model = autotune(copy.deepcopy(fp32), tuning, eval_fn=miou_fn, run_fn=run_fn)
        return model, None
    exported, example = _export(fp32, crop)
    model = autotune(exported, tuning, eval_fn=miou_fn, run_fn=run_fn, example_inputs=example)
    return model, example
