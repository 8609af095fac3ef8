"""Intel Neural Compressor 3.x, without IPEX: the quantization methods and how each is run.

A method is a name in `METHODS`: the INC config it builds, the config that keeps a module in
FP32 (INC's `set_local`, used for the per-layer fallback), whether it quantizes the exported
PT2E graph (activations observed on calibration windows) or the eager module (weights only),
and how much calibration it needs. Adding one is one registration::

    >>> from neural_compressor.torch.quantization import StaticQuantConfig
    >>> from tuner.deploy.quantize import METHODS, Method
    >>> METHODS["static_per_tensor"] = Method(
    ...     lambda: StaticQuantConfig(w_granularity="per_tensor"),
    ...     skip=lambda: StaticQuantConfig(w_dtype="fp32", act_dtype="fp32"),
    ...     exported=True,
    ... )
    >>> "static_per_tensor" in METHODS
    True
    >>> del METHODS["static_per_tensor"]

It is then a valid `tuner quantize --method` and one of the candidates of `--method auto`.

PT2E models are converted, then their weight quantization is folded into int8 constants
(torchao's `constant_fold`, what `convert_pt2e(fold_quantize=True)` does; INC's `convert` does
not pass that option on) and the FP32 weights it leaves behind are dropped: the saved model
holds int8 weights only.

SmoothQuant: INC 3.x runs it on PyTorch only through IPEX (`smooth_quant_entry` builds IPEX's
qconfig), and IPEX pins torch 2.8, so it is not offered here.
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
from tuner.core.environment import placement
from tuner.core.inference import pad_to_crop, windows
from tuner.core.registry import Registry


@dataclass(frozen=True)
class Method:
    """One way to quantize: `config()` builds INC's config and `skip()` the config that keeps a
    module in FP32; `exported` methods run on the PT2E graph (export, prepare, calibrate,
    convert, fold), the others on the eager module; `calibrate` is "all" windows, "one batch"
    (so that weight observers run at all) or "none". `deferred(isa)` says why, on a CPU with
    these instruction sets, the method is not expected to win (it is then tried under
    `--method auto` only when the others leave nothing worth shipping), or "" when it is."""

    config: Callable[[], Any]
    skip: Callable[[], Any]
    exported: bool
    calibrate: str = "all"
    deferred: Callable[[dict[str, bool]], str] = lambda isa: ""


def _inc(name: str, **options) -> Callable[[], Any]:
    """A factory of INC's config class `name` (imported only when a method runs)."""

    def make():
        module = importlib.import_module("neural_compressor.torch.quantization")
        return getattr(module, name)(**options)

    return make


METHODS: Registry = Registry("quantization method")
METHODS["static"] = Method(  # W8A8
    _inc("StaticQuantConfig"), _inc("StaticQuantConfig", w_dtype="fp32", act_dtype="fp32"), True
)


def int8_dot_product(isa: dict[str, bool]) -> bool:
    """VNNI or AMX: the instructions that make oneDNN's int8 GEMMs faster than FP32 ones."""
    return bool(isa.get("avx512_vnni") or isa.get("amx_int8"))


def _dominated_by_static(isa: dict[str, bool]) -> str:
    return (
        "dominated by static on any CPU: the same int8 kernels plus a per-call activation "
        "quantization; tried only when static leaves nothing worth shipping"
    )


def _no_int8_compute(isa: dict[str, bool]) -> str:
    if not int8_dot_product(isa):
        return ""  # without VNNI/AMX, W8A8 gains little speed: size decides, so try it
    return (
        "this CPU has int8 dot-product instructions (VNNI/AMX), used by the W8A8 kernels, while "
        "weight-only int8 dequantizes to FP32 at each call and runs eager; tried only when the "
        "W8A8 methods leave nothing worth shipping"
    )


# Dynamic quantization needs one forward before convert, or every weight scale stays 1.0.
METHODS["dynamic"] = Method(
    _inc("DynamicQuantConfig"),
    _inc("DynamicQuantConfig", w_dtype="fp32", act_dtype="fp32"),
    exported=True,
    calibrate="one batch",
    deferred=_dominated_by_static,
)
# int8 per output channel; layer-wise loading would need `accelerate`.
METHODS["weight_only"] = Method(
    _inc("RTNConfig", use_layer_wise=False, bits=8, group_size=-1),
    _inc("RTNConfig", dtype="fp32"),
    exported=False,
    calibrate="none",
    deferred=_no_int8_compute,
)


def plan_methods(asked: str, isa: dict[str, bool]) -> tuple[list[str], dict[str, str]]:
    """(methods to run first, {deferred method: why}). `asked` is `auto` (the plan below),
    `all` (every method, none deferred) or method names separated by commas (exactly those:
    naming a method forces it)."""
    if asked == "all":
        return list(METHODS), {}
    if asked != "auto":
        names = [name.strip() for name in asked.split(",") if name.strip()]
        for name in names:
            method_of(name)
        return names, {}
    first, deferred = [], {}
    for name, method in METHODS.items():
        why = method.deferred(isa)
        if why:
            deferred[name] = why
        else:
            first.append(name)
    if not first:  # every method deferred: nothing would run
        return list(METHODS), {}
    return first, deferred


def fallback_groups(model: torch.nn.Module) -> list[str]:
    """The modules kept in FP32 one more per fallback step, most suspect first: the usual
    accuracy losers of a quantized ViT segmenter are its head, its neck and its last blocks'
    MLP and attention (activation outliers grow with depth)."""
    groups = ["head", "encoder.neck"]
    blocks = len(model.encoder.blocks)
    for index in range(blocks - 1, max(blocks - 3, -1), -1):
        groups += [f"encoder.blocks.{index}.mlp", f"encoder.blocks.{index}.attn"]
    return groups


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

    device, dtype = placement(model)  # the example lives where the model does
    example = (torch.randn(2, 3, *crop, device=device, dtype=dtype),)
    exported = export(model, example, dynamic_shapes=({0: Dim("batch", min=1, max=64)},))
    return exported, example


def _calibrate(model, windows: list[torch.Tensor], batch: int = 4) -> None:
    device, dtype = placement(model)
    with torch.no_grad():
        for start in range(0, len(windows), batch):
            model(torch.stack(windows[start : start + batch]).to(device, dtype))


def method_of(name: str) -> Method:
    return METHODS.get_or_fail(name, "--method")


def calibration_set(method: Method, windows: list[torch.Tensor]) -> list[torch.Tensor]:
    return {"all": windows, "one batch": windows[:2], "none": []}[method.calibrate]


def quantize_model(
    name: str,
    fp32: torch.nn.Module,
    crop: tuple[int, int],
    windows: list[torch.Tensor],
    keep_fp32: tuple[str, ...] = (),
    backend: str = "inc",
):
    """(quantized model, example inputs for saving or None); the modules named in `keep_fp32`
    stay in FP32 (INC's `set_local`)."""
    from neural_compressor.torch.quantization import convert, prepare

    method = method_of(name)
    config = method.config()
    for module in keep_fp32:
        config.set_local(module, method.skip())
    if backend == "ipex":
        # INC routes static quantization through IPEX once it is imported (eager model, no
        # export). Only reachable where IPEX matches torch, which is not the case here.
        import intel_extension_for_pytorch  # noqa: F401

        example = (torch.stack(windows[:2]),)
        prepared = prepare(copy.deepcopy(fp32), config, example_inputs=example)
        _calibrate(prepared, windows)
        return convert(prepared), None
    if not method.exported:
        prepared = prepare(copy.deepcopy(fp32), config)
        _calibrate(prepared, calibration_set(method, windows))
        return convert(prepared), None
    exported, example = _export(fp32, crop)
    prepared = prepare(exported, config)
    _calibrate(prepared, calibration_set(method, windows))
    return fold_weights(convert(prepared)), example


def fold_weights(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Replace quantize(fp32 weight) by its int8 result, and drop the FP32 weights nothing
    reads any more."""
    from torchao.quantization.pt2e.constant_fold import constant_fold
    from torchao.quantization.pt2e.quantize_pt2e import _quant_node_constraint

    constant_fold(model, _quant_node_constraint)
    model.graph.eliminate_dead_code()
    used = {node.target for node in model.graph.nodes if node.op == "get_attr"}
    for kind in ("parameters", "buffers"):
        for name, _ in list(getattr(model, f"named_{kind}")()):
            if name not in used:
                owner_path, _, attribute = name.rpartition(".")
                delattr(model.get_submodule(owner_path) if owner_path else model, attribute)
    model.recompile()
    return model
