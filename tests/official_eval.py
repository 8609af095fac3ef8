"""The official Cityscapes pixel-level evaluation, callable on explicit file lists.

cityscapesscripts 2.3.0 calls `np.in1d` (removed in numpy 2.4) in its optional pixel-accuracy
and instance paths, and its JSON export fails on numpy integers; both are switched off here and
`np.in1d` is aliased for safety. The class IoUs themselves are computed by unmodified code.
"""

from __future__ import annotations

import copy
import math

import numpy as np

if not hasattr(np, "in1d"):
    np.in1d = np.isin

import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_eval
from cityscapesscripts.helpers.labels import trainId2label


def official_scores(predictions: list[str], ground_truths: list[str]) -> tuple[float, list]:
    """(mIoU over the 19 classes, per-class IoU by train id with None for NaN)."""
    args = copy.copy(cs_eval.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    result = cs_eval.evaluateImgLists(predictions, ground_truths, args)
    per_class = []
    for train_id in range(19):
        value = result["classScores"][trainId2label[train_id].name]
        per_class.append(None if math.isnan(value) else float(value))
    return float(result["averageScoreClasses"]), per_class
