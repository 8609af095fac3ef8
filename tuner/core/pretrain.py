"""Pretrain the `sam_tiny` stand-in for SAM: `tuner data pretrain [--quick] [--out FILE]`.

Real users start from SAM's pretrained encoder; the embedded default cannot download it. This
script makes a stand-in the project ships: `sam_tiny`'s image encoder and SAM's mask decoder,
trained on a *separate* synthetic distribution (generator seed 1000 and the `shifted` style:
another camera height, palette, lighting and texture), so it never sees the embedded default's
train or val images and fine-tuning still has a domain gap to close.

Objective: supervised semantic segmentation of the shifted scenes, through two heads at once,
a linear probe on the neck's embedding and SAM's own mask decoder (promptless, one token per
class, as `tuner.core.model.heads.MaskDecoderHead`), with cross-entropy on both. MAE-style masked
reconstruction is closer to how SAM's encoder began, but a ViT this small learns little from it
in the ~15 minutes of two CPU cores this script is allowed; segmentation converges in that time
and gives the encoder the kind of object and boundary features SAM's promptable training gave
it. The linear probe keeps the embedding linearly readable (for the `linear` head and frozen
trials), the decoder gives the `mask_decoder` head trained weights. Both heads are discarded;
the saved file holds the whole SAM in the official state-dict layout (`image_encoder.*`,
`prompt_encoder.*`, `mask_decoder.*`), stored as float16 to stay under 8 MB, and loads through
the same path as `sam_vit_b_01ec64.pth`. Its provenance (settings, seed, sha256, timings and
the stand-in's own val mIoU) is written beside it as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tuner.core.data import synth
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.labels import IGNORE_INDEX, NUM_CLASSES
from tuner.core.data.transforms import Augment, AugmentedSet
from tuner.core.environment import configure_threads, isa_summary, seed_everything
from tuner.core.fsutil import atomic_write
from tuner.core.inference import evaluate
from tuner.core.model.backbone import STANDIN_WEIGHTS, build_sam
from tuner.core.model.heads import LinearHead, MaskDecoderHead
from tuner.core.train import warmup_poly


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    data: synth.SynthSpec = field(
        default_factory=lambda: synth.SynthSpec(
            train=480, val=32, height=256, width=512, seed=1000, style="shifted"
        )
    )
    crop: tuple[int, int] = (256, 256)  # sam_tiny's native grid: the saved tables need no resize
    batch_size: int = 8
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    scale_range: tuple[float, float] = (0.5, 2.0)
    threads: int | None = None


QUICK = PretrainSettings(
    data=synth.SynthSpec(train=4, val=2, height=256, width=256, seed=1000, style="shifted"),
    batch_size=2,
    steps=2,
)


class _Probe(nn.Module):
    """Encoder plus one head, as `evaluate` expects a model: images -> logits."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images), tuple(images.shape[-2:]))


def pretrain(settings: PretrainSettings, out: Path, work: Path, log=print) -> dict:
    """Train, save the state dict to `out` and the provenance to `out` with `.json`."""
    started = time.perf_counter()
    configure_threads(settings.threads)
    seed_everything(settings.seed)
    root = synth.ensure(work / "pretrain-data", settings.data, progress=False)
    train = CityscapesDataset(root, "train")
    val = CityscapesDataset(root, "val")
    sam = build_sam("sam_tiny_scratch")
    encoder = sam.image_encoder
    heads = nn.ModuleDict(
        {"linear": LinearHead(sam, NUM_CLASSES), "mask_decoder": MaskDecoderHead(sam, NUM_CLASSES)}
    )
    params = [*encoder.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = warmup_poly(settings.steps, int(settings.warmup_ratio * settings.steps), 0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    views = AugmentedSet(
        train, Augment(settings.crop, settings.scale_range), seed=settings.seed, aug_views=None
    )
    log(
        f"pretraining sam_tiny on {len(train)} shifted-style scenes: {settings.steps} steps of "
        f"{settings.batch_size} crops {settings.crop}"
    )
    step, epoch, losses = 0, 0, []
    while step < settings.steps:
        views.set_epoch(epoch)
        order = torch.randperm(
            len(views), generator=torch.Generator().manual_seed(settings.seed + epoch)
        ).tolist()
        loader = torch.utils.data.DataLoader(
            views, batch_size=settings.batch_size, sampler=order, drop_last=True
        )
        for images, labels in loader:
            embedding = encoder(images)
            loss = sum(
                F.cross_entropy(head(embedding, settings.crop), labels, ignore_index=IGNORE_INDEX)
                for head in heads.values()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            step += 1
            if step % 100 == 0 or step == settings.steps:
                recent = losses[-100:]
                log(f"  step {step}/{settings.steps}: loss {sum(recent) / len(recent):.3f}")
            if step == settings.steps:
                break
        epoch += 1
    train_seconds = time.perf_counter() - started

    encoder.eval()
    scores = {}
    for name, head in heads.items():
        metrics = evaluate(_Probe(encoder, head).eval(), val, settings.crop, torch.device("cpu"))
        scores[name] = round(metrics["miou"], 4)
    log(f"val mIoU on the shifted scenes: {scores}")

    state = {k: v.detach().to(torch.float16) for k, v in sam.state_dict().items()}
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    provenance = {
        "file": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "bytes": out.stat().st_size,
        "format": "segment_anything state dict (sam_model_registry keys), float16 tensors",
        "script": "tuner data pretrain" + (" --quick" if settings == QUICK else ""),
        "objective": "supervised semantic segmentation, CE through a linear probe and SAM's "
        "mask decoder (both heads discarded)",
        "settings": json.loads(json.dumps(dataclasses.asdict(settings))),
        "epochs_seen": epoch,
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "val_miou_shifted": scores,
        "train_seconds": round(train_seconds, 1),
        "machine": isa_summary(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    provenance_path = out.with_suffix(".json")
    atomic_write(provenance_path, lambda tmp: tmp.write_text(json.dumps(provenance, indent=2)))
    return provenance


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuner data pretrain", description=__doc__)
    parser.add_argument("--out", type=Path, default=STANDIN_WEIGHTS, help="state-dict file")
    parser.add_argument("--quick", action="store_true", help="2 steps on 4 images (tests)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 1000)")
    parser.add_argument("--threads", type=int, help="CPU threads")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else PretrainSettings()
    if args.steps is not None or args.threads is not None:
        settings = dataclasses.replace(
            settings,
            steps=args.steps or settings.steps,
            threads=args.threads or settings.threads,
        )
    with tempfile.TemporaryDirectory(prefix="tuner-pretrain-") as work:
        provenance = pretrain(settings, args.out, Path(work))
    print(json.dumps({k: provenance[k] for k in ("file", "sha256", "bytes", "train_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
