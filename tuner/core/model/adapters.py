"""Fine-tuning methods that add parameters instead of training SAM's own: the `adapter` field of
a TrainConfig, registered in `tuner.core.registry.ADAPTERS`.

`lora` (Hu et al. 2021, as SAMed applies it to SAM): each targeted Linear keeps its pretrained
weight W frozen and learns a low-rank update, y = W x + (alpha / rank) * B A x, with A random
and B zero at the start, so the adapted model starts out equal to the pretrained one.

Where: on the blocks `freeze_depth` freezes, and only there. Blocks after them train every
weight already, so an adapter there would only duplicate what trains; `freeze_depth` = depth
gives SAMed's setting (every block adapted, the encoder otherwise frozen). LoRA therefore needs
freeze_depth >= 1. The adapted blocks are no longer a fixed computation, so the frozen-prefix
cache starts after the last of them (`Segmenter.prefix_depth`).

Targets, per block: `qv` (SAMed: the q and v slices of SAM's single `qkv` Linear), `qkv` (one
rank-r update of all of it: as many parameters as `qv`, shared by q, k and v), `qkv_proj` (plus
the attention's output projection), `all_linear` (plus the MLP).

Written by hand (about 60 lines) rather than with HF `peft`: peft installs 19 packages
(transformers, accelerate, huggingface_hub, tokenizers...) for a wrapper this size, and its
targets are whole modules, not slices of one like SAM's fused `qkv`.

Adding another method is one function plus a decorator: it receives the segmenter and the
config and changes what trains, in place. BitFit, for example (only the frozen blocks' biases
learn)::

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

import math

import torch
from torch import nn

from tuner.core.errors import ConfigError
from tuner.core.registry import ADAPTERS

TARGETS = {
    # name -> (Linear inside each block, slices of its output that get an update)
    "qv": [("attn.qkv", ("q", "v"))],
    "qkv": [("attn.qkv", ("all",))],
    "qkv_proj": [("attn.qkv", ("all",)), ("attn.proj", ("all",))],
    "all_linear": [
        ("attn.qkv", ("all",)),
        ("attn.proj", ("all",)),
        ("mlp.lin1", ("all",)),
        ("mlp.lin2", ("all",)),
    ],
}


class LoRALinear(nn.Module):
    """A frozen Linear plus low-rank updates of some slices of its output (all of it, or the
    q / v thirds of a fused qkv projection)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, slices: tuple[str, ...]):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        third = base.out_features // 3
        spans = {"q": (0, third), "v": (2 * third, 3 * third)}
        self.spans = [spans.get(name, (0, base.out_features)) for name in slices]
        like = {"device": base.weight.device, "dtype": base.weight.dtype}  # from the source
        self.down = nn.ParameterList(
            nn.Parameter(torch.empty(rank, base.in_features, **like)) for _ in self.spans
        )
        self.up = nn.ParameterList(
            nn.Parameter(torch.zeros(b - a, rank, **like)) for a, b in self.spans
        )
        for down in self.down:  # as nn.Linear initialises a weight; `up` is zero
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.spans:
            return out
        updates = [(x @ down.t()) @ up.t() * self.scale for down, up in zip(self.down, self.up)]
        if len(self.spans) == 1 and self.spans[0] == (0, out.shape[-1]):
            return out + updates[0]
        parts, start = [], 0
        for (a, b), update in sorted(zip(self.spans, updates), key=lambda s: s[0]):
            parts += [out[..., start:a], out[..., a:b] + update]
            start = b
        return torch.cat([*parts, out[..., start:]], dim=-1)

    def delta(self) -> torch.Tensor:
        """The merged update of the weight: (out, in)."""
        delta = torch.zeros_like(self.base.weight)
        for (a, b), down, up in zip(self.spans, self.down, self.up):
            delta[a:b] += (up @ down) * self.scale
        return delta

    def merged(self) -> nn.Linear:
        """One plain Linear on the base's device and in its dtype (a CUDA or float64 model
        stays one after merging)."""
        base = self.base
        linear = nn.Linear(
            base.in_features,
            base.out_features,
            base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.base.weight + self.delta())
            if self.base.bias is not None:
                linear.bias.copy_(self.base.bias)
        return linear


@ADAPTERS.register("none")
def no_adapter(model, config) -> None:
    """Train what `freeze_depth` leaves trainable, nothing added."""


@ADAPTERS.register("lora")
def lora(model, config) -> None:
    """Low-rank updates on the frozen blocks' targeted Linears (see the module docstring)."""
    if config.freeze_depth < 1:
        raise ConfigError(
            "adapter=lora: needs freeze_depth >= 1; LoRA adapts the frozen blocks, and with "
            "nothing frozen every weight already trains"
        )
    width = model.encoder.blocks[0].attn.proj.in_features
    if not 1 <= config.lora_rank <= width:
        raise ConfigError(
            f"lora_rank={config.lora_rank}: expected 1 to {width} (the width of {config.model})"
        )
    for block in model.encoder.blocks[: config.freeze_depth]:
        for path, slices in TARGETS[config.lora_targets]:
            owner, name = path.split(".")
            parent = getattr(block, owner)
            adapted = LoRALinear(getattr(parent, name), config.lora_rank, config.lora_alpha, slices)
            setattr(parent, name, adapted)


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its Linear, in place: the model has no extra layers left
    (for export, INT8 and plain inference)."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    return model


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters adapters added: new, so they learn at the head's rate."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (*m.down, *m.up)]
