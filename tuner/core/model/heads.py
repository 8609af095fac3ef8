"""Segmentation heads on SAM's image embedding, registered in `tuner.core.registry.HEADS`.

A head is built from the SAM it sits on (so it can reuse pretrained parts) and the number of
classes; it maps the (B, C, H/16, W/16) embedding to (B, K, H, W) logits. Adding a head is one
class plus one decorator::

    >>> import torch
    >>> from torch import nn
    >>> from tuner.core.registry import HEADS
    >>> @HEADS.register("nearest_probe")
    ... class NearestProbe(nn.Module):
    ...     def __init__(self, sam, num_classes):
    ...         super().__init__()
    ...         self.classifier = nn.Conv2d(sam.image_encoder.neck[-2].out_channels, num_classes, 1)
    ...
    ...     def forward(self, embedding, out_size):
    ...         return nn.functional.interpolate(self.classifier(embedding), size=out_size)
    >>> from tuner.core.config import TrainConfig
    >>> from tuner.core.model import build_segmenter
    >>> model = build_segmenter(TrainConfig(head="nearest_probe", image_size=(64, 64)))
    >>> tuple(model.eval()(torch.zeros(1, 3, 64, 64)).shape)
    (1, 19, 64, 64)
    >>> del HEADS["nearest_probe"]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from tuner.core.registry import HEADS


def build_head(name: str, sam: Sam, num_classes: int) -> nn.Module:
    return HEADS.get_or_fail(name, "head")(sam, num_classes)


def _embedding_channels(sam: Sam) -> int:
    return sam.image_encoder.neck[-2].out_channels


def _upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@HEADS.register("linear")
class LinearHead(nn.Module):
    """A 1x1 convolution on the embedding, upsampled: the linear probe of Kerssies et al."""

    def __init__(self, sam: Sam, num_classes: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(_embedding_channels(sam), num_classes, 1)

    def forward(self, embedding: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return _upsample(self.classifier(self.dropout(embedding)), out_size)


@HEADS.register("conv")
class ProgressiveUpsamplingHead(nn.Module):
    """Three (2x upsample, 3x3 conv, GroupNorm, GELU) stages to 1/2 resolution, then a 1x1
    classifier. Recovering resolution step by step is kinder to thin objects and edges than
    one 16x bilinear jump (SETR-PUP)."""

    def __init__(self, sam: Sam, num_classes: int, widths: tuple[int, ...] = (128, 64, 32)):
        super().__init__()
        stages, channels = [], _embedding_channels(sam)
        for width in widths:
            stages.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.GroupNorm(8, width),
                    nn.GELU(),
                )
            )
            channels = width
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, embedding: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        return _upsample(self.classifier(self.stages(embedding)), out_size)


@HEADS.register("mask_decoder")
class MaskDecoderHead(nn.Module):
    """SAM's own two-way-transformer mask decoder, promptless, with one learned mask token per
    class (as SAMed). The transformer and upscaling layers keep SAM's pretrained weights; the
    class tokens and their hypernetwork MLPs are new.

    SAM's `MaskDecoder.predict_masks` repeats the image embedding once per prompt batch, which
    turns a batch of B images into B*B; this forward runs the same modules once per image.
    """

    def __init__(self, sam: Sam, num_classes: int) -> None:
        super().__init__()
        decoder, prompt = sam.mask_decoder, sam.prompt_encoder
        dim = decoder.transformer_dim
        self.transformer = decoder.transformer
        self.output_upscaling = decoder.output_upscaling
        self.pe_layer = prompt.pe_layer  # random Fourier features, pretrained matrix
        self.no_mask_embed = prompt.no_mask_embed  # SAM's dense embedding when no mask prompt
        self.class_tokens = nn.Embedding(num_classes, dim)
        self.hypernetworks = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(num_classes))
        for mlp in self.hypernetworks:  # start every class from SAM's first mask MLP
            mlp.load_state_dict(decoder.output_hypernetworks_mlps[0].state_dict())

    def dense_pe(self, h: int, w: int) -> torch.Tensor:
        """(C, h, w) random Fourier position encoding of the token grid, as SAM's
        `PositionEmbeddingRandom.forward` computes it, but in the matrix's own dtype (SAM's
        builds its grid in float32 whatever the model's dtype is)."""
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        y = (torch.arange(h, device=matrix.device, dtype=matrix.dtype) + 0.5) / h
        x = (torch.arange(w, device=matrix.device, dtype=matrix.dtype) + 0.5) / w
        coords = torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1)  # (h, w, 2): x, y
        projected = 2 * torch.pi * ((2 * coords - 1) @ matrix)
        return torch.cat([projected.sin(), projected.cos()], dim=-1).permute(2, 0, 1)

    def forward(self, embedding: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        b, c, h, w = embedding.shape
        image_pe = self.dense_pe(h, w).unsqueeze(0).expand(b, -1, -1, -1)
        src = embedding + self.no_mask_embed.weight.reshape(1, -1, 1, 1)
        tokens = self.class_tokens.weight.unsqueeze(0).expand(b, -1, -1)
        tokens_out, src = self.transformer(src, image_pe, tokens)
        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        weights = torch.stack(
            [mlp(tokens_out[:, i]) for i, mlp in enumerate(self.hypernetworks)], dim=1
        )
        bu, cu, hu, wu = upscaled.shape
        logits = (weights @ upscaled.reshape(bu, cu, hu * wu)).reshape(bu, -1, hu, wu)
        return _upsample(logits, out_size)
