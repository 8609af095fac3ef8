"""Training-step throughput per model, head and frozen depth, with FLOPs and CPU utilisation.

Images/s come from the median of several steps after a warm-up. FLOPs (forward + backward)
are counted by torch.utils.flop_counter; achieved GFLOP/s over this CPU's fp32 matmul peak,
measured in the same run, is the utilisation.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import machine, median_seconds, peak_matmul_gflops
from tuner.config import TrainConfig
from tuner.losses import get_loss
from tuner.model import HEADS, build_segmenter


def step_fn(config: TrainConfig):
    torch.manual_seed(0)
    model = build_segmenter(config).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-4, 0.1, 0.01))
    images = torch.randn(config.batch_size, 3, *config.image_size)
    labels = torch.randint(0, 19, (config.batch_size, *config.image_size))
    loss_fn = get_loss("ce")

    def step() -> None:
        loss_fn(model(images), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, model


def measure(config: TrainConfig, repeats: int, peak: float) -> dict:
    step, model = step_fn(config)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    seconds = median_seconds(step, repeats, warmup=1)
    trainable, total = model.parameter_counts()
    achieved = flops / seconds / 1e9
    return {
        "model": config.model,
        "head": config.head,
        "freeze_depth": config.freeze_depth,
        "image_size": list(config.image_size),
        "batch": config.batch_size,
        "trainable_params": trainable,
        "total_params": total,
        "seconds_per_step": round(seconds, 4),
        "images_per_second": round(config.batch_size / seconds, 3),
        "gflop_per_step": round(flops / 1e9, 2),
        "achieved_gflops": round(achieved, 1),
        "utilisation": round(achieved / peak, 3),
    }


def run(quick: bool = False) -> dict:
    if quick:
        plans = [("sam_tiny", (64, 128), 2, (0, 6), 1)]
    else:
        plans = [
            ("sam_tiny", (256, 512), 2, (0, 4, 6), 3),
            ("vit_b", (512, 512), 1, (0, 8, 12), 2),
        ]
    peak = peak_matmul_gflops()
    rows = []
    for model, size, batch, depths, repeats in plans:
        for head in sorted(HEADS):
            for depth in depths:
                config = TrainConfig(
                    model=model, head=head, freeze_depth=depth, image_size=size, batch_size=batch
                )
                rows.append(measure(config, repeats, peak))
    return {
        "machine": machine(),
        "peak_matmul_gflops": round(peak, 1),
        "results": rows,
        "dominant_cost": dominant_cost(rows),
    }


def dominant_cost(rows: list[dict]) -> dict:
    """Per model: what freezing saves, and how much each head adds, relative to the fastest."""
    out = {}
    for model in sorted({r["model"] for r in rows}):
        mine = [r for r in rows if r["model"] == model]
        unfrozen = {r["head"]: r["seconds_per_step"] for r in mine if r["freeze_depth"] == 0}
        deepest = max(r["freeze_depth"] for r in mine)
        frozen = {r["head"]: r["seconds_per_step"] for r in mine if r["freeze_depth"] == deepest}
        cheapest = min(unfrozen.values())
        out[model] = {
            "head_cost_vs_cheapest_head": {h: round(s / cheapest, 2) for h, s in unfrozen.items()},
            f"freeze_{deepest}_time_vs_freeze_0": {
                h: round(frozen[h] / unfrozen[h], 2) for h in unfrozen
            },
        }
    return out
