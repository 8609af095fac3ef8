"""Typed configuration of one fine-tuning run.

`TrainConfig` is the single vocabulary shared by `tuner train --config`, the `fixed` and
`params` sections of a search space, and the config stored beside every checkpoint. A search
space can therefore vary exactly the fields listed here and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_type_hints

import yaml

from tuner.core.errors import ConfigError
from tuner.core.registry import ENCODERS, FIELD_REGISTRIES

# What LoRA may adapt in each block (tuner.core.model.adapters.TARGETS implements them).
LORA_TARGETS = ("qv", "qkv", "qkv_proj", "all_linear")
# Adapters whose published recipes freeze the whole encoder and adapt every block: a config
# that names one without a freeze_depth gets that placement (tuner.core.model.adapters).
ENCODER_FROZEN_BY_DEFAULT = ("convlora", "adaptformer")
# Metrics that can pick the best checkpoint: all are "higher is better".
MONITORS = ("val_miou", "val_boundary_f1", "val_pixel_acc")
# How the frozen-prefix cache stores features (int8: per-token absmax, tuner.core.cache).
CACHE_DTYPES = ("float16", "float32", "int8")


@dataclass
class TrainConfig:
    """Everything that decides what one fine-tuning run does (and nothing about where data is)."""

    # What is trained.
    model: str = "sam_tiny"  # registry.ENCODERS: sam_tiny (the stand-in), sam_tiny_scratch, vit_*
    head: str = "conv"  # registry.HEADS
    loss: str = "ce"  # registry.LOSSES
    freeze_depth: int = 0  # patch/pos embedding + the first k encoder blocks are frozen
    adapter: str = "none"  # registry.ADAPTERS: none | lora | convlora | adaptformer
    lora_rank: int = 4  # lora and convlora
    lora_alpha: float = 4.0  # the update is scaled by alpha / rank
    lora_targets: str = "qv"  # qv (SAMed) | qkv | qkv_proj | all_linear
    convlora_experts: int = 8  # convlora: 3x3 convolutions at scales 1..N (the paper's 8)
    adapter_dim: int = 64  # adaptformer: bottleneck width
    adapter_scale: float = 0.1  # adaptformer: the bottleneck's output is scaled by this
    sam_checkpoint: str | None = None  # official sam_vit_*.pth to start from

    # How it is optimised.
    lr: float = 3e-4  # head learning rate
    encoder_lr_mult: float = 0.1  # encoder LR = lr * encoder_lr_mult
    weight_decay: float = 0.01
    batch_size: int = 4
    micro_batch_size: int | None = None  # None: whole batch per forward; halves itself on OOM
    epochs: int = 6
    warmup_ratio: float = 0.1  # fraction of all steps with a linear warm-up
    poly_power: float = 0.9
    grad_clip: float | None = 1.0

    # Data handling.
    image_size: tuple[int, int] = (256, 512)  # training crop (H, W); multiples of 16
    scale_range: tuple[float, float] = (0.5, 2.0)
    hflip: bool = True
    color_jitter: float = 0.2
    aug_views: int | None = None  # distinct augmented views per image, reused across epochs
    train_limit: int | None = None  # use only the first N training images (quick runs)
    val_limit: int | None = None
    num_workers: int = 0

    # Evaluation.
    boundary_tolerance: int = 2  # pixels, for the boundary F-score
    monitor: str = "val_miou"  # metric that decides the best checkpoint (higher is better)

    # Cost: what is computed once, and how.
    cache: str = "auto"  # auto: cache frozen-prefix features when freeze_depth >= 1 | off
    cache_dtype: str = "float16"  # float16 | float32 | int8: how cached features are stored
    compile: str = "auto"  # auto (on for CUDA) | on | off: torch.compile the trained part

    # Reproducibility and placement.
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # parameter dtype: float32 | float64 (numerics checks; on CUDA
    # training still runs under bf16 autocast)
    threads: int | None = None  # CPU threads; None: all cores given to this process

    def __post_init__(self) -> None:
        self.image_size = tuple(int(v) for v in self.image_size)  # type: ignore[assignment]
        self.scale_range = tuple(float(v) for v in self.scale_range)  # type: ignore[assignment]

    @property
    def effective_micro_batch(self) -> int:
        return min(self.micro_batch_size or self.batch_size, self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["image_size"] = list(self.image_size)
        data["scale_range"] = list(self.scale_range)
        return data

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def field_type(cls, name: str) -> type:
        """The non-None type of a field (int for `int | None`)."""
        annotation = _TYPES[name]
        options = [a for a in get_args(annotation) if a is not type(None)]
        return options[0] if isinstance(annotation, UnionType) else annotation

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build a config, checking every key and type so a typo never trains silently."""
        known = set(cls.field_names())
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"{source}: unknown key {key!r}; expected one of: {', '.join(sorted(known))}"
                )
        converted = {k: coerce_field(k, v, source) for k, v in values.items()}
        if converted.get("adapter") in ENCODER_FROZEN_BY_DEFAULT and "freeze_depth" not in values:
            model = converted.get("model", cls.model)
            if model in ENCODERS:  # else validate() names the model
                converted["freeze_depth"] = ENCODERS[model].depth
        config = cls(**converted)
        config.validate(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(cls.read_file(path), source=str(path))

    @staticmethod
    def read_file(path: str | Path) -> dict[str, Any]:
        """A config file's keys, unchecked (`from_dict` checks them)."""
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(values)}")
        return values

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def validate(self, source: str = "config") -> None:
        def fail(key: str, expected: str) -> None:
            raise ConfigError(f"{source}: {key}={getattr(self, key)!r}: expected {expected}")

        # Names are checked against the registries, which load their implementations on first
        # use: this module imports none of them (tuner.core.registry).
        for key, registry in FIELD_REGISTRIES.items():
            if getattr(self, key) not in registry:
                fail(key, f"one of {', '.join(registry.names())}")
        depth = ENCODERS[self.model].depth
        if not 0 <= self.freeze_depth <= depth:
            fail("freeze_depth", f"an integer from 0 to {depth} (the depth of {self.model})")
        if not self.lr > 0:
            fail("lr", "a positive number")
        if self.adapter != "none" and self.freeze_depth < 1:
            fail("adapter", "none unless freeze_depth >= 1 (adapters sit on the frozen blocks)")
        width = ENCODERS[self.model].embed_dim
        if not 1 <= self.lora_rank <= width:
            fail("lora_rank", f"an integer from 1 to {width} (the width of {self.model})")
        if not self.lora_alpha > 0:
            fail("lora_alpha", "a positive number")
        if not 1 <= self.convlora_experts <= 16:
            fail("convlora_experts", "an integer from 1 to 16 (scales 1..N)")
        if not 1 <= self.adapter_dim <= 4 * width:
            fail("adapter_dim", f"an integer from 1 to {4 * width} (4x the width of {self.model})")
        if not self.adapter_scale > 0:
            fail("adapter_scale", "a positive number")
        if self.batch_size < 1:
            fail("batch_size", "an integer >= 1")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            fail("micro_batch_size", "an integer >= 1 or null")
        if self.epochs < 1:
            fail("epochs", "an integer >= 1")
        if len(self.image_size) != 2 or any(v < 32 or v % 16 for v in self.image_size):
            fail("image_size", "[height, width], each a multiple of 16 and >= 32")
        low, high = self.scale_range
        if not 0 < low <= high:
            fail("scale_range", "[low, high] with 0 < low <= high")
        if not 0 <= self.warmup_ratio < 1:
            fail("warmup_ratio", "a number in [0, 1)")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            fail("device", "auto, cpu, cuda or cuda:N")
        if self.monitor not in MONITORS:
            fail("monitor", f"one of {', '.join(MONITORS)}")
        choices = {
            "lora_targets": LORA_TARGETS,
            "cache": ("auto", "off"),
            "cache_dtype": CACHE_DTYPES,
            "compile": ("auto", "on", "off"),
            "dtype": ("float32", "float64"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                fail(key, " or ".join(allowed))
        for key in ("train_limit", "val_limit", "aug_views"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                fail(key, "an integer >= 1 or null")
        for key in ("boundary_tolerance", "num_workers", "encoder_lr_mult", "weight_decay"):
            if getattr(self, key) < 0:
                fail(key, "a number >= 0")


_TYPES = get_type_hints(TrainConfig)


def coerce_field(key: str, value: Any, source: str = "config") -> Any:
    """Convert a YAML/CLI value to the declared type of `TrainConfig.key`, or say why not."""
    annotation = _TYPES[key]
    if value is None:
        if type(None) in get_args(annotation):
            return None
        raise ConfigError(f"{source}: {key}: null is not allowed; expected {_type_name(key)}")
    try:
        if key in ("image_size", "scale_range"):
            if isinstance(value, int | float):
                value = [value, value]
            if not isinstance(value, list | tuple) or len(value) != 2:
                raise TypeError
            cast = int if key == "image_size" else float
            return tuple(_strict(cast, v) for v in value)
        return _strict(TrainConfig.field_type(key), value)
    except (TypeError, ValueError):
        got = type(value).__name__
        if isinstance(value, float | str) and _is_non_finite(value):
            got = "a value that is not finite"
        raise ConfigError(
            f"{source}: {key}={value!r}: expected {_type_name(key)}, got {got}"
        ) from None


def _is_non_finite(value: float | str) -> bool:
    try:
        return not math.isfinite(float(value))
    except ValueError:
        return False


def _strict(cast: type, value: Any) -> Any:
    """Accept only lossless conversions: 3 for a float, not 3.5 for an int or 'x' for a bool."""
    if cast is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if cast is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise TypeError
        return int(value)
    if cast is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError
        number = float(value)  # YAML reads 3e-4 (no dot) as a string
        if not math.isfinite(number):
            raise ValueError  # nan and inf are never a learning rate, a ratio or a size
        return number
    if cast is str:
        if not isinstance(value, str):
            raise TypeError
        return value
    raise TypeError


def _type_name(key: str) -> str:
    names = {"image_size": "[height, width] integers", "scale_range": "[low, high] numbers"}
    if key in names:
        return names[key]
    annotation = _TYPES[key]
    options = get_args(annotation) if isinstance(annotation, UnionType) else (annotation,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in options)
