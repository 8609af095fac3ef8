"""What the adapter tests share: a small adapted config and adapters that have moved."""

from __future__ import annotations

import torch

from tuner.core.config import TrainConfig
from tuner.core.model.adapters import adapter_parameters

SIZE = (64, 128)


def adapted_config(adapter: str, **changes) -> TrainConfig:
    """sam_tiny at 64x128, conv head, the adapter on all 6 (frozen) blocks, small sizes."""
    values = dict(image_size=SIZE, head="conv", adapter=adapter, freeze_depth=6, lora_rank=4)
    values |= dict(adapter_dim=16, convlora_experts=3)
    return TrainConfig(**{**values, **changes})


def trained_a_little(model: torch.nn.Module) -> None:
    """Give every adapter a non-zero update, as training would (their last projection starts at
    zero, so nothing before it gets a gradient until it has moved)."""
    with torch.no_grad():
        for p in adapter_parameters(model):
            p.normal_(0, 0.05)
