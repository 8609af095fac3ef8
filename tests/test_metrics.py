"""mIoU, pixel accuracy and boundary F1, by hand and against the official evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from official_eval import official_scores
from PIL import Image

from tuner.core.data.labels import LABEL_ID_TO_TRAIN_ID, train_ids_to_label_ids
from tuner.core.metrics import SegmentationMetrics


def test_iou_by_hand_with_ignore_and_absent_classes():
    target = torch.tensor([[[0, 0, 1, 1, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1, 2, 0]]])
    metrics = SegmentationMetrics(num_classes=3, boundary_tolerance=1)
    metrics.update(pred, target)
    result = metrics.compute()
    # class 0: tp 1, fp 0 (the 0 predicted on an ignored pixel does not count), fn 1 -> 1/2
    # class 1: tp 2, fp 1, fn 0 -> 2/3; class 2: predicted only on ignored pixels -> NaN
    assert result["per_class_iou"][0] == pytest.approx(0.5)
    assert result["per_class_iou"][1] == pytest.approx(2 / 3)
    assert result["per_class_iou"][2] is None
    assert result["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert result["pixel_acc"] == pytest.approx(3 / 4)


def test_confusion_accumulates_over_batches_like_one_big_batch():
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 19, (4, 32, 32), generator=gen)
    target[:, :3] = 255
    pred = torch.where(
        torch.rand(4, 32, 32, generator=gen) < 0.7,
        target.clamp(max=18),
        torch.randint(0, 19, (4, 32, 32), generator=gen),
    )
    whole, parts = SegmentationMetrics(), SegmentationMetrics()
    whole.update(pred, target)
    for i in range(4):
        parts.update(pred[i : i + 1], target[i : i + 1])
    assert whole.compute() == parts.compute()


def test_boundary_f1_is_one_for_a_perfect_prediction_and_drops_with_shift():
    target = torch.zeros(1, 40, 40, dtype=torch.long)
    target[:, 10:30, 10:30] = 1
    perfect = SegmentationMetrics(num_classes=2, boundary_tolerance=2)
    perfect.update(target.clone(), target)
    assert perfect.compute()["boundary_f1"] == pytest.approx(1.0)

    near, far = (SegmentationMetrics(num_classes=2, boundary_tolerance=2) for _ in range(2))
    near.update(torch.roll(target, 2, dims=2), target)  # within tolerance
    far.update(torch.roll(target, 6, dims=2), target)  # beyond tolerance on two sides
    assert near.compute()["boundary_f1"] == pytest.approx(1.0)
    far_f1 = far.compute()["boundary_f1"]
    assert 0.2 < far_f1 < 0.8
    # IoU cannot tell these two apart as sharply: the boundary score is the edge-aware one.
    assert far.compute()["miou"] > 0.5


def test_miou_agrees_with_official_cityscapes_evaluation(tmp_path):
    rng = np.random.default_rng(3)
    label_ids = np.array([0, 1, 4, 7, 8, 11, 17, 20, 21, 23, 24, 26, 27, 33])
    preds, gts = [], []
    metrics = SegmentationMetrics()
    for k in range(3):
        gt = rng.choice(label_ids, size=(48, 96)).astype(np.uint8)
        gt_train = LABEL_ID_TO_TRAIN_ID[gt]
        pred_train = gt_train.copy()
        pred_train[pred_train == 255] = 0
        noise = rng.random(gt.shape) < 0.2
        pred_train[noise] = rng.integers(0, 19, int(noise.sum()))
        stem = f"democity_000000_{k:06d}"
        gts.append(str(tmp_path / f"{stem}_gtFine_labelIds.png"))
        preds.append(str(tmp_path / f"{stem}_pred_labelIds.png"))
        Image.fromarray(gt).save(gts[-1])
        Image.fromarray(train_ids_to_label_ids(pred_train)).save(preds[-1])
        metrics.update(
            torch.from_numpy(pred_train.astype(np.int64))[None],
            torch.from_numpy(gt_train.astype(np.int64))[None],
        )
    ours = metrics.compute()
    official_miou, official_per_class = official_scores(preds, gts)
    assert ours["miou"] == pytest.approx(official_miou, abs=1e-9)
    for mine, theirs in zip(ours["per_class_iou"], official_per_class):
        assert (mine is None and theirs is None) or mine == pytest.approx(theirs, abs=1e-9)
    assert not math.isnan(ours["boundary_f1"])
