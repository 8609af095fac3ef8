"""Fine-tuning methods that add parameters instead of training SAM's own: the `adapter` field of
a TrainConfig, registered in `tuner.core.registry.ADAPTERS`.

- `none`: train what `freeze_depth` leaves trainable (full fine-tuning at freeze 0, the head
  alone at full freeze).
- `lora` (`_lora`): low-rank updates of the targeted Linears; folds into them for deployment.
- `convlora` (`_convlora`): LoRA with multi-scale convolutions in its bottleneck.
- `adaptformer` (`_adaptformer`): a bottleneck MLP beside each block's MLP.

Every one starts equal to the pretrained model (its last projection is zero).

Where: on the blocks `freeze_depth` freezes, and only there. Blocks after them train every
weight already, so an adapter there would only duplicate what trains. The adapted blocks are
no longer a fixed computation, so the frozen-prefix cache starts after the last of them
(`Segmenter.prefix_depth`); adapters therefore need freeze_depth >= 1.

The published recipes freeze the whole encoder and adapt every block: SAMed (LoRA on q and v),
Conv-LoRA (Zhong et al. 2024, every block's qkv) and AdaptFormer (Chen et al. 2022, every
block's MLP), which is also how G-SAM's Cityscapes table compares them. That is the default
placement of the new methods: a config that names `convlora` or `adaptformer` without a
`freeze_depth` freezes the whole encoder (`TrainConfig.from_dict`). LoRA keeps its explicit
freeze_depth, as before. With every block adapted nothing is cached, and every step runs the
whole encoder.

Adding another method is one function plus a decorator (and its name in the registry's
declaration): it receives the segmenter and the config and changes what trains, in place.
BitFit, for example (only the frozen blocks' biases learn)::

    >>> from tuner.core.config import TrainConfig
    >>> from tuner.core.model import build_segmenter
    >>> from tuner.core.registry import ADAPTERS
    >>> @ADAPTERS.register("bitfit")
    ... def bitfit(model, config):
    ...     for block in model.encoder.blocks[: config.freeze_depth]:
    ...         for name, p in block.named_parameters():
    ...             p.requires_grad_(name.endswith("bias"))
    >>> model = build_segmenter(TrainConfig(adapter="bitfit", freeze_depth=6, image_size=(64, 64)))
    >>> model.prefix_depth  # the adapted blocks train, so nothing is cached
    0
    >>> del ADAPTERS["bitfit"]
"""

from __future__ import annotations

from tuner.core.model.adapters._adaptformer import AdaptMLP
from tuner.core.model.adapters._base import (
    Adapted,
    adapter_parameters,
    has_adapters,
    merge_adapters,
    strip_adapters,
)
from tuner.core.model.adapters._convlora import ConvLoRALinear, ScaleExperts
from tuner.core.model.adapters._lora import TARGETS, LoRALinear
from tuner.core.registry import ADAPTERS

__all__ = [
    "TARGETS",
    "AdaptMLP",
    "Adapted",
    "ConvLoRALinear",
    "LoRALinear",
    "ScaleExperts",
    "adapter_parameters",
    "deployed_config",
    "describe_adapter",
    "has_adapters",
    "merge_adapters",
    "strip_adapters",
]


@ADAPTERS.register("none")
def no_adapter(model, config) -> None:
    """Train what `freeze_depth` leaves trainable, nothing added."""


def deployed_config(config, model):
    """The config that rebuilds `model` after `merge_adapters`: adapter none once every adapter
    has been folded (LoRA), the trained config where modules remain (ConvLoRA, AdaptFormer)."""
    return config if has_adapters(model) else config.replace(adapter="none")


def describe_adapter(config) -> str:
    """The method and its size, for logs: "lora rank 4 on qv", "adaptformer dim 64 x 0.1"."""
    if config.adapter in ("lora", "convlora"):
        experts = f", {config.convlora_experts} experts" if config.adapter == "convlora" else ""
        return f"{config.adapter} rank {config.lora_rank} on {config.lora_targets}{experts}"
    if config.adapter == "adaptformer":
        return f"adaptformer dim {config.adapter_dim} x {config.adapter_scale:g}"
    return config.adapter
