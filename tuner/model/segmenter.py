"""SAM's image encoder plus a head: a semantic segmenter with a freezable prefix.

The forward is split at block boundaries (`tokens` -> `blocks(start, stop)` -> `decode`) so a
later cache of frozen-prefix activations can start a trial from block k's output.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from tuner.config import TrainConfig
from tuner.data.labels import NUM_CLASSES
from tuner.model.backbone import (
    PATCH_SIZE,
    CheckpointError,
    build_sam,
    detect_variant,
    load_sam_weights,
    read_state_dict,
    set_token_grid,
)
from tuner.model.heads import build_head


class Segmenter(nn.Module):
    def __init__(self, encoder: ImageEncoderViT, head: nn.Module, freeze_depth: int = 0):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.freeze_depth = 0
        self.freeze(freeze_depth)

    @property
    def depth(self) -> int:
        return len(self.encoder.blocks)

    def freeze(self, depth: int) -> None:
        """Freeze patch + position embedding and the first `depth` blocks (and the neck too
        when the whole encoder is frozen). Frozen parameters get no gradient and are left out
        of the optimizer."""
        if not 0 <= depth <= self.depth:
            raise ValueError(f"freeze_depth={depth}: expected 0..{self.depth}")
        self.freeze_depth = depth
        frozen: list[nn.Module | nn.Parameter] = []
        if depth > 0:
            frozen += [self.encoder.patch_embed, *self.encoder.blocks[:depth]]
            if self.encoder.pos_embed is not None:
                frozen.append(self.encoder.pos_embed)
        if depth == self.depth:
            frozen.append(self.encoder.neck)
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        for item in frozen:
            params = [item] if isinstance(item, nn.Parameter) else item.parameters()
            for p in params:
                p.requires_grad_(False)

    # The forward, in pieces ------------------------------------------------------------------
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, H/16, W/16, C) tokens with position added."""
        x = self.encoder.patch_embed(images)
        if self.encoder.pos_embed is not None:
            if x.shape[1:3] != self.encoder.pos_embed.shape[1:3]:
                raise ValueError(
                    f"input {tuple(images.shape[-2:])} gives a {tuple(x.shape[1:3])} token grid; "
                    f"this model was built for {tuple(self.encoder.pos_embed.shape[1:3])}"
                )
            x = x + self.encoder.pos_embed
        return x

    def blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        for block in self.encoder.blocks[start:stop]:
            x = block(x)
        return x

    def decode(self, x: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        """Tokens after the last block -> class logits at `out_size`."""
        return self.head(self.encoder.neck(x.permute(0, 3, 1, 2)), out_size)

    def frozen_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """Block-k output for k = freeze_depth; no autograd graph, since nothing in it trains."""
        with torch.no_grad():
            return self.blocks(self.tokens(images), 0, self.freeze_depth)

    def forward_from_prefix(self, prefix: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return self.decode(self.blocks(prefix, self.freeze_depth), out_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out_size = tuple(images.shape[-2:])
        if self.freeze_depth > 0 and self.training:
            return self.forward_from_prefix(self.frozen_prefix(images), out_size)
        return self.decode(self.blocks(self.tokens(images)), out_size)

    # Optimisation ----------------------------------------------------------------------------
    def parameter_groups(self, lr: float, encoder_lr_mult: float, weight_decay: float):
        """AdamW groups: encoder at lr * mult, head at lr; no decay on norms, biases, tables."""
        groups = []
        for part, part_lr in ((self.encoder, lr * encoder_lr_mult), (self.head, lr)):
            decay, no_decay = [], []
            for name, p in part.named_parameters():
                if not p.requires_grad:
                    continue
                flat = p.ndim <= 1 or name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w"))
                (no_decay if flat else decay).append(p)
            groups += [
                {"params": decay, "lr": part_lr, "weight_decay": weight_decay},
                {"params": no_decay, "lr": part_lr, "weight_decay": 0.0},
            ]
        return [g for g in groups if g["params"]]

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total)."""
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return trainable, total


def resolve_model(config: TrainConfig) -> TrainConfig:
    """With an official checkpoint, the variant is whatever the checkpoint is."""
    if not config.sam_checkpoint:
        return config
    state = read_state_dict(config.sam_checkpoint)
    variant = detect_variant(state, source=config.sam_checkpoint)
    return config if variant == config.model else config.replace(model=variant)


def build_segmenter(config: TrainConfig, pretrained: bool = True) -> Segmenter:
    """The segmenter a config describes; with `pretrained`, SAM weights from `sam_checkpoint`."""
    sam = build_sam(config.model)
    if pretrained and config.sam_checkpoint:
        source = config.sam_checkpoint
        state = read_state_dict(source)
        variant = detect_variant(state, source=source)
        if variant != config.model:
            raise CheckpointError(f"{source}: is a {variant} checkpoint, but model={config.model}")
        load_sam_weights(sam, state, source)
    height, width = config.image_size
    set_token_grid(sam.image_encoder, (height // PATCH_SIZE, width // PATCH_SIZE))
    head = build_head(config.head, sam, NUM_CLASSES)
    return Segmenter(sam.image_encoder, head, config.freeze_depth)
