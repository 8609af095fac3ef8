"""python -m bench adapters: the fine-tuning methods side by side, per model and crop.

The same rows as `python -m bench train_step`'s "adapters" section (full fine-tuning, frozen
encoder, LoRA, ConvLoRA, AdaptFormer; trainable parameters and seconds per optimizer step,
measured in one run), without the rest of train_step, which takes most of an hour here:
sam_tiny at 256x512 (batch 2) and vit_b at 512x512 (batch 1), random weights for vit_b.
"""

from __future__ import annotations

from bench.common import machine
from bench.train_step import adapter_costs


def run(quick: bool = False) -> dict:
    rows = adapter_costs(quick)
    return {"machine": machine(), "results": rows, "methods": sorted({r["method"] for r in rows})}
