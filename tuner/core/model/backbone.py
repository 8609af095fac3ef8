"""SAM itself: the official ViT-B/L/H builders, a tiny config of the same modules, checkpoint
loading, and resizing of positional tables for inputs other than the pre-training size."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from tuner.core.errors import CheckpointError
from tuner.core.model.attention import use_fused_attention
from tuner.core.registry import ENCODERS

PATCH_SIZE = 16
# The pretrained stand-in for SAM that the embedded default starts from (`tuner data pretrain`).
STANDIN_WEIGHTS = Path(__file__).resolve().parent / "weights" / "sam_tiny_standin.pth"


@dataclass(frozen=True)
class EncoderSpec:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_dim: int = 256  # neck output channels = mask decoder width
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    pretrain_size: int = 1024
    official: bool = True
    weights: Path | None = None  # what it starts from without --checkpoint (None: random)


_TINY = EncoderSpec(
    embed_dim=128,
    depth=6,
    num_heads=4,
    global_attn_indexes=(2, 5),
    window_size=8,
    prompt_dim=128,
    decoder_mlp_dim=512,
    decoder_heads=4,
    pretrain_size=256,
    official=False,
)
# ~2 M parameters, same modules as SAM: trains on a laptop CPU in seconds per epoch. It starts
# from the shipped stand-in for SAM's pretrained weights; `sam_tiny_scratch` is the same model
# from a seeded random initialisation.
ENCODERS["sam_tiny"] = dataclasses.replace(_TINY, weights=STANDIN_WEIGHTS)
ENCODERS["sam_tiny_scratch"] = _TINY
ENCODERS["vit_b"] = EncoderSpec(768, 12, 12, (2, 5, 8, 11))
ENCODERS["vit_l"] = EncoderSpec(1024, 24, 16, (5, 11, 17, 23))
ENCODERS["vit_h"] = EncoderSpec(1280, 32, 16, (7, 15, 23, 31))


def same_architecture(a: str, b: str) -> bool:
    """Whether a checkpoint of model `a` fits model `b` (sam_tiny and sam_tiny_scratch do)."""
    spec_a, spec_b = ENCODERS[a], ENCODERS[b]
    return dataclasses.replace(spec_a, weights=None) == dataclasses.replace(spec_b, weights=None)


def scratch_variant(name: str) -> str:
    """The model of `name`'s architecture that starts from random weights (`--from-scratch`)."""
    if ENCODERS[name].weights is None:
        return name
    return next(
        n for n, spec in ENCODERS.items() if spec.weights is None and same_architecture(n, name)
    )


def build_sam(name: str, initialise: bool = True) -> Sam:
    """A SAM whose encoder attention runs through SDPA, randomly initialised (seeded by the
    caller), or with `initialise=False` allocated but not initialised, for weights that are
    about to be loaded: vit_b's random initialisation alone takes most of a second.

    Official variants come from `sam_model_registry`. Weights are never passed to the registry
    builders: they call `torch.load` without `weights_only`, so checkpoints are loaded here
    instead (see `load_sam_weights`).
    """
    if initialise:
        sam = _build_sam_modules(name)
    else:
        with torch.device("meta"):
            sam = _build_sam_modules(name)
        sam = sam.to_empty(device="cpu")
        # Sam's only non-persistent buffers: not in any state dict, so set them here.
        sam.pixel_mean.copy_(torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1))
        sam.pixel_std.copy_(torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1))
    use_fused_attention(sam.image_encoder)
    return sam


def _build_sam_modules(name: str) -> Sam:
    spec = ENCODERS[name]
    if spec.official:
        return sam_model_registry[name]()
    grid = spec.pretrain_size // PATCH_SIZE
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=spec.depth,
            embed_dim=spec.embed_dim,
            img_size=spec.pretrain_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.num_heads,
            patch_size=PATCH_SIZE,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=spec.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(spec.pretrain_size, spec.pretrain_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2,
                embedding_dim=spec.prompt_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_heads,
            ),
            transformer_dim=spec.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.prompt_dim,
        ),
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True (memory-mapped when the file allows), clear errors."""
    path = Path(path)
    state = load_weights_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def load_weights_file(path: Path):
    """`torch.load(weights_only=True)`; anything it refuses (random bytes, a truncated file, a
    pickle that would run code) is one line that never suggests turning the guard off."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CheckpointError(
            f"{path}: not a PyTorch weights file, or it holds code; refused for safety"
        ) from None


def detect_variant(state: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Which of ENCODERS a SAM state dict belongs to, from its tensor shapes."""
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(f"{source}: not a SAM checkpoint (no {key!r})")
    embed_dim = state[key].shape[0]
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, spec in ENCODERS.items():
        if (spec.embed_dim, spec.depth) == (embed_dim, depth):
            return name
    raise CheckpointError(
        f"{source}: unknown SAM encoder (embed_dim={embed_dim}, depth={depth}); "
        f"known: {', '.join(f'{n}={s.embed_dim}x{s.depth}' for n, s in ENCODERS.items())}"
    )


def load_sam_weights(sam: Sam, state: dict[str, torch.Tensor], source: str) -> None:
    """Load an official-format state dict, resizing positional tables to this model's input."""
    state = resize_positional_tables(state, sam.state_dict(), source)
    missing, unexpected = sam.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not match the SAM architecture "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )


def resize_positional_tables(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Interpolate `pos_embed` (bicubic) and relative-position tables (linear) in `state` to the
    shapes in `target`, as SAMed does to fine-tune at 512 from 1024 weights."""
    out = dict(state)
    for key, value in state.items():
        if key not in target or target[key].shape == value.shape:
            continue
        want = target[key].shape
        if key.endswith("pos_embed"):
            out[key] = resize_pos_embed(value, (want[1], want[2]))
        elif key.endswith(("rel_pos_h", "rel_pos_w")):
            out[key] = resize_rel_pos(value, want[0])
        else:
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(want)}"
            )
    return out


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, h, w, C) -> (1, gh, gw, C)."""
    x = pos_embed.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) -> (length, C), as segment_anything's get_rel_pos does on the fly."""
    x = rel_pos.float().t().unsqueeze(0)
    x = F.interpolate(x, size=length, mode="linear", align_corners=False)
    return x.squeeze(0).t().to(rel_pos.dtype).contiguous()


def set_token_grid(encoder: ImageEncoderViT, grid: tuple[int, int]) -> None:
    """Resize the encoder's positional parameters for a (gh, gw) token grid, in place.

    Window-attention blocks keep their tables (their size depends on the window only); global
    blocks get tables for the new grid, so no per-forward interpolation happens.
    """
    gh, gw = grid
    if encoder.pos_embed is not None and tuple(encoder.pos_embed.shape[1:3]) != grid:
        encoder.pos_embed = torch.nn.Parameter(resize_pos_embed(encoder.pos_embed.data, grid))
    for block in encoder.blocks:
        attn = block.attn
        if block.window_size != 0 or not attn.use_rel_pos:
            continue
        if attn.rel_pos_h.shape[0] != 2 * gh - 1:
            attn.rel_pos_h = torch.nn.Parameter(resize_rel_pos(attn.rel_pos_h.data, 2 * gh - 1))
        if attn.rel_pos_w.shape[0] != 2 * gw - 1:
            attn.rel_pos_w = torch.nn.Parameter(resize_rel_pos(attn.rel_pos_w.data, 2 * gw - 1))
