"""AdaptFormer (Chen et al., NeurIPS 2022): a bottleneck MLP beside each adapted block's MLP.

    mlp_out = MLP(h) + adapter_scale * up(ReLU(down(h))),   h = norm2(x)

`down` projects the block's width to `adapter_dim` (64 in the paper), `up` back; `up` starts at
zero (weight and bias), so the adapted model starts equal to the pretrained one, and the
output is scaled by `adapter_scale` (0.1 in the paper). The adapter reads the MLP's own input,
the block's frozen `norm2(x)`: the paper's code offers a LayerNorm on the adapter's input as an
option; here it is the block's, which keeps SAM's block code untouched (the adapter wraps
`block.mlp`) and adds no normalisation to train.

The ReLU makes it non-linear, so it cannot be folded into the MLP's weights: a deployed
AdaptFormer model keeps its adapters, and INT8 quantizes their Linears with the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from tuner.core.model.adapters._base import Adapted, adapted_blocks
from tuner.core.registry import ADAPTERS


class AdaptMLP(Adapted):
    """A block's frozen MLP plus AdaptFormer's parallel bottleneck."""

    def __init__(self, base: nn.Module, dim: int, scale: float):
        super().__init__(base)
        width = base.lin1.in_features
        like = {"device": base.lin1.weight.device, "dtype": base.lin1.weight.dtype}
        self.scale = scale
        self.down = nn.Linear(width, dim, **like)
        self.up = nn.Linear(dim, width, **like)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.up(torch.relu(self.down(x)))


@ADAPTERS.register("adaptformer")
def adaptformer(model, config) -> None:
    """A parallel bottleneck MLP on each frozen block."""
    for block in adapted_blocks(model, config):
        block.mlp = AdaptMLP(block.mlp, config.adapter_dim, config.adapter_scale)
