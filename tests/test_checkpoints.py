"""Delta checkpoints: a trial stores what trained and names its base; loading rebuilds the base
and refuses another one; a standalone export needs no base; a study keeps its best K."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from optuna.trial import TrialState

from tuner.core.checkpoint import (
    DELTA_FORMAT,
    FORMAT,
    export_checkpoint,
    load_checkpoint,
    load_segmenter,
)
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.errors import CheckpointError, StudyError
from tuner.core.model.backbone import build_sam
from tuner.core.train import fit
from tuner.search.run import RunOptions, run
from tuner.search.study import artifact_store_for, fetch_checkpoint


def train(config, data, out: Path):
    train_set, val_set = CityscapesDataset(data, "train"), CityscapesDataset(data, "val")
    return fit(config, train_set, val_set, out_dir=out, progress=False, log=lambda m: None)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def official_file(path: Path, seed: int) -> Path:
    """An official-format SAM state dict (sam_tiny's architecture) of seeded random weights."""
    torch.manual_seed(seed)
    torch.save(build_sam("sam_tiny_scratch").state_dict(), path)
    return path


def test_a_frozen_encoder_trial_stores_its_head_and_resized_tables_only(
    tiny_config, tiny_data, tmp_path
):
    config = tiny_config.replace(freeze_depth=6)  # crop 64x128 is not the stand-in's 256x256
    summary = train(config, tiny_data, tmp_path)
    ckpt = load_checkpoint(summary.checkpoint)
    assert ckpt.is_delta and ckpt.base.model == "sam_tiny" and len(ckpt.base.sha256) == 64
    stored = set(ckpt.state_dict)
    assert {k for k in stored if k.startswith("head.")}
    assert "encoder.pos_embed" in stored  # resized for the crop: no longer the base's
    assert not [k for k in stored if ".blocks.0.mlp" in k or k.startswith("encoder.neck")]
    whole = sum(t.numel() for t in build_sam("sam_tiny").image_encoder.parameters())
    assert sum(t.numel() for t in ckpt.state_dict.values()) < 0.05 * whole


@pytest.mark.parametrize(
    "changes",
    [
        {"freeze_depth": 4},
        {"freeze_depth": 6, "adapter": "lora", "head": "conv"},
        {"freeze_depth": 2, "model": "sam_tiny_scratch", "head": "mask_decoder"},
    ],
    ids=["partial", "lora", "seeded-base"],
)
def test_a_delta_loads_back_to_the_trained_model(tiny_config, tiny_data, tmp_path, changes):
    config = tiny_config.replace(**changes)
    summary = train(config, tiny_data, tmp_path)
    model, ckpt = load_segmenter(summary.checkpoint)
    assert ckpt.is_delta
    if config.adapter == "lora":
        assert any("lora" not in k and ".down." in k for k in ckpt.state_dict)
        assert not [k for k in ckpt.state_dict if k.endswith("qkv.base.weight")]
    # The trained model, whole, against the delta applied to the rebuilt base.
    export = export_checkpoint(summary.checkpoint, tmp_path / "whole.pt")
    whole, whole_ckpt = load_segmenter(export)
    assert whole_ckpt.base is None and same_weights(model, whole)
    images = torch.randn(1, 3, *config.image_size)
    with torch.no_grad():
        assert torch.equal(model(images), whole(images))


def test_a_changed_base_is_refused_naming_both_hashes(tiny_config, tiny_data, tmp_path):
    weights = official_file(tmp_path / "sam_tiny_official.pth", seed=1)
    config = tiny_config.replace(freeze_depth=4, sam_checkpoint=str(weights))
    summary = train(config, tiny_data, tmp_path / "run")
    recorded = load_checkpoint(summary.checkpoint).base.sha256
    load_segmenter(summary.checkpoint)  # the same base: fine
    official_file(weights, seed=2)  # someone overwrote the base with other weights
    with pytest.raises(CheckpointError) as refused:
        load_segmenter(summary.checkpoint)
    message = str(refused.value)
    assert "\n" not in message and recorded in message
    from tuner.core.model.base_weights import file_sha256

    assert file_sha256(weights) in message
    # Moved away: named, and --base finds it.
    (tmp_path / "moved").mkdir()
    moved = official_file(tmp_path / "moved" / weights.name, seed=1)  # torch.save names the
    weights.unlink()  # archive after the file, so the same name gives the same bytes
    with pytest.raises(CheckpointError, match="--base"):
        load_segmenter(summary.checkpoint)
    model, _ = load_segmenter(summary.checkpoint, base=moved)
    standalone = export_checkpoint(summary.checkpoint, tmp_path / "model.pt", base=moved)
    moved.unlink()
    assert load_checkpoint(standalone).state_dict.keys() == model.state_dict().keys()
    assert same_weights(load_segmenter(standalone)[0], model)


def test_formats_are_named_in_the_file(tiny_config, tiny_data, tmp_path):
    summary = train(tiny_config.replace(freeze_depth=6), tiny_data, tmp_path)
    payload = torch.load(summary.checkpoint, weights_only=True)
    assert payload["format"] == DELTA_FORMAT and payload["base"]["path"].endswith(".pth")
    export = export_checkpoint(summary.checkpoint, tmp_path / "x.pt")
    assert torch.load(export, weights_only=True)["format"] == FORMAT
    assert not (tmp_path / "config.json").read_text().count("state_dict")


def test_a_study_keeps_the_weights_of_its_best_k_only(tiny_data, tuner_home, tmp_path):
    space = tmp_path / "keep.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "study": "keep",
                "sampler": {"name": "grid", "seed": 0},
                "pruner": {"name": "none"},
                "keep_checkpoints": 2,
                "fixed": {
                    "model": "sam_tiny",
                    "head": "linear",
                    "freeze_depth": 6,
                    "batch_size": 2,
                    "epochs": 1,
                    "image_size": [64, 128],
                },
                "params": {"lr": {"type": "categorical", "choices": [1e-4, 1e-3, 3e-3, 1e-2]}},
            }
        )
    )
    study = run(
        RunOptions(study="keep", space_file=str(space), data_root=str(tiny_data), progress=False)
    )
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4
    ranked = sorted(done, key=lambda t: -t.value)
    kept, dropped = ranked[:2], ranked[2:]
    for trial in kept:
        fetch_checkpoint(study, trial, tmp_path / f"{trial.number}.pt")
    store = artifact_store_for(study)
    for trial in dropped:
        with pytest.raises(StudyError, match="dropped"):
            fetch_checkpoint(study, trial, tmp_path / "gone.pt")
        with pytest.raises(Exception):  # noqa: B017 - the artifact itself is gone
            store.open_reader(trial.user_attrs["checkpoint_artifact_id"])
        # What it measured stays: metrics, config, per-image counts.
        assert trial.user_attrs["val_miou"] == trial.value
        store.open_reader(trial.user_attrs["per_image_artifact_id"]).close()


def test_with_confirmations_the_best_k_follow_the_mean_over_seeds():
    # A trial that ranks low on its own run can win on its mean over seeds: the ranking the
    # study is given decides which weights stay.
    import optuna

    from tuner.search.study import KeepBestCheckpoints

    removed: list[str] = []

    class Store:
        def remove(self, artifact_id: str) -> None:
            removed.append(artifact_id)

    study = optuna.create_study(direction="maximize")
    for number, value in enumerate([0.9, 0.8, 0.7]):
        study.add_trial(
            optuna.trial.create_trial(
                value=value, user_attrs={"checkpoint_artifact_id": f"a{number}"}
            )
        )
    trials = study.get_trials()
    keep = KeepBestCheckpoints(1, Store())
    keep.prune(study, ranked=[trials[2], trials[0], trials[1]])  # trial 2 leads on its mean
    assert sorted(removed) == ["a0", "a1"]
    assert "checkpoint_dropped:2" not in study.user_attrs
    assert "checkpoint_dropped:0" in study.user_attrs
