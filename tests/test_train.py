"""The fine-tuning core: learning, repeatability, accumulation, callbacks, checkpoints, NaNs."""

from __future__ import annotations

import pytest
import torch

from tuner.core import losses
from tuner.core.checkpoint import load_checkpoint, load_segmenter
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.errors import CheckpointError, ConfigError
from tuner.core.train import NonFiniteLossError, Trainer, fit, warmup_poly


def datasets(root):
    return CityscapesDataset(root, "train"), CityscapesDataset(root, "val")


@pytest.mark.slow
def test_short_training_clearly_improves_val_miou(tiny_data, tiny_config, tmp_path):
    config = tiny_config.replace(image_size=(128, 256), epochs=10, lr=3e-3, encoder_lr_mult=1.0)
    first = {}

    class Record:
        def on_epoch_end(self, epoch, metrics):
            first.setdefault("miou", metrics["val_miou"])
            return False

    summary = fit(
        config,
        *datasets(tiny_data),
        out_dir=tmp_path,
        callback=Record(),
        progress=False,
        log=lambda m: None,
    )
    assert summary.epochs_run == 10
    assert summary.best_metrics["val_miou"] > first["miou"] + 0.05
    assert summary.best_metrics["val_pixel_acc"] > 0.5


def test_training_is_repeatable_with_the_same_seed(tiny_data, tiny_config):
    runs = [
        fit(tiny_config, *datasets(tiny_data), progress=False, log=lambda m: None) for _ in range(2)
    ]
    assert runs[0].final_metrics["train_loss"] == runs[1].final_metrics["train_loss"]
    assert runs[0].final_metrics["val_miou"] == runs[1].final_metrics["val_miou"]


def test_micro_batches_accumulate_to_the_same_update(tiny_data, tiny_config):
    """batch_size keeps its meaning when the batch is split for memory."""
    train_set, val_set = datasets(tiny_data)
    updated = []
    for micro in (None, 1):
        config = tiny_config.replace(
            head="conv", batch_size=2, micro_batch_size=micro, grad_clip=None
        )
        trainer = Trainer(config, train_set, val_set)
        # Plain SGD: the update is the accumulated gradient itself (Adam's first step is
        # sign-like and would amplify float noise in near-zero gradients).
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
        trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda _: 1.0)
        images, labels = next(iter(trainer.epoch_batches(0)))
        trainer.train_step(images, labels, epoch=0)
        updated.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert torch.allclose(updated[0], updated[1], atol=1e-5)


def test_callback_can_stop_training(tiny_data, tiny_config):
    class StopAfterFirst:
        def __init__(self):
            self.epochs = []

        def on_epoch_end(self, epoch, metrics):
            self.epochs.append((epoch, metrics["val_miou"]))
            return True

    callback = StopAfterFirst()
    summary = fit(
        tiny_config.replace(epochs=3),
        *datasets(tiny_data),
        callback=callback,
        progress=False,
        log=lambda m: None,
    )
    assert summary.epochs_run == 1 and summary.stopped_early
    assert len(callback.epochs) == 1


def test_nan_loss_names_the_step(tiny_data, tiny_config, monkeypatch):
    calls = {"n": 0}

    def explodes(logits, target):
        calls["n"] += 1
        value = losses.cross_entropy(logits, target)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setitem(losses.LOSSES, "ce", explodes)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 0, step 2"):
        fit(tiny_config, *datasets(tiny_data), progress=False, log=lambda m: None)


def test_best_checkpoint_round_trip(tiny_data, tiny_config, tmp_path):
    summary = fit(
        tiny_config.replace(epochs=2),
        *datasets(tiny_data),
        out_dir=tmp_path,
        progress=False,
        log=lambda m: None,
    )
    assert summary.checkpoint == tmp_path / "best.pt"
    assert (tmp_path / "config.json").is_file()
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries
    model, ckpt = load_segmenter(summary.checkpoint)
    assert ckpt.config == tiny_config.replace(epochs=2)
    assert ckpt.metrics["val_miou"] == summary.best_metrics["val_miou"]
    images = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()


def test_corrupt_and_foreign_checkpoints_are_named(tmp_path):
    truncated = tmp_path / "best.pt"
    truncated.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(
        CheckpointError,
        match="best.pt: not a PyTorch weights file, or it holds code; refused for safety",
    ):
        load_checkpoint(truncated)
    foreign = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="other.pt: not a sam-tuner checkpoint"):
        load_checkpoint(foreign)


def test_warmup_then_poly_schedule():
    factor = warmup_poly(total_steps=10, warmup_steps=2, power=1.0)
    assert [round(factor(s), 3) for s in range(10)] == [
        0.5,
        1.0,
        1.0,
        0.875,
        0.75,
        0.625,
        0.5,
        0.375,
        0.25,
        0.125,
    ]


def test_batch_larger_than_dataset_is_a_clear_error(tiny_data, tiny_config):
    with pytest.raises(ConfigError, match="batch_size=64 is larger than the training set"):
        fit(tiny_config.replace(batch_size=64), *datasets(tiny_data), progress=False)


def test_best_checkpoint_is_written_however_training_ends(tiny_data, tiny_config, tmp_path):
    """Improvements inside the write interval wait in memory; an exception still flushes the
    best epoch so far to disk, whole."""

    class FailOnThirdEpoch:
        def on_epoch_end(self, epoch, metrics):
            if epoch == 2:
                raise RuntimeError("disk full, say")
            return False

    config = tiny_config.replace(epochs=4, lr=3e-3)
    with pytest.raises(RuntimeError, match="disk full"):
        fit(
            config,
            *datasets(tiny_data),
            out_dir=tmp_path,
            callback=FailOnThirdEpoch(),
            progress=False,
            log=lambda m: None,
        )
    saved = load_checkpoint(tmp_path / "best.pt")
    assert saved.epoch in (0, 1, 2)
    assert not list(tmp_path.glob(".*tmp"))


def test_best_checkpoint_waits_inside_its_interval(tiny_config, tmp_path, monkeypatch):
    from tuner.core import checkpoint as module
    from tuner.core.model import build_segmenter

    writes = []
    real = module.save_checkpoint
    monkeypatch.setattr(module, "save_checkpoint", lambda *a: writes.append(a[4]) or real(*a))
    saver = module.BestCheckpoint(tmp_path, interval=3600)
    model = build_segmenter(tiny_config)
    for epoch in range(3):
        saver.offer(model, tiny_config, {"val_miou": 0.1 * epoch}, epoch)
    assert writes == [0]  # the first at once; the next two inside the interval
    assert saver.flush() == tmp_path / "best.pt" and writes == [0, 2]
    assert load_checkpoint(tmp_path / "best.pt").epoch == 2


def test_latency_is_measured_once_per_architecture_crop_and_device(monkeypatch):
    # A trial's latency depends on the architecture, not the weights: later trials of the
    # same architecture reuse the first measurement; another shape or crop measures again.
    from tuner.core import inference

    monkeypatch.setattr(inference, "_MEASURED_MS", {})
    passes = []

    def model(width: int) -> torch.nn.Module:
        net = torch.nn.Conv2d(3, width, 3)
        net.register_forward_hook(lambda *_: passes.append(1))
        return net

    cpu = torch.device("cpu")
    first = inference.architecture_latency_ms(model(4), (32, 32), cpu)
    assert first > 0 and len(passes) >= 13  # warm-up and timed passes
    passes.clear()
    reweighted = model(4)
    torch.nn.init.normal_(reweighted.weight)
    assert inference.architecture_latency_ms(reweighted, (32, 32), cpu) == first
    assert passes == []
    inference.architecture_latency_ms(model(8), (32, 32), cpu)
    assert passes
    passes.clear()
    inference.architecture_latency_ms(model(4), (64, 64), cpu)
    assert passes
