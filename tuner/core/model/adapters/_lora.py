"""LoRA (Hu et al. 2021, as SAMed applies it to SAM): each targeted Linear keeps its pretrained
weight W frozen and learns a low-rank update, y = W x + (alpha / rank) * B A x, with A random
and B zero at the start, so the adapted model starts out equal to the pretrained one.

Targets, per block: `qv` (SAMed: the q and v slices of SAM's single `qkv` Linear), `qkv` (one
rank-r update of all of it: as many parameters as `qv`, shared by q, k and v), `qkv_proj` (plus
the attention's output projection), `all_linear` (plus the MLP).

Written by hand (about 60 lines) rather than with HF `peft`: peft installs 19 packages
(transformers, accelerate, huggingface_hub, tokenizers...) for a wrapper this size, and its
targets are whole modules, not slices of one like SAM's fused `qkv`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tuner.core.model.adapters._base import Adapted, adapted_blocks, check_rank
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


class LoRALinear(Adapted):
    """A frozen Linear plus low-rank updates of some slices of its output (all of it, or the
    q / v thirds of a fused qkv projection)."""

    mergeable = True

    def __init__(self, base: nn.Linear, rank: int, alpha: float, slices: tuple[str, ...]):
        super().__init__(base)
        self.scale = alpha / rank
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

    def low_rank(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """The input projected into span `index`'s rank-r space: A x."""
        return x @ self.down[index].t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if not self.spans:
            return out
        updates = [(self.low_rank(x, i) @ up.t()) * self.scale for i, up in enumerate(self.up)]
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
            linear.weight.copy_(base.weight + self.delta())
            if base.bias is not None:
                linear.bias.copy_(base.bias)
        return linear


def wrap_targets(model, config, make) -> None:
    """Replace each adapted block's targeted Linears by `make(linear, slices)`."""
    check_rank(model, config)
    for block in adapted_blocks(model, config):
        for path, slices in TARGETS[config.lora_targets]:
            owner, name = path.split(".")
            parent = getattr(block, owner)
            setattr(parent, name, make(getattr(parent, name), slices))


@ADAPTERS.register("lora")
def lora(model, config) -> None:
    """Low-rank updates on the frozen blocks' targeted Linears."""
    wrap_targets(
        model,
        config,
        lambda linear, slices: LoRALinear(linear, config.lora_rank, config.lora_alpha, slices),
    )
