"""LoRA as a fine-tuning method: equal to the base at the start, only adapters and head train,
the merge folds it away, checkpoints carry it, bad settings are named, the cache steps aside."""

from __future__ import annotations

import pytest
import torch
from adapted import SIZE, adapted_config, trained_a_little

from tuner.core.cache import FeatureCache
from tuner.core.config import LORA_TARGETS, TrainConfig
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.errors import ConfigError
from tuner.core.losses import get_loss
from tuner.core.model import build_segmenter
from tuner.core.model.adapters import TARGETS, LoRALinear, adapter_parameters, merge_adapters
from tuner.core.registry import HEADS, LOSSES
from tuner.core.train import fit


def lora_config(**changes) -> TrainConfig:
    return adapted_config(changes.pop("adapter", "lora"), **changes)


def test_the_config_names_what_the_adapters_module_implements():
    assert set(LORA_TARGETS) == set(TARGETS)


@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_at_initialisation_the_adapted_model_equals_the_base(targets):
    torch.manual_seed(0)
    base = build_segmenter(TrainConfig(image_size=SIZE, head="conv", freeze_depth=6)).eval()
    adapted = build_segmenter(lora_config(lora_targets=targets)).eval()
    adapted.load_state_dict(base.state_dict(), strict=False)  # the same pretrained weights
    assert any(isinstance(m, LoRALinear) for m in adapted.modules())
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        assert torch.equal(base(images), adapted(images))


@pytest.mark.parametrize("freeze_depth", [3, 6])
def test_training_changes_only_adapter_and_trainable_parameters(freeze_depth):
    torch.manual_seed(0)
    model = build_segmenter(lora_config(freeze_depth=freeze_depth)).train()
    trainable = {id(p) for p in adapter_parameters(model)}
    assert trainable and all(p.requires_grad for p in adapter_parameters(model))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-2, 1.0, 0.0))
    labels, images = torch.randint(0, 19, (2, *SIZE)), torch.randn(2, 3, *SIZE)
    for _ in range(2):  # B starts at zero, so A's gradient is zero until B has moved once
        optimizer.zero_grad()
        get_loss("ce")(model(images), labels).backward()
        optimizer.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        frozen = ("encoder.patch_embed", "encoder.pos_embed")
        frozen += tuple(f"encoder.blocks.{i}." for i in range(freeze_depth))
        if freeze_depth == model.depth:
            frozen += ("encoder.neck",)
        if id(param) in trainable:
            assert changed, name
        elif name.startswith(frozen):
            assert not param.requires_grad and not changed, name
        else:  # the head, and the blocks after the frozen ones
            assert param.requires_grad and changed, name
    counted, total = model.parameter_counts()
    assert counted == sum(p.numel() for p in model.parameters() if p.requires_grad) < total


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_and_every_loss_trains_the_adapters(head):
    # One model per head; every registered loss must give a finite value and gradients that
    # reach the adapters (B at once, A once B has moved).
    torch.manual_seed(0)
    model = build_segmenter(lora_config(head=head)).train()
    trained_a_little(model)
    labels, images = torch.randint(0, 19, (2, *SIZE)), torch.randn(2, 3, *SIZE)
    for loss in sorted(LOSSES):
        model.zero_grad()
        value = get_loss(loss)(model(images), labels)
        value.backward()
        assert torch.isfinite(value), (head, loss)
        grads = [p.grad for p in adapter_parameters(model)]
        assert all(g is not None and g.abs().sum() > 0 for g in grads), (head, loss)


def test_qv_updates_only_the_q_and_v_slices_of_qkv():
    torch.manual_seed(0)
    model = build_segmenter(lora_config(lora_targets="qv"))
    trained_a_little(model)
    qkv = model.encoder.blocks[0].attn.qkv
    third = qkv.base.out_features // 3
    delta = qkv.delta()
    assert delta[:third].abs().sum() > 0 and delta[2 * third :].abs().sum() > 0
    assert torch.equal(delta[third : 2 * third], torch.zeros_like(delta[third : 2 * third]))


@pytest.mark.parametrize("targets", LORA_TARGETS)
def test_merged_model_agrees_with_the_adapted_one(targets):
    torch.manual_seed(0)
    model = build_segmenter(lora_config(lora_targets=targets, head="linear", lora_alpha=8.0))
    model.eval()
    trained_a_little(model)
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        adapted = model(images)
        merged = merge_adapters(model)(images)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert (adapted - merged).abs().max() <= 1e-5
    assert not torch.equal(adapted, build_segmenter(lora_config(head="linear")).eval()(images))


def test_lora_blocks_are_not_served_from_the_frozen_prefix_cache(tiny_config):
    model = build_segmenter(lora_config(freeze_depth=4))
    assert model.freeze_depth == 4 and model.prefix_depth == 0 and not model.fully_frozen
    assert model.frozen_state() == {}
    plain = build_segmenter(TrainConfig(image_size=SIZE, freeze_depth=4))
    assert plain.prefix_depth == 4


def test_lora_trial_does_not_touch_the_cache(tiny_data, tiny_config, tmp_path):
    cache = FeatureCache.at(tmp_path / "cache")
    logs: list[str] = []
    fit(
        tiny_config.replace(freeze_depth=6, adapter="lora"),
        CityscapesDataset(tiny_data, "train"),
        CityscapesDataset(tiny_data, "val"),
        progress=False,
        log=logs.append,
        cache=cache,
    )
    assert any("cache off" in line for line in logs)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".lock"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"lora_rank": 0}, r"lora_rank=0: expected an integer from 1 to 128 \(the width of"),
        ({"lora_rank": 129}, r"lora_rank=129: expected an integer from 1 to 128"),
        ({"lora_targets": "q"}, r"lora_targets='q': expected qv or qkv or qkv_proj or all_linear"),
        ({"adapter": "dora"}, r"adapter='dora': expected one of none, lora, convlora, adaptformer"),
        ({"freeze_depth": 0}, r"adapter='lora': expected none unless freeze_depth >= 1"),
        ({"lora_alpha": 0.0}, r"lora_alpha=0.0: expected a positive number"),
    ],
)
def test_bad_lora_settings_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        lora_config(**changes).validate("run.yaml")


def test_rank_wider_than_the_model_is_refused_when_building():
    with pytest.raises(ConfigError, match="lora_rank=999: expected 1 to 128"):
        build_segmenter(lora_config(lora_rank=999))
