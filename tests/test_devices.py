"""Every device path, tested without a GPU: a float64 model stands in for a model on a second
device. Code that makes a tensor or module with torch's defaults (CPU, float32) instead of
taking them from its source breaks here as it would on CUDA."""

from __future__ import annotations

import pytest
import torch

from tuner.core.cache import FeatureCache
from tuner.core.checkpoint import load_segmenter
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.inference import evaluate
from tuner.core.model import build_segmenter
from tuner.core.model.adapters import LoRALinear, merge_adapters
from tuner.core.registry import ADAPTERS, HEADS
from tuner.core.train import fit
from tuner.deploy.predict import load_predictor
from tuner.deploy.quantize._inc import _calibrate, _export, calibration_windows

F64 = torch.float64


def placements(model: torch.nn.Module) -> set[tuple[str, torch.dtype]]:
    """(device, dtype) of every floating parameter and buffer."""
    tensors = [*model.parameters(), *model.buffers()]
    return {(str(t.device), t.dtype) for t in tensors if t.is_floating_point()}


def float64_trial(tiny_config, tiny_data, tmp_path, **changes):
    config = tiny_config.replace(dtype="float64", **changes)
    train_set, val_set = CityscapesDataset(tiny_data, "train"), CityscapesDataset(tiny_data, "val")
    cache = FeatureCache(tmp_path / "cache")
    summary = fit(
        config,
        train_set,
        val_set,
        tmp_path / "run",
        progress=False,
        log=lambda m: None,
        cache=cache,
    )
    return config, summary


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("adapter", sorted(ADAPTERS))
def test_a_float64_trial_keeps_every_tensor_in_float64(
    tiny_config, tiny_data, tmp_path, head, adapter
):
    # Freeze 4 of 6 blocks: the cache is on where nothing adapts the frozen blocks.
    config, summary = float64_trial(
        tiny_config, tiny_data, tmp_path, head=head, adapter=adapter, freeze_depth=4
    )
    assert summary.best_metrics["val_miou"] == summary.best_metrics["val_miou"]  # not NaN
    if adapter == "none":
        assert summary.cache["train_misses"] > 0  # the cache path ran
    model, _ = load_segmenter(summary.checkpoint)
    assert placements(model) == {("cpu", F64)}
    # Evaluate and predict in float64 (the checkpoint's own dtype).
    val = CityscapesDataset(tiny_data, "val", limit=1)
    metrics = evaluate(model, val, config.image_size, torch.device("cpu"))
    assert 0 <= metrics["miou"] <= 1
    predictor = load_predictor(summary.checkpoint)
    assert placements(predictor.model) == {("cpu", F64)}
    assert predictor(val.image(0)).shape == val.image(0).shape[:2]


def test_lora_merges_on_the_base_weights_device_and_dtype():
    config = dict(image_size=(64, 128), head="linear", freeze_depth=6, adapter="lora")
    from tuner.core.config import TrainConfig

    model = build_segmenter(TrainConfig(**config)).to(F64).eval()
    assert any(isinstance(m, LoRALinear) for m in model.modules())
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.up[0].data.normal_(0, 0.05)
    images = torch.randn(1, 3, 64, 128, dtype=F64)
    with torch.no_grad():
        before = model(images)
        merge_adapters(model)
        after = model(images)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert placements(model) == {("cpu", F64)}
    assert torch.allclose(before, after, atol=1e-10)


def test_the_quantize_front_end_follows_the_model(tiny_config, tiny_data, tmp_path):
    _, summary = float64_trial(
        tiny_config, tiny_data, tmp_path, adapter="lora", freeze_depth=6, head="conv"
    )
    model, ckpt = load_segmenter(summary.checkpoint)
    merge_adapters(model)
    assert placements(model) == {("cpu", F64)}
    exported, example = _export(model, ckpt.config.image_size)
    assert example[0].dtype == F64
    windows = calibration_windows(CityscapesDataset(tiny_data, "train", limit=1), (64, 128), 1)
    _calibrate(model, windows)  # float32 windows go to the model's dtype
    out = exported(*example)
    assert out.dtype == F64


def test_cache_keys_tell_float64_features_apart(tiny_config, tiny_data, tmp_path):
    # The same trial in float32 and float64 must not share cached features.
    cache = FeatureCache(tmp_path / "cache")
    train_set, val_set = CityscapesDataset(tiny_data, "train"), CityscapesDataset(tiny_data, "val")
    for dtype in ("float32", "float64"):
        config = tiny_config.replace(freeze_depth=4, dtype=dtype)
        summary = fit(config, train_set, val_set, progress=False, log=lambda m: None, cache=cache)
        assert summary.cache["train_hits"] == 0
    assert cache.usage().sets == 4  # train and val, per dtype


def test_compile_on_runs_a_trial_on_the_cpu(tiny_config, tiny_data):
    train_set, val_set = CityscapesDataset(tiny_data, "train"), CityscapesDataset(tiny_data, "val")
    config = tiny_config.replace(freeze_depth=4, compile="on")
    compiled = fit(config, train_set, val_set, progress=False, log=lambda m: None)
    eager = fit(config.replace(compile="off"), train_set, val_set, progress=False, log=print)
    assert compiled.compile_seconds > 0 and eager.compile_seconds == 0
    assert abs(compiled.best_metrics["val_miou"] - eager.best_metrics["val_miou"]) < 0.02


def test_the_mask_decoder_position_encoding_is_sams_in_the_models_dtype():
    from segment_anything.modeling.prompt_encoder import PositionEmbeddingRandom

    from tuner.core.config import TrainConfig

    head = build_segmenter(TrainConfig(head="mask_decoder", image_size=(64, 128))).head
    assert isinstance(head.pe_layer, PositionEmbeddingRandom)
    assert torch.equal(head.dense_pe(4, 8), head.pe_layer((4, 8)))  # float32: SAM's own
    assert head.to(F64).dense_pe(4, 8).dtype == F64
