"""The frozen-prefix feature cache: storage, keys, limits, concurrency, and trials that hit it
giving the results of trials that do not."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest
import torch

from tuner.core.cache import FeatureCache, fingerprint_tensors, parse_size
from tuner.core.cache._fingerprint import key_digest
from tuner.core.cache._folder import KEY_FILE
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.errors import ConfigError
from tuner.core.fsutil import fingerprint_files
from tuner.core.model import Segmenter
from tuner.core.train import Trainer, fit


def datasets(root):
    return CityscapesDataset(root, "train"), CityscapesDataset(root, "val")


def quiet_fit(config, root, cache, **kw):
    return fit(config, *datasets(root), progress=False, log=lambda m: None, cache=cache, **kw)


# Storage -------------------------------------------------------------------------------------
def test_entries_round_trip_and_bad_files_are_misses(tmp_path):
    cache = FeatureCache(tmp_path)
    with cache.open({"k": 1}, torch.float16, shape=(2, 3)) as store:
        assert store.get("a") is None
        assert store.put("a", torch.ones(2, 3, dtype=torch.float16))
        assert torch.equal(store.get("a"), torch.ones(2, 3, dtype=torch.float16))
        store.path("torn").write_bytes(b"\x93NUMPY garbage")  # a file that is not an array
        assert store.get("torn") is None
        np.save(store.path("wrong"), np.zeros((3, 3), np.float16))  # another shape
        assert store.get("wrong") is None
        np.save(store.path("f32"), np.zeros((2, 3), np.float32))  # another dtype
        assert store.get("f32") is None
        assert not list(store.folder.glob("*.tmp"))


def test_any_key_change_opens_another_set(tmp_path):
    cache = FeatureCache(tmp_path)
    with cache.open({"weights": "abc", "crop": [64, 128]}, torch.float32) as store:
        store.put("v0-0", torch.zeros(4))
    for changed in ({"weights": "abd", "crop": [64, 128]}, {"weights": "abc", "crop": [64, 64]}):
        with cache.open(changed, torch.float32) as other:
            assert other.folder != store.folder and other.get("v0-0") is None
    with cache.open({"crop": [64, 128], "weights": "abc"}, torch.float32) as same:  # key order
        assert same.get("v0-0") is not None


def test_fingerprints_follow_content(tmp_path):
    weights = {"a": torch.zeros(3), "b": torch.ones(2)}
    assert fingerprint_tensors(weights) == fingerprint_tensors(dict(weights))
    assert fingerprint_tensors(weights) != fingerprint_tensors({**weights, "b": torch.ones(2) * 2})
    files = [tmp_path / "x.png", tmp_path / "y.png"]
    for f in files:
        f.write_bytes(b"12345")
    before = fingerprint_files(files, tmp_path)
    os.utime(files[1], ns=(0, time.time_ns() + 10**9))
    assert fingerprint_files(files, tmp_path) != before
    assert fingerprint_files(files[:1], tmp_path) != fingerprint_files(files, tmp_path)


def test_size_limit_evicts_least_recently_used_sets_but_not_ones_in_use(tmp_path):
    """Sets a, b, c of one entry each, last used c (oldest), a, then b, and c open. A set that
    needs room evicts a, the least recently used set not in use: not c, not b. A cache with
    no room at all evicts b too, and still not c."""
    entry = torch.zeros(256, 256)  # 256 KiB each, with its .npy header
    cache = FeatureCache(tmp_path, limit=800 * 1024)  # room for three entries, not four
    folder = {name: tmp_path / key_digest({"set": name}) for name in ("a", "b", "c", "d", "e")}
    for name in ("a", "b", "c"):
        with cache.open({"set": name}, torch.float32) as store:
            assert store.put("x", entry)

    def last_used(name: str, seconds_ago: float) -> None:
        when = time.time() - seconds_ago
        os.utime(folder[name] / KEY_FILE, (when, when))

    with cache.open({"set": "c"}, torch.float32) as busy:
        for name, seconds_ago in (("c", 300), ("a", 200), ("b", 100)):
            last_used(name, seconds_ago)  # set after opening c, which marks it used now
        with cache.open({"set": "d"}, torch.float32) as store:
            assert store.put("x", entry)  # 4 x 256 KiB > 800 KiB: one set must go
            assert set(tmp_path.iterdir()) == {folder["b"], folder["c"], folder["d"]}
            with FeatureCache(tmp_path, limit=0).open({"set": "e"}, torch.float32) as tiny:
                assert not tiny.put("x", entry) and tiny.full  # no room, nothing written
            assert set(tmp_path.iterdir()) == {folder["c"], folder["d"], folder["e"]}
        assert busy.get("x") is not None  # a set in use is never evicted
    assert FeatureCache(tmp_path).usage().entries == 2


def test_sizes_parse_and_bad_sizes_are_named():
    assert parse_size("20G") == 20 * 2**30 and parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("500M") == 500 * 2**20 and parse_size(0) == 0
    with pytest.raises(ConfigError, match="cache limit 'lots'"):
        parse_size("lots")


def _value(worker: int, i: int) -> float:
    return float(i + 100 * worker)  # entry e<i> as worker `worker` writes it


def _whole(tensor: torch.Tensor, i: int) -> bool:
    """All of one worker's entry e<i>: never a mix of both, nor zeros from a half-written file."""
    return tensor.unique().tolist() in ([_value(0, i)], [_value(1, i)])


def _fill(folder, worker, together, results):
    torn = []
    with FeatureCache(folder).open({"shared": True}, torch.float32, shape=(64, 64)) as store:
        together.wait(timeout=300)  # both hold the set open before either writes: they overlap
        for i in range(40):
            store.put(f"e{i}", torch.full((64, 64), _value(worker, i)))
            # Read back what either worker wrote: a whole entry or none, never half of one.
            got = store.get(f"e{(i * 7) % 40}")
            if got is not None and not _whole(got, (i * 7) % 40):
                torn.append(f"e{(i * 7) % 40}")
        together.wait(timeout=300)  # neither closes the set while the other still writes
    results.put(f"worker {worker}: torn {torn}" if torn else "ok")


def test_two_workers_filling_the_same_set_corrupt_nothing(tmp_path):
    """Both workers write every entry, each its own values, at the same time (a barrier, not
    the luck of process start-up, makes them overlap)."""
    context = mp.get_context("spawn")
    results, together = context.Queue(), context.Barrier(2)
    workers = [
        context.Process(target=_fill, args=(tmp_path, w, together, results)) for w in range(2)
    ]
    for w in workers:
        w.start()
    said = [results.get(timeout=300) for _ in workers]  # in the order they finish
    for w in workers:
        w.join(60)
    assert said == ["ok", "ok"]
    assert [w.exitcode for w in workers] == [0, 0]
    with FeatureCache(tmp_path).open({"shared": True}, torch.float32, shape=(64, 64)) as store:
        for i in range(40):
            assert _whole(store.get(f"e{i}"), i)
    assert not list(tmp_path.rglob("*.tmp"))


# Trials --------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [3, 6])  # block-3 tokens; the neck output of a frozen encoder
def test_cache_hit_trial_equals_cache_off_trial(tiny_data, tiny_config, tmp_path, depth):
    config = tiny_config.replace(freeze_depth=depth, epochs=2, cache_dtype="float32")
    cache = FeatureCache(tmp_path / "cache")
    off = quiet_fit(config.replace(cache="off"), tiny_data, None, out_dir=tmp_path / "off")
    filled = quiet_fit(config, tiny_data, cache, out_dir=tmp_path / "miss")
    hit = quiet_fit(config, tiny_data, cache, out_dir=tmp_path / "hit")
    assert filled.cache["train_misses"] > 0 and filled.cache["stored"] > 0
    assert hit.cache["train_misses"] == 0 and hit.cache["val_misses"] == 0
    assert hit.cache["train_hits"] == filled.cache["train_misses"]
    assert abs(hit.best_metrics["val_miou"] - off.best_metrics["val_miou"]) <= 1e-3
    from tuner.core.checkpoint import load_segmenter

    images = torch.randn(2, 3, *config.image_size)
    with torch.no_grad():
        logits = [load_segmenter(tmp_path / n / "best.pt")[0](images) for n in ("off", "hit")]
    assert torch.allclose(logits[0], logits[1], atol=1e-5)


def test_float16_cache_keeps_miou_within_a_thousandth(tiny_data, tiny_config, tmp_path):
    config = tiny_config.replace(freeze_depth=6, epochs=2)
    assert config.cache_dtype == "float16"
    cache = FeatureCache(tmp_path)
    off = quiet_fit(config.replace(cache="off"), tiny_data, None)
    quiet_fit(config, tiny_data, cache)
    hit = quiet_fit(config, tiny_data, cache)
    assert hit.cache["train_misses"] == 0
    assert abs(hit.best_metrics["val_miou"] - off.best_metrics["val_miou"]) <= 1e-3


@pytest.mark.parametrize("depth", [4, 6])
def test_int8_storage_hits_give_what_misses_gave(tiny_data, tiny_config, tmp_path, depth):
    # Misses pass through the storage too, so a trial that reads int8 features scores what
    # the trial that computed them scored; and int8 stays close to float32.
    config = tiny_config.replace(freeze_depth=depth, epochs=2, cache_dtype="int8")
    cache = FeatureCache(tmp_path)
    filled = quiet_fit(config, tiny_data, cache)
    hit = quiet_fit(config, tiny_data, cache)
    assert hit.cache["train_misses"] == 0 and hit.cache["train_hits"] > 0
    assert hit.best_metrics["val_miou"] == filled.best_metrics["val_miou"]
    exact = quiet_fit(config.replace(cache="off"), tiny_data, None)
    assert abs(hit.best_metrics["val_miou"] - exact.best_metrics["val_miou"]) <= 0.01
    entry = next((tmp_path).rglob("v0-0.npy"))
    assert np.load(entry).dtype == np.int8


def test_the_int8_codec_bounds_its_error_per_row():
    from tuner.core.cache import Codec

    x = torch.randn(16, 32, 64) * torch.logspace(-3, 3, 64)  # rows of very different scales
    back = Codec.of("int8").round_trip(x)
    scale = x.abs().amax(dim=-1, keepdim=True)
    assert torch.all((back - x).abs() <= scale / 127 * 0.51 + 1e-6 * scale)
    assert (
        Codec.of("int8").entry_bytes((16, 32, 64))
        < Codec.of("float16").entry_bytes((16, 32, 64)) * 0.55
    )


def test_a_full_hit_never_runs_the_frozen_prefix(tiny_data, tiny_config, tmp_path, monkeypatch):
    config = tiny_config.replace(freeze_depth=4, epochs=2)
    cache = FeatureCache(tmp_path)
    first = quiet_fit(config, tiny_data, cache)

    def forbidden(self, images):
        raise AssertionError("the frozen prefix ran although every feature was cached")

    monkeypatch.setattr(Segmenter, "frozen_prefix", forbidden)
    again = quiet_fit(config, tiny_data, cache)
    assert again.best_metrics["val_miou"] == first.best_metrics["val_miou"]


@pytest.mark.parametrize(
    ("change", "val_unchanged"),
    [
        ({"scale_range": (0.9, 1.1)}, True),  # validation windows are not augmented
        ({"hflip": False}, True),
        ({"image_size": (64, 64)}, False),
        ({"freeze_depth": 5}, False),
        ({"cache_dtype": "float32"}, False),
    ],
)
def test_a_changed_key_element_misses(tiny_data, tiny_config, tmp_path, change, val_unchanged):
    config = tiny_config.replace(freeze_depth=4)
    cache = FeatureCache(tmp_path)
    quiet_fit(config, tiny_data, cache)
    changed = quiet_fit(config.replace(**change), tiny_data, cache)
    assert changed.cache["train_hits"] == 0
    assert (changed.cache["val_misses"] == 0) == val_unchanged


def test_changed_weights_or_data_files_miss(tiny_data, tiny_config, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    config = tiny_config.replace(freeze_depth=4)
    cache = FeatureCache(tmp_path / "cache")
    quiet_fit(config, root, cache)
    image = next((root / "leftImg8bit" / "train").rglob("*.png"))
    os.utime(image, ns=(0, image.stat().st_mtime_ns + 10**9))  # touched: maybe new content
    assert quiet_fit(config, root, cache).cache["train_hits"] == 0
    assert quiet_fit(config, root, cache).cache["train_misses"] == 0

    original = Segmenter.frozen_state

    def perturbed(self):  # other weights, e.g. another checkpoint
        state = original(self)
        with torch.no_grad():
            state["blocks.0.mlp.lin1.weight"].add_(1e-3)
        return state

    monkeypatch.setattr(Segmenter, "frozen_state", perturbed)
    assert quiet_fit(config, root, cache).cache["train_hits"] == 0


def test_aug_views_bounds_the_views_across_epochs(tiny_data, tiny_config, tmp_path):
    cache = FeatureCache(tmp_path)
    config = tiny_config.replace(freeze_depth=4, epochs=3, aug_views=1)
    summary = quiet_fit(config, tiny_data, cache)
    steps = len(CityscapesDataset(tiny_data, "train")) // config.batch_size * config.batch_size
    # Epoch 1 computes its view; epochs 2 and 3 reuse that same view.
    assert summary.cache["train_misses"] == steps and summary.cache["train_hits"] == 2 * steps
    trainer = Trainer(config, *datasets(tiny_data))
    trainer.train_view.set_epoch(2)
    assert trainer.train_view.view == 0


def test_no_cache_without_a_frozen_prefix_or_when_off(tiny_data, tiny_config, tmp_path):
    cache = FeatureCache(tmp_path)
    assert quiet_fit(tiny_config, tiny_data, cache).cache == {}
    assert quiet_fit(tiny_config.replace(freeze_depth=2, cache="off"), tiny_data, cache).cache == {}
    assert cache.usage().entries == 0
