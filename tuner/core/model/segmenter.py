"""SAM's image encoder plus a head: a semantic segmenter with a freezable prefix.

The forward is split at block boundaries (`tokens` -> `blocks(start, stop)` -> `neck` -> head)
so that the frozen-prefix cache can start a trial from block k's output (or from the neck's,
when the whole encoder is frozen).
"""

from __future__ import annotations

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

from tuner.core.config import TrainConfig
from tuner.core.data.labels import NUM_CLASSES
from tuner.core.model.adapters import adapter_parameters
from tuner.core.model.backbone import (
    PATCH_SIZE,
    CheckpointError,
    build_sam,
    detect_variant,
    load_sam_weights,
    read_state_dict,
    same_architecture,
    set_token_grid,
)
from tuner.core.model.heads import build_head
from tuner.core.registry import ADAPTERS, ENCODERS


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
        for p in self.encoder.parameters():
            p.requires_grad_(True)
        for p in self._prefix_parameters(depth).values():
            p.requires_grad_(False)

    @property
    def prefix_depth(self) -> int:
        """How many blocks at the start compute a fixed function: frozen, and with nothing
        trainable inside (an adapter such as LoRA is). The no-grad forward and the
        frozen-prefix cache stop there."""
        for index, block in enumerate(self.encoder.blocks[: self.freeze_depth]):
            if any(p.requires_grad for p in block.parameters()):
                return index
        return self.freeze_depth

    @property
    def fully_frozen(self) -> bool:
        """The whole encoder, neck included, is a fixed function: only the head trains."""
        return self.prefix_depth == self.depth

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The fixed prefix's parameters by name: everything `frozen_prefix` computes with."""
        return self._prefix_parameters(self.prefix_depth)

    def _prefix_parameters(self, depth: int) -> dict[str, torch.Tensor]:
        if depth == 0:
            return {}
        modules = {"patch_embed": self.encoder.patch_embed}
        modules |= {f"blocks.{i}": self.encoder.blocks[i] for i in range(depth)}
        if depth == self.depth:
            modules["neck"] = self.encoder.neck
        state = {
            f"{prefix}.{name}": p
            for prefix, m in modules.items()
            for name, p in m.named_parameters()
        }
        if self.encoder.pos_embed is not None:
            state["pos_embed"] = self.encoder.pos_embed
        return state

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

    def neck(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block -> (B, C, H/16, W/16) image embedding."""
        return self.encoder.neck(x.permute(0, 3, 1, 2))

    def frozen_prefix(self, images: torch.Tensor) -> torch.Tensor:
        """What the frozen part computes, without autograd: block-k tokens (B, h, w, C), or
        the neck's embedding (B, C', h, w) when the whole encoder is frozen. This is what
        the frozen-prefix cache stores."""
        with torch.no_grad():
            x = self.blocks(self.tokens(images), 0, self.prefix_depth)
            return self.neck(x) if self.fully_frozen else x

    def forward_from_prefix(self, prefix: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        if self.fully_frozen:
            return self.head(prefix, out_size)
        return self.head(self.neck(self.blocks(prefix, self.prefix_depth)), out_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out_size = tuple(images.shape[-2:])
        if self.training and self.prefix_depth > 0:  # no autograd graph through fixed blocks
            return self.forward_from_prefix(self.frozen_prefix(images), out_size)
        # One plain graph for inference, which is also what torch.export sees for INT8.
        return self.head(self.neck(self.blocks(self.tokens(images))), out_size)

    # Optimisation ----------------------------------------------------------------------------
    def parameter_groups(self, lr: float, encoder_lr_mult: float, weight_decay: float):
        """AdamW groups: encoder at lr * mult, head and adapters at lr (they start from scratch,
        the pretrained encoder is only nudged); no decay on norms, biases, position tables."""
        added = {id(p) for p in adapter_parameters(self)}
        new = [(n, p) for n, p in self.encoder.named_parameters() if id(p) in added]
        pretrained = [(n, p) for n, p in self.encoder.named_parameters() if id(p) not in added]
        groups = []
        for named, part_lr in (
            (pretrained, lr * encoder_lr_mult),
            ([*new, *self.head.named_parameters()], lr),
        ):
            decay, no_decay = [], []
            for name, p in named:
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
    return config if same_architecture(variant, config.model) else config.replace(model=variant)


def build_segmenter(
    config: TrainConfig, pretrained: bool = True, initialise: bool = True
) -> Segmenter:
    """The segmenter a config describes. With `pretrained`, SAM's weights come from
    `sam_checkpoint`, else from the model's shipped weights (the `sam_tiny` stand-in), through
    the same loading path; otherwise (and for models with neither) from a seeded random
    initialisation, which `initialise=False` skips for a caller that loads every weight next
    (a sam-tuner checkpoint)."""
    source = config.sam_checkpoint or ENCODERS[config.model].weights
    sam = build_sam(config.model, initialise=initialise and not (pretrained and source))
    if pretrained and source:
        state = read_state_dict(source)
        variant = detect_variant(state, source=str(source))
        if not same_architecture(variant, config.model):
            raise CheckpointError(f"{source}: is a {variant} checkpoint, but model={config.model}")
        load_sam_weights(sam, state, str(source))
    height, width = config.image_size
    set_token_grid(sam.image_encoder, (height // PATCH_SIZE, width // PATCH_SIZE))
    head = build_head(config.head, sam, NUM_CLASSES)
    segmenter = Segmenter(sam.image_encoder, head, config.freeze_depth)
    ADAPTERS.get_or_fail(config.adapter, "adapter")(segmenter, config)
    return segmenter
