"""SAM backbones, checkpoints, positional-table resizing, freezing and the heads."""

from __future__ import annotations

import pytest
import torch
from segment_anything import sam_model_registry

from tuner.core.config import TrainConfig
from tuner.core.errors import CheckpointError
from tuner.core.losses import LOSSES, get_loss
from tuner.core.model import HEADS, build_segmenter, resolve_model
from tuner.core.model.backbone import (
    build_sam,
    detect_variant,
    resize_pos_embed,
    resize_rel_pos,
)


def test_official_format_vit_b_state_dict_loads_at_512(tmp_path):
    path = tmp_path / "sam_vit_b_like.pth"
    sam = sam_model_registry["vit_b"]()
    torch.save(sam.state_dict(), path)  # exactly how the official checkpoints were written
    config = resolve_model(
        TrainConfig(image_size=(512, 512), head="mask_decoder", sam_checkpoint=str(path))
    )
    assert config.model == "vit_b"  # detected from tensor shapes
    model = build_segmenter(config)
    # pos_embed was resized 64x64 -> 32x32 (bicubic), the same as resizing the source table.
    expected = resize_pos_embed(sam.image_encoder.pos_embed.data, (32, 32))
    assert torch.allclose(model.encoder.pos_embed, expected)
    # Global-attention blocks got 2*32-1 relative positions; window blocks keep 2*14-1.
    assert model.encoder.blocks[2].attn.rel_pos_h.shape[0] == 63
    assert model.encoder.blocks[0].attn.rel_pos_h.shape[0] == 27
    assert torch.equal(
        model.encoder.blocks[0].attn.qkv.weight, sam.image_encoder.blocks[0].attn.qkv.weight
    )
    # The mask-decoder head starts from SAM's pretrained two-way transformer.
    assert torch.equal(
        model.head.transformer.layers[0].self_attn.q_proj.weight,
        sam.mask_decoder.transformer.layers[0].self_attn.q_proj.weight,
    )
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 512, 512))
    assert out.shape == (1, 19, 512, 512) and torch.isfinite(out).all()


def test_rel_pos_resize_matches_segment_anything_on_the_fly_interpolation():
    from segment_anything.modeling.image_encoder import get_rel_pos

    table = torch.randn(127, 64)
    ours = resize_rel_pos(table, 63)
    theirs = get_rel_pos(32, 32, table)  # SAM interpolates to 63 rows internally
    assert torch.allclose(
        ours[(torch.arange(32)[:, None] - torch.arange(32)[None, :] + 31)], theirs, atol=1e-6
    )


def test_non_square_crops_build_a_matching_token_grid():
    model = build_segmenter(TrainConfig(image_size=(64, 128)))
    assert tuple(model.encoder.pos_embed.shape[1:3]) == (4, 8)
    assert model(torch.randn(1, 3, 64, 128)).shape == (1, 19, 64, 128)
    with pytest.raises(ValueError, match="token grid"):
        model(torch.randn(1, 3, 64, 64))


def test_detect_variant_and_bad_checkpoints(tmp_path):
    assert detect_variant(build_sam("sam_tiny").state_dict()) == "sam_tiny"
    with pytest.raises(CheckpointError, match="not a SAM checkpoint"):
        detect_variant({"weight": torch.zeros(1)}, source="x.pth")
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="missing.pth: checkpoint file not found"):
        build_segmenter(TrainConfig(sam_checkpoint=str(missing)))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02garbage")
    with pytest.raises(
        CheckpointError, match="corrupt.pth: not a PyTorch weights file, or it holds code; refused"
    ):
        build_segmenter(TrainConfig(sam_checkpoint=str(corrupt)))
    tiny = tmp_path / "tiny.pth"
    torch.save(build_sam("sam_tiny").state_dict(), tiny)
    with pytest.raises(CheckpointError, match="is a sam_tiny checkpoint, but model=vit_b"):
        build_segmenter(TrainConfig(model="vit_b", sam_checkpoint=str(tiny)))


def test_weights_only_loading_refuses_pickled_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    torch.save({"image_encoder.patch_embed.proj.weight": Payload()}, evil)
    with pytest.raises(
        CheckpointError, match="evil.pth: not a PyTorch weights file, or it holds code; refused"
    ):
        build_segmenter(TrainConfig(sam_checkpoint=str(evil)))


@pytest.mark.parametrize("depth", [0, 3, 6])
def test_freezing_trains_only_what_it_should(depth):
    torch.manual_seed(0)
    config = TrainConfig(image_size=(64, 128), freeze_depth=depth, head="conv")
    model = build_segmenter(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-2, 1.0, 0.0))
    images, labels = torch.randn(2, 3, 64, 128), torch.randint(0, 19, (2, 64, 128))
    get_loss("ce")(model(images), labels).backward()
    optimizer.step()
    frozen_prefix = ("encoder.patch_embed", "encoder.pos_embed") if depth else ()
    frozen_prefix += tuple(f"encoder.blocks.{i}." for i in range(depth))
    if depth == model.depth:
        frozen_prefix += ("encoder.neck",)
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        if name.startswith(frozen_prefix):
            assert not param.requires_grad and not changed, name
        elif param.requires_grad:
            assert changed, name
    trainable, total = model.parameter_counts()
    assert (trainable < total) == (depth > 0)


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_and_head_runs_a_training_step(head, loss):
    torch.manual_seed(0)
    model = build_segmenter(TrainConfig(image_size=(64, 64), head=head, freeze_depth=2))
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 0.1, 0.01))
    labels = torch.randint(0, 19, (2, 64, 64))
    labels[:, :8] = 255
    value = get_loss(loss)(model(torch.randn(2, 3, 64, 64)), labels)
    value.backward()
    optimizer.step()
    assert torch.isfinite(value)
    head_grads = [p.grad for p in model.head.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in head_grads)


def test_mask_decoder_head_handles_a_batch_without_squaring_it():
    model = build_segmenter(TrainConfig(image_size=(64, 64), head="mask_decoder")).eval()
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        batch = model(images)
        single = torch.cat([model(images[i : i + 1]) for i in range(3)])
    assert batch.shape == (3, 19, 64, 64)
    assert torch.allclose(batch, single, atol=1e-5)


def test_frozen_prefix_forward_equals_the_full_forward():
    model = build_segmenter(TrainConfig(image_size=(64, 128), freeze_depth=4)).eval()
    images = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        full = model(images)
        split = model.forward_from_prefix(model.frozen_prefix(images), (64, 128))
    assert torch.allclose(full, split, atol=1e-6)


@pytest.mark.parametrize("size", [(64, 128), (96, 96)])
def test_fused_attention_matches_segment_anything_attention(size):
    """SDPA with the decomposed relative-position bias equals SAM's explicit softmax, for
    windowed and global blocks, at two input sizes (fp32, CPU)."""
    from segment_anything.modeling.image_encoder import Attention

    from tuner.core.model.attention import FusedAttention

    torch.manual_seed(0)
    model = build_segmenter(TrainConfig(model="sam_tiny", head="linear", image_size=size))
    encoder = model.encoder
    for block in encoder.blocks:  # SAM zero-initialises the tables; make the bias matter
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
    windowed = [b for b in encoder.blocks if b.window_size > 0]
    global_ = [b for b in encoder.blocks if b.window_size == 0]
    assert windowed and global_
    assert all(type(b.attn) is FusedAttention for b in encoder.blocks)  # the default path
    tokens = model.tokens(torch.randn(2, 3, *size))
    for block in (windowed[0], global_[0]):
        with torch.no_grad():
            fused = block(tokens)
            block.attn.__class__ = Attention
            reference = block(tokens)
            block.attn.__class__ = FusedAttention
        assert torch.allclose(fused, reference, atol=1e-5), (fused - reference).abs().max()
    # Same parameters as segment_anything's own modules: official checkpoints load unchanged.
    assert set(build_sam("vit_b").state_dict()) == set(sam_model_registry["vit_b"]().state_dict())


def test_fused_attention_gradients_match():
    from segment_anything.modeling.image_encoder import Attention

    torch.manual_seed(0)
    model = build_segmenter(TrainConfig(model="sam_tiny", head="linear", image_size=(64, 64)))
    block = model.encoder.blocks[2]  # global attention
    torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
    tokens = torch.randn(1, 4, 4, 128)
    grads = []
    for cls in (type(block.attn), Attention):
        block.attn.__class__ = cls
        block.zero_grad()
        block(tokens).square().sum().backward()
        grads.append(block.attn.rel_pos_h.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-4)
