"""The Cityscapes layout, the label table, the synthetic generator and the joint transforms."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2labelImg import createLabelImage
from PIL import Image

from tuner.core.data import synth
from tuner.core.data.cityscapes import CityscapesDataset
from tuner.core.data.labels import (
    CLASS_NAMES,
    LABEL_ID_TO_TRAIN_ID,
    NUM_CLASSES,
    TRAIN_ID_TO_LABEL_ID,
    encode_target,
    train_ids_to_label_ids,
)
from tuner.core.data.transforms import Augment, AugmentedSet, train_pair
from tuner.core.errors import DatasetError


def test_label_table_is_the_official_19_classes():
    assert NUM_CLASSES == 19
    assert TRAIN_ID_TO_LABEL_ID.tolist() == [
        7,
        8,
        11,
        12,
        13,
        17,
        19,
        20,
        21,
        22,
        23,
        24,
        25,
        26,
        27,
        28,
        31,
        32,
        33,
    ]
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[-1] == "bicycle"
    assert encode_target(np.array([0, 1, 7, 9, 26, 33, 34])).tolist() == [
        255,
        255,
        0,
        255,
        13,
        18,
        255,
    ]
    round_trip = encode_target(train_ids_to_label_ids(np.arange(19, dtype=np.uint8)))
    assert round_trip.tolist() == list(range(19))


def test_synthetic_scenes_are_deterministic_per_seed():
    a = synth.make_scene(0, "train", 3, 64, 128)
    b = synth.make_scene(0, "train", 3, 64, 128)
    c = synth.make_scene(1, "train", 3, 64, 128)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["labelIds"], b["labelIds"])
    assert not np.array_equal(a["labelIds"], c["labelIds"])


def test_synthetic_dataset_has_the_cityscapes_layout(tiny_data):
    ds = CityscapesDataset(
        tiny_data, "val", target_type=tuple(["semantic", "instance", "color", "polygon", "depth"])
    )
    assert len(ds) == 4
    sample = ds.samples[0]
    assert sample.image.parts[-3:-1] == ("val", "synthstadt")
    assert sample.targets["semantic"].name == f"{sample.stem}_gtFine_labelIds.png"
    raw = np.array(Image.open(sample.targets["semantic"]))
    assert set(np.unique(raw)) <= set(range(34))  # real label ids, not train ids
    instance = ds.target(0, "instance")
    assert (instance[raw == 7] == 7).all()  # stuff keeps its label id
    # Things get label id * 1000 + instance number: checked on every car of the split.
    raws = [np.array(Image.open(s.targets["semantic"])) for s in ds.samples]
    assert sum((r == 26).sum() for r in raws) > 0
    for index, labels in enumerate(raws):
        cars = labels == 26
        instances = ds.target(index, "instance")[cars]
        assert (instances // 1000 == 26).all() and (instances % 1000 > 0).all()
    assert ds.target(0, "color").shape == (*raw.shape, 3)
    assert ds.target(0, "depth").dtype == np.uint16
    image, train_ids = ds[0]
    assert image.shape == (*raw.shape, 3) and image.dtype == np.uint8
    assert np.array_equal(train_ids, LABEL_ID_TO_TRAIN_ID[raw])


def test_polygons_json_rasterises_to_the_label_image_with_the_official_tool(tiny_data):
    ds = CityscapesDataset(tiny_data, "train", target_type=("semantic", "polygon"))
    for index in range(3):
        annotation = Annotation()
        annotation.fromJsonFile(str(ds.samples[index].targets["polygon"]))
        official = np.array(createLabelImage(annotation, "ids"))
        ours = np.array(Image.open(ds.samples[index].targets["semantic"]))
        # Polygon coordinates are rounded to 0.01 px in the JSON file; allow that on edges.
        assert (official == ours).mean() > 0.995


def test_synthetic_scenes_cover_the_street_classes():
    seen = set()
    for index in range(24):
        seen |= set(
            np.unique(
                encode_target(synth.make_scene(0, "train", index, 128, 256)["labelIds"])
            ).tolist()
        )
    names = {CLASS_NAMES[i] for i in seen if i != 255}
    must = {
        "road",
        "sidewalk",
        "building",
        "vegetation",
        "terrain",
        "sky",
        "car",
        "truck",
        "person",
        "rider",
        "bicycle",
        "pole",
        "traffic sign",
        "traffic light",
    }
    assert must <= names, must - names


def test_synth_cli_writes_a_dataset(tmp_path):
    from click.testing import CliRunner

    from tuner.cli import main

    out = tmp_path / "cs"
    result = CliRunner().invoke(
        main,
        [
            "data",
            "synth",
            "--out",
            str(out),
            "--train",
            "2",
            "--val",
            "1",
            "--height",
            "64",
            "--width",
            "128",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(CityscapesDataset(out, "train")) == 2
    assert json.loads((out / "synth.json").read_text())["height"] == 64


# Errors that name what is wrong ---------------------------------------------------------------
@pytest.fixture
def broken_copy(tiny_data, tmp_path):
    root = tmp_path / "cs"
    shutil.copytree(tiny_data, root)
    return root


def test_unknown_split_is_named():
    with pytest.raises(DatasetError, match="unknown split 'training'"):
        CityscapesDataset("/nowhere", "training")


@pytest.mark.parametrize("folder", ["leftImg8bit", "gtFine"])
def test_missing_split_folder_is_named(broken_copy, folder):
    shutil.rmtree(broken_copy / folder / "val")
    with pytest.raises(DatasetError, match=rf"{folder}/val: folder not found"):
        CityscapesDataset(broken_copy, "val")


def test_image_without_label_file_names_both(broken_copy):
    label = next((broken_copy / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    label.unlink()
    stem = label.name.replace("_gtFine_labelIds.png", "")
    with pytest.raises(
        DatasetError,
        match=rf"{stem}_leftImg8bit.png: its semantic target .*"
        rf"{label.name} is missing",
    ):
        CityscapesDataset(broken_copy, "val")


def test_unreadable_image_is_named(broken_copy):
    image = next((broken_copy / "leftImg8bit" / "val").glob("*/*.png"))
    image.write_bytes(b"not a png")
    ds = CityscapesDataset(broken_copy, "val")
    with pytest.raises(DatasetError, match=rf"{image.name}: unreadable image"):
        ds[ds.samples.index(next(s for s in ds.samples if s.image == image))]


# Transforms ---------------------------------------------------------------------------------
def test_train_pair_crops_pads_with_ignore_and_is_seeded():
    image = np.full((64, 128, 3), 200, np.uint8)
    label = np.zeros((64, 128), np.uint8)
    aug = Augment(crop=(64, 128), scale_range=(0.5, 0.5), hflip=False, color_jitter=0.0)
    img, lab = train_pair(image, label, aug, np.random.default_rng(0))
    assert img.shape == (3, 64, 128) and lab.shape == (64, 128)
    # Half-size image in a full-size crop: three quarters of the labels are padding (255).
    assert (lab == 255).float().mean().item() == pytest.approx(0.75)
    assert (img[:, lab == 255] == 0).all()  # padded with the mean colour (0 after normalising)


def test_augmentation_is_a_function_of_seed_epoch_and_index(tiny_data):
    ds = CityscapesDataset(tiny_data, "train")
    view = AugmentedSet(ds, Augment(crop=(64, 128)), seed=5)
    first = view[2]
    again = view[2]
    view.set_epoch(1)
    other_epoch = view[2]
    assert all((a == b).all() for a, b in zip(first, again))
    assert not (first[0] == other_epoch[0]).all()
