"""ConvLoRA (Zhong et al., "Convolution Meets LoRA", ICLR 2024): LoRA whose low-rank path sees
the token grid through small convolutions.

SAM's ViT has no local prior: every block is attention plus a per-token MLP. Conv-LoRA puts one
back, cheaply, inside LoRA's bottleneck: the rank-r projection A x, laid out as the (h, w) grid
it came from, passes through a mixture of experts, each a 3x3 convolution at one scale (the
grid upsampled by 1, 2, ... `convlora_experts`, convolved, pooled back), chosen per image by a
top-1 gate; the result is added to A x before the up-projection:

    y = W x + (alpha / rank) * B (A x + MoE(A x))

B starts at zero, as in LoRA, so the adapted model starts equal to the pretrained one. Rank,
alpha and targets are LoRA's fields; the paper (and AutoGluon's reference code) use 8 experts.

Two choices of ours. Outside eager training (evaluation, export for INT8, torch.compile) all
experts are computed and the gate's one-hot weights select one, because a data-dependent
branch cannot be exported; in eager training each expert runs only on the images that chose
it, as in the paper. The two paths give the same values (tested). And the paper's auxiliary
load-balancing loss is left out (the tool's losses are the segmentation losses).
The convolution makes the update depend on neighbouring tokens, so it cannot be folded into
W: a deployed ConvLoRA model keeps its modules, and INT8 quantizes them too.

SAM's blocks hand `attn.qkv` and the MLP a (B, h, w, C) grid (a window of it in windowed
blocks), which is the grid the convolutions run over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuner.core.model.adapters._base import Adapted
from tuner.core.model.adapters._lora import LoRALinear, wrap_targets
from tuner.core.registry import ADAPTERS


class ScaleExperts(nn.Module):
    """Top-1 mixture of 3x3 convolutions at scales 1..n over a (B, r, h, w) grid."""

    def __init__(self, rank: int, experts: int, like: dict):
        super().__init__()
        self.scales = tuple(range(1, experts + 1))
        self.gate = nn.Linear(rank, experts, bias=False, **like)
        self.convs = nn.ModuleList(nn.Conv2d(rank, rank, 3, padding=1, **like) for _ in self.scales)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        probs = self.gate(grid.mean(dim=(2, 3))).softmax(dim=-1)  # (B, experts)
        top = probs.argmax(dim=-1, keepdim=True)
        if self.training and not torch.compiler.is_compiling():
            return self._dispatched(grid, top[:, 0], probs.gather(1, top))
        # Every expert, weighted by the one-hot gate: one static graph (export, INT8, compile).
        weights = torch.zeros_like(probs).scatter(1, top, probs.gather(1, top))
        out = torch.zeros_like(grid)
        for index in range(len(self.scales)):
            out = out + weights[:, index, None, None, None] * self.expert(index, grid)
        return out

    def expert(self, index: int, grid: torch.Tensor) -> torch.Tensor:
        scale = self.scales[index]
        x = F.interpolate(grid, scale_factor=scale, mode="bilinear") if scale > 1 else grid
        x = F.gelu(self.convs[index](x))
        return F.avg_pool2d(x, scale) if scale > 1 else x

    def _dispatched(self, grid, top, weight) -> torch.Tensor:
        """Training, eager: each expert runs on the images that chose it, as in the paper, and
        nothing else (the same values as the dense path, a fraction of its cost)."""
        out = torch.zeros_like(grid)
        for index in top.unique().tolist():
            rows = (top == index).nonzero(as_tuple=True)[0]
            chosen = weight[rows, :, None, None] * self.expert(index, grid[rows])
            out = out.index_put((rows,), chosen)
        return out


class ConvLoRALinear(LoRALinear):
    """LoRA on a Linear that receives a (B, h, w, C) grid, with `ScaleExperts` in each
    span's low-rank path."""

    mergeable = False

    def __init__(self, base, rank, alpha, slices, experts: int):
        super().__init__(base, rank, alpha, slices)
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.experts = nn.ModuleList(ScaleExperts(rank, experts, like) for _ in self.spans)

    def low_rank(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(
                f"ConvLoRA needs a (B, h, w, C) token grid at its Linear, got {tuple(x.shape)}"
            )
        z = super().low_rank(x, index)  # (B, h, w, r)
        grid = z.permute(0, 3, 1, 2)
        return z + self.experts[index](grid).permute(0, 2, 3, 1)

    def delta(self) -> torch.Tensor:
        raise TypeError("ConvLoRA's update depends on neighbouring tokens: it has no weight delta")

    def merged(self) -> nn.Module:
        return Adapted.merged(self)  # refused: not LoRA's


@ADAPTERS.register("convlora")
def convlora(model, config) -> None:
    """LoRA with multi-scale convolutions in its bottleneck, on the frozen blocks' targets."""
    wrap_targets(
        model,
        config,
        lambda linear, slices: ConvLoRALinear(
            linear, config.lora_rank, config.lora_alpha, slices, config.convlora_experts
        ),
    )
