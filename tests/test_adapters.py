"""Every fine-tuning method (LoRA, ConvLoRA, AdaptFormer): equal to the base at the start, only
adapters and head train at full freeze, every head and loss reaches them, they keep the
source's dtype, checkpoints carry them as deltas, and the ones that cannot be merged are
deployed as modules. LoRA's own details (slices, merge) are in test_lora.py."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from adapted import SIZE, adapted_config, trained_a_little
from click.testing import CliRunner
from optuna.trial import TrialState

from tuner.cli import main
from tuner.core.checkpoint import load_checkpoint, load_segmenter
from tuner.core.config import TrainConfig
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.errors import ConfigError
from tuner.core.losses import get_loss
from tuner.core.model import build_segmenter
from tuner.core.model.adapters import (
    Adapted,
    AdaptMLP,
    ConvLoRALinear,
    LoRALinear,
    adapter_parameters,
    deployed_config,
    describe_adapter,
    has_adapters,
    merge_adapters,
    strip_adapters,
)
from tuner.core.registry import ADAPTERS, HEADS, LOSSES
from tuner.core.train import fit
from tuner.deploy.quantize import load_quantized, read_meta
from tuner.report._optuna_figures import ABSENT, optuna_figures, with_absent_params
from tuner.search.space import find_space, load_space
from tuner.search.study import load_existing_study, open_storage

METHODS = ("lora", "convlora", "adaptformer")
UNMERGEABLE = ("convlora", "adaptformer")


def test_the_registry_holds_every_method():
    assert {"none", *METHODS} <= set(ADAPTERS)


@pytest.mark.parametrize("adapter", METHODS)
def test_at_initialisation_the_adapted_model_equals_the_base(adapter):
    torch.manual_seed(0)
    base = build_segmenter(TrainConfig(image_size=SIZE, head="conv", freeze_depth=6)).eval()
    adapted = build_segmenter(adapted_config(adapter)).eval()
    adapted.load_state_dict(base.state_dict(), strict=False)  # the same pretrained weights
    assert has_adapters(adapted) and adapter_parameters(adapted)
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        assert (base(images) - adapted(images)).abs().max() <= 1e-6


@pytest.mark.parametrize("adapter", METHODS)
def test_at_full_freeze_only_adapter_and_head_parameters_get_gradients(adapter):
    torch.manual_seed(0)
    model = build_segmenter(adapted_config(adapter)).train()
    assert model.freeze_depth == model.depth and model.prefix_depth == 0
    trained_a_little(model)
    added = {id(p) for p in adapter_parameters(model)}
    head = {id(p) for p in model.head.parameters()}
    labels, images = torch.randint(0, 19, (2, *SIZE)), torch.randn(2, 3, *SIZE)
    get_loss("ce")(model(images), labels).backward()
    for name, param in model.named_parameters():
        if id(param) in added or id(param) in head:
            assert param.requires_grad, name
        else:
            assert not param.requires_grad and param.grad is None, name
    trainable, _ = model.parameter_counts()
    assert trainable == sum(p.numel() for p in model.parameters() if id(p) in added | head)


@pytest.mark.parametrize("adapter", METHODS)
@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_and_every_loss_trains_every_adapter(adapter, head):
    # Every registered loss must give a finite value and gradients that reach every adapter
    # module (ConvLoRA's gate picks one expert per image, so not every expert's convolution).
    torch.manual_seed(0)
    model = build_segmenter(adapted_config(adapter, head=head)).train()
    trained_a_little(model)
    modules = [m for m in model.modules() if isinstance(m, Adapted)]
    assert len(modules) >= model.depth
    labels, images = torch.randint(0, 19, (2, *SIZE)), torch.randn(2, 3, *SIZE)
    for loss in sorted(LOSSES):
        model.zero_grad()
        value = get_loss(loss)(model(images), labels)
        value.backward()
        assert torch.isfinite(value), (adapter, head, loss)
        for module in modules:
            reached = sum(
                p.grad.abs().sum() for p in module.added_parameters() if p.grad is not None
            )
            assert reached > 0, (adapter, head, loss, type(module).__name__)


@pytest.mark.parametrize("adapter", METHODS)
def test_a_new_adapter_takes_its_dtype_from_the_module_it_wraps(adapter):
    config = adapted_config(adapter)
    model = build_segmenter(config.replace(adapter="none")).to(torch.float64)
    ADAPTERS[adapter](model, config)  # adapters added to a float64 model
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    with torch.no_grad():
        assert model(torch.randn(1, 3, *SIZE, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("adapter", UNMERGEABLE)
def test_unmergeable_adapters_stay_modules_and_the_deployed_config_says_so(adapter):
    torch.manual_seed(0)
    config = adapted_config(adapter, head="linear")
    model = build_segmenter(config).eval()
    trained_a_little(model)
    images = torch.randn(2, 3, *SIZE)
    with torch.no_grad():
        before = model(images)
        merged = merge_adapters(model)(images)
        assert torch.equal(before, merged)  # nothing folded: the same modules ran
        assert deployed_config(config, model).adapter == adapter
        stripped = strip_adapters(model)(images)
    assert not has_adapters(model) and not torch.equal(before, stripped)
    block = build_segmenter(config).encoder.blocks[0]
    wrapped = block.mlp if adapter == "adaptformer" else block.attn.qkv
    with pytest.raises(TypeError, match="cannot be folded"):
        wrapped.merged()


def test_lora_merges_and_its_deployed_config_has_no_adapter():
    config = adapted_config("lora")
    model = merge_adapters(build_segmenter(config))
    assert not has_adapters(model) and deployed_config(config, model).adapter == "none"


def test_adaptformer_wraps_each_frozen_blocks_mlp_at_the_configured_size():
    model = build_segmenter(adapted_config("adaptformer", adapter_dim=24, adapter_scale=0.5))
    mlps = [block.mlp for block in model.encoder.blocks]
    assert all(isinstance(m, AdaptMLP) for m in mlps)
    assert {(m.down.out_features, m.scale) for m in mlps} == {(24, 0.5)}
    assert all(torch.equal(m.up.weight, torch.zeros_like(m.up.weight)) for m in mlps)
    partial = build_segmenter(adapted_config("adaptformer", freeze_depth=2))
    assert [isinstance(b.mlp, AdaptMLP) for b in partial.encoder.blocks] == [True] * 2 + [False] * 4


def test_convlora_convolves_over_the_token_grid():
    torch.manual_seed(0)
    model = build_segmenter(adapted_config("convlora", lora_targets="qv", convlora_experts=4))
    qkv = model.encoder.blocks[0].attn.qkv
    assert isinstance(qkv, ConvLoRALinear)
    assert [e.scales for e in qkv.experts] == [(1, 2, 3, 4)] * 2  # q and v
    trained_a_little(model)
    grid = torch.randn(1, 8, 8, qkv.base.in_features)
    moved = grid.clone()
    moved[0, 0, 0] += 1.0  # one token changes...
    with torch.no_grad():
        change = (qkv(moved) - qkv(grid)).abs().sum(-1)[0]
    assert change[0, 1] > 0 and change[1, 1] > 0  # ...and so do its neighbours' outputs
    with pytest.raises(ValueError, match="token grid"):
        qkv(torch.randn(4, qkv.base.in_features))


def test_new_methods_default_to_the_published_placement():
    for adapter in UNMERGEABLE:
        assert TrainConfig.from_dict({"adapter": adapter}).freeze_depth == 6  # every block
        assert TrainConfig.from_dict({"adapter": adapter, "freeze_depth": 3}).freeze_depth == 3
    with pytest.raises(ConfigError, match="adapter='lora': expected none unless freeze_depth"):
        TrainConfig.from_dict({"adapter": "lora"})  # LoRA keeps its explicit depth


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"adapter_dim": 0}, r"adapter_dim=0: expected an integer from 1 to 512"),
        ({"adapter_scale": 0.0}, r"adapter_scale=0.0: expected a positive number"),
        ({"convlora_experts": 0}, r"convlora_experts=0: expected an integer from 1 to 16"),
        ({"freeze_depth": 0}, r"adapter='adaptformer': expected none unless freeze_depth >= 1"),
    ],
)
def test_bad_adapter_settings_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        adapted_config("adaptformer", **changes).validate("run.yaml")


@pytest.mark.parametrize("adapter", METHODS)
def test_a_checkpoint_holds_what_trained_and_loads_back(tiny_data, tiny_config, tmp_path, adapter):
    config = tiny_config.replace(adapter=adapter, freeze_depth=6, lora_rank=2, lora_targets="qkv")
    config = config.replace(adapter_dim=8, convlora_experts=2)
    logs: list[str] = []
    summary = fit(
        config,
        CityscapesDataset(tiny_data, "train"),
        CityscapesDataset(tiny_data, "val"),
        out_dir=tmp_path,
        progress=False,
        log=logs.append,
    )
    assert any(describe_adapter(config) in line and "trainable" in line for line in logs)
    ckpt = load_checkpoint(summary.checkpoint)
    assert ckpt.is_delta and ckpt.config == config
    # The frozen encoder is the base's: only the head, the adapters and resized tables are kept.
    stored = set(ckpt.state_dict)
    encoder = [k for k in stored if k.startswith("encoder.") and "pos" not in k]
    assert all(_is_added(k) for k in encoder)
    model, _ = load_segmenter(summary.checkpoint)
    new = {id(p) for p in adapter_parameters(model)}
    added = {name for name, p in model.named_parameters() if id(p) in new}
    assert added and added <= stored
    assert any(ckpt.state_dict[k].abs().sum() > 0 for k in added if ".up." in k)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ckpt.state_dict.items())


def _is_added(key: str) -> bool:
    return any(part in key for part in (".down.", ".up.", ".experts."))


def test_adapters_space_covers_every_method_at_two_sizes():
    space = load_space(find_space("adapters"))
    points = space.points()
    assert space.enumerated and space.trial_budget == len(points) == 8
    assert space.confirm.top == 2 and space.confirm.seeds == 1
    assert {"adapter": "none", "freeze_depth": 0} in points  # full fine-tuning
    assert {"adapter": "none", "freeze_depth": 6} in points  # frozen encoder
    sizes = {
        (p["adapter"], p.get("lora_rank", p.get("adapter_dim")))
        for p in points
        if p["adapter"] != "none"
    }
    assert sizes == {
        ("lora", 4),
        ("lora", 16),
        ("convlora", 4),
        ("convlora", 16),
        ("adaptformer", 16),
        ("adaptformer", 64),
    }
    assert all(p["freeze_depth"] == 6 for p in points if p["adapter"] != "none")


def test_when_accepts_a_list_of_values(tmp_path):
    raw = yaml.safe_load(find_space("adapters").read_text())
    raw["params"]["lora_rank"]["when"] = {"adapter": ["lora", "dora"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"params.lora_rank.when: adapter='dora' is not one of"):
        load_space(bad)


@pytest.mark.slow
@pytest.mark.parametrize("adapter", METHODS)
def test_trains_evaluates_predicts_and_quantizes_from_the_cli(
    tiny_data, tuner_home, tmp_path, adapter
):
    run = tmp_path / "run"
    train = ["train", "--data", str(tiny_data), "--out", str(run), "--adapter", adapter]
    train += ["--head", "linear", "--epochs", "1", "--batch-size", "2"]
    train += ["--image-size", "64", "128", "--threads", "2"]
    if adapter == "lora":  # LoRA keeps an explicit depth
        train += ["--lora-rank", "4", "--freeze-depth", "4"]
        shown = "freeze_depth=4, lora rank 4 on qv"
    else:  # the published placement by default: every block, the encoder frozen
        train += ["--adapter-dim", "8", "--convlora-experts", "2"]
        shown = f"freeze_depth=6, {adapter}"
    result = CliRunner().invoke(main, train, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert shown in result.output
    checkpoint = run / "best.pt"
    evaluate = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tiny_data)]
    result = CliRunner().invoke(main, evaluate, catch_exceptions=False)
    assert result.exit_code == 0 and "miou" in result.output.lower(), result.output
    image = next((tiny_data / "leftImg8bit" / "val").rglob("*.png"))
    predict = ["predict", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "pred")]
    result = CliRunner().invoke(main, [*predict, str(image)], catch_exceptions=False)
    assert result.exit_code == 0 and list((tmp_path / "pred").rglob("*.png")), result.output
    out = tmp_path / "int8"
    quantize = ["quantize", "--checkpoint", str(checkpoint), "--data", str(tiny_data)]
    quantize += ["--method", "static", "--no-compile", "--calib", "4", "--out", str(out)]
    quantize += ["--tolerance", "100"]
    result = CliRunner().invoke(main, quantize, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model, config = load_quantized(out)
    assert read_meta(out)["config"].adapter == config.adapter
    costs = json.loads((out / "comparison.json").read_text())["adapter_costs"]
    if adapter == "lora":
        assert config.adapter == "none"  # merged: the deployed model has no extra layers
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        assert not any(".down." in k or ".up." in k for k in model.state_dict())
        assert costs == [] and "without adapters" not in result.output
    else:
        assert config.adapter == adapter  # not merged: the deployed model keeps its adapters
        assert "fp32 without adapters (the merged-LoRA graph): adapters add" in result.output
        assert [c["adapted"] for c in costs] == ["fp32 eager", "int8 static"]
        for cost in costs:
            assert cost["latency_ms"] > 0 and cost["adapted_latency_ms"] > 0
            assert cost["added_ms"] == round(cost["adapted_latency_ms"] - cost["latency_ms"], 3)
    assert model(torch.randn(1, 3, *SIZE)).shape == (1, 19, *SIZE)
    predict = ["predict", "--model", str(out), "--out", str(tmp_path / "pred8"), str(image)]
    result = CliRunner().invoke(main, predict, catch_exceptions=False)
    assert result.exit_code == 0 and list((tmp_path / "pred8").rglob("*.png")), result.output


@pytest.mark.slow
def test_adapters_study_runs_every_point_and_its_report_shows_the_dimensions(tuner_home, tmp_path):
    shipped = yaml.safe_load(find_space("adapters").read_text())
    shipped["fixed"].update(epochs=1, batch_size=2, image_size=[64, 128], threads=2)
    shipped["fixed"].update(convlora_experts=2)
    shipped["synthetic"] = {"train": 4, "val": 2, "height": 128, "width": 256}
    space = tmp_path / "adapters.yaml"
    space.write_text(yaml.safe_dump(shipped))
    args = ["run", "--study", "adapters", "--space", str(space), "--no-report"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    study = load_existing_study("adapters", open_storage(None))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(map(str, (t.params for t in complete))) == sorted(
        map(str, load_space(space).points())
    )
    filled = with_absent_params(study)
    figures = {s.key: s.figure for s in optuna_figures(study) if s.figure is not None}
    parallel = json.dumps(figures["parallel"].to_plotly_json()["data"], default=str)
    for name in ("adapter", "lora_rank", "adapter_dim"):
        assert name in parallel
    assert len(filled.trials) == len(study.trials) and ABSENT in parallel


def test_convlora_training_dispatch_equals_the_dense_deployed_path():
    # Training runs each expert on the images that chose it; evaluation and export run all of
    # them under a one-hot gate. Same values, and the same gradients reach the chosen experts.
    torch.manual_seed(0)
    qkv = build_segmenter(adapted_config("convlora", convlora_experts=4)).encoder.blocks[0]
    qkv = qkv.attn.qkv
    trained_a_little(qkv)
    grid = torch.randn(6, 8, 8, qkv.base.in_features)
    outputs, grads = [], []
    for training in (True, False):
        qkv.train(training)
        qkv.zero_grad()
        out = qkv(grid)
        out.square().sum().backward()
        outputs.append(out.detach())
        grads.append(
            [
                torch.zeros_like(p) if p.grad is None else p.grad.clone()
                for p in qkv.added_parameters()
            ]
        )
    assert torch.allclose(outputs[0], outputs[1], atol=1e-6)
    assert outputs[0].abs().sum() > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads, strict=True))
