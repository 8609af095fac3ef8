"""Training-step throughput per model, head and frozen depth, with FLOPs and utilisation; what
each loss costs against CE; and what `torch.compile` changes.

Images/s come from the median of several steps after a warm-up. FLOPs (forward + backward) are
counted by torch.utils.flop_counter; achieved FLOP/s over this device's matmul peak, measured
in the same run (fp32 on the CPU, bf16 on CUDA, where training runs under bf16 autocast), is
the utilisation.
"""

from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import machine, median_seconds, peak_matmul_gflops
from tuner.core.config import TrainConfig
from tuner.core.environment import autocast
from tuner.core.losses import LOSSES, get_loss
from tuner.core.model import HEADS, build_segmenter
from tuner.core.model.attention import use_fused_attention
from tuner.core.registry import ENCODERS


def step_fn(config: TrainConfig, device: str = "cpu", loss: str = "ce", compiled: bool = False):
    """One optimizer step on random data, as `tuner.core.train` runs it (from images)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_segmenter(config).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-4, 0.1, 0.01))
    images = torch.randn(config.batch_size, 3, *config.image_size, device=dev)
    labels = torch.randint(0, 19, (config.batch_size, *config.image_size), device=dev)
    loss_fn = get_loss(loss)
    forward = torch.compile(model, dynamic=False) if compiled else model

    def step() -> None:
        with autocast(dev):
            logits = forward(images)
        loss_fn(logits.float(), labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return step, model


def measure(config: TrainConfig, repeats: int, peak: float, device: str = "cpu", **kw) -> dict:
    step, model = step_fn(config, device, **kw)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = median_seconds(step, repeats, warmup=1)
    trainable, total = model.parameter_counts()
    achieved = flops / seconds / 1e9
    row = {
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
    if device == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def loss_costs(quick: bool) -> list[dict]:
    """Seconds per step with each loss, and the ratio to CE: from images with nothing frozen
    (the shape of the embedded `losses` study before caching), and head-only from cached
    features of a frozen encoder, where the loss is a larger share of the step."""
    size, batch = ((64, 128), 2) if quick else ((256, 512), 4)
    config = TrainConfig(model="sam_tiny", head="linear", image_size=size, batch_size=batch)
    rows = []
    for frozen in (0, 6):
        times = _loss_step_times(config.replace(freeze_depth=frozen), 2 if quick else 5)
        for name, seconds in times.items():
            rows.append(
                {
                    "inputs": "cached features, encoder frozen" if frozen else "images",
                    "loss": name,
                    "seconds_per_step": round(seconds, 4),
                    "vs_ce": round(seconds / times["ce"], 2),
                }
            )
    return rows


def _loss_step_times(config: TrainConfig, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_segmenter(config).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-4, 0.1, 0.01))
    images = torch.randn(config.batch_size, 3, *config.image_size)
    labels = torch.randint(0, 19, (config.batch_size, *config.image_size))
    prefix = model.frozen_prefix(images) if config.freeze_depth else None

    def step(loss_fn) -> None:
        if prefix is None:
            logits = model(images)
        else:
            logits = model.forward_from_prefix(prefix, config.image_size)
        loss_fn(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return {name: median_seconds(lambda f=fn: step(f), repeats) for name, fn in LOSSES.items()}


def compile_cost(quick: bool) -> list[dict]:
    """Eager against `torch.compile` on the CPU: time to the first step (compiling) and per
    step after, for the embedded model (`compile: auto` follows this)."""
    if quick:
        config = TrainConfig(model="sam_tiny", head="linear", image_size=(64, 128), batch_size=2)
    else:
        config = TrainConfig(model="sam_tiny", head="linear", image_size=(256, 512), batch_size=4)
    rows = []
    for compiled in (False, True):
        step, _ = step_fn(config, "cpu", compiled=compiled)
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        seconds = median_seconds(step, 2 if quick else 5, warmup=0)
        rows.append(
            {
                "model": config.model,
                "image_size": list(config.image_size),
                "batch": config.batch_size,
                "compiled": compiled,
                "first_step_seconds": round(first, 2),
                "seconds_per_step": round(seconds, 4),
            }
        )
    eager, compiled_row = rows
    compiled_row["speedup"] = round(eager["seconds_per_step"] / compiled_row["seconds_per_step"], 2)
    compiled_row["compile_seconds"] = round(
        compiled_row["first_step_seconds"] - eager["first_step_seconds"], 1
    )
    return rows


def adapter_costs(quick: bool) -> list[dict]:
    """Fine-tuning methods side by side, per model: everything trains (freeze 0), the head alone
    on a frozen encoder (from images; cached features make it cheaper still, see bench cache),
    and adapters on every block of the frozen encoder: LoRA (SAMed's rank 4 on q and v, and rank
    16 on all of qkv), ConvLoRA (rank 4 on q and v, the paper's 8 experts) and AdaptFormer
    (width 64). Adapters train few parameters but back-propagate through every block."""
    if quick:
        plans = [("sam_tiny", (64, 128), 2, 1)]
    else:
        plans = [("sam_tiny", (256, 512), 2, 7), ("vit_b", (512, 512), 1, 4)]
    rows = []
    for model, size, batch, repeats in plans:
        base = TrainConfig(model=model, head="linear", image_size=size, batch_size=batch)
        depth = ENCODERS[model].depth
        methods = {
            "full fine-tune": base,
            "frozen encoder": base.replace(freeze_depth=depth),
            "lora r4 qv": base.replace(freeze_depth=depth, adapter="lora", lora_rank=4),
            "lora r16 qkv": base.replace(
                freeze_depth=depth, adapter="lora", lora_rank=16, lora_targets="qkv"
            ),
            "convlora r4 qv 8 experts": base.replace(
                freeze_depth=depth, adapter="convlora", lora_rank=4
            ),
            "adaptformer d64": base.replace(freeze_depth=depth, adapter="adaptformer"),
        }
        timed = {}
        for method, config in methods.items():
            step, net = step_fn(config)
            trainable, total = net.parameter_counts()
            timed[method] = median_seconds(step, repeats, warmup=1)
            rows.append(
                {
                    "model": model,
                    "image_size": list(size),
                    "batch": batch,
                    "method": method,
                    "trainable_params": trainable,
                    "total_params": total,
                    "seconds_per_step": round(timed[method], 4),
                    "vs_full": round(timed[method] / timed["full fine-tune"], 2),
                }
            )
            del step, net
    return rows


def gpu_rows(peak: float, quick: bool) -> list[dict]:
    """vit_b at 1024x1024, batch 8: SAM's attention, SDPA, and SDPA compiled."""
    size, batch = ((256, 256), 2) if quick else ((1024, 1024), 8)
    config = TrainConfig(model="vit_b", head="linear", image_size=size, batch_size=batch)
    rows = []
    for attention, compiled in (("manual", False), ("sdpa", False), ("sdpa", True)):
        step, model = step_fn(config, "cuda", compiled=compiled)
        use_fused_attention(model.encoder, attention == "sdpa")
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        seconds = median_seconds(step, 3 if quick else 10, warmup=1)
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        rows.append(
            {
                "model": "vit_b",
                "image_size": list(size),
                "batch": batch,
                "attention": attention,
                "compiled": compiled,
                "first_step_seconds": round(first, 1),
                "seconds_per_step": round(seconds, 4),
                "images_per_second": round(batch / seconds, 2),
                "utilisation": round(flops / seconds / 1e9 / peak, 3),
                "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            }
        )
        del step, model
        torch.cuda.empty_cache()
    return rows


def run(quick: bool = False, device: str = "cpu") -> dict:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device here")
        peak = peak_matmul_gflops(device="cuda", dtype=torch.bfloat16)
        return {
            "machine": machine(),
            "device_name": torch.cuda.get_device_name(),
            "peak_bf16_matmul_gflops": round(peak, 1),
            "results": gpu_rows(peak, quick),
        }
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
        "loss_cost": loss_costs(quick),
        "compile": compile_cost(quick),
        "adapters": adapter_costs(quick),
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
