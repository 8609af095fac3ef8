"""The official Cityscapes label table, as lookup arrays.

The table itself comes from `cityscapesscripts.helpers.labels` (the file the benchmark's own
evaluation uses), so label ids, train ids, names and colours can never drift from it.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255

_TRAIN_LABELS = sorted(
    (lab for lab in _CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId
)
NUM_CLASSES = len(_TRAIN_LABELS)  # 19
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN_LABELS)
TRAIN_ID_TO_LABEL_ID = np.array([lab.id for lab in _TRAIN_LABELS], dtype=np.uint8)

# Train-id colours, plus black for 255, so decode() can index directly.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
PALETTE[:NUM_CLASSES] = [lab.color for lab in _TRAIN_LABELS]

# Label id (0..33) -> train id; anything else (and every "ignoreInEval" label) -> 255.
VALID_LABEL_IDS = np.zeros(256, dtype=bool)  # the ids a *_gtFine_labelIds.png may hold
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_INDEX, dtype=np.uint8)
LABEL_COLORS = np.zeros((256, 3), dtype=np.uint8)
LABEL_ID_BY_NAME: dict[str, int] = {}
LABEL_HAS_INSTANCES: dict[int, bool] = {}
for _lab in _CS_LABELS:
    if _lab.id < 0:
        continue  # "license plate" (id -1) is never written into label images
    LABEL_ID_BY_NAME[_lab.name] = _lab.id
    VALID_LABEL_IDS[_lab.id] = True
    LABEL_COLORS[_lab.id] = _lab.color
    LABEL_HAS_INSTANCES[_lab.id] = _lab.hasInstances
    if 0 <= _lab.trainId < IGNORE_INDEX:
        LABEL_ID_TO_TRAIN_ID[_lab.id] = _lab.trainId


def encode_target(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes label ids -> train ids (255 = ignore)."""
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Train ids -> label ids, the form the official evaluation script reads."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
    return lut[train_ids]


def decode_target(train_ids: np.ndarray) -> np.ndarray:
    """Train ids -> RGB colours of the Cityscapes palette (ignore is black)."""
    return PALETTE[train_ids]


def colorize_label_ids(label_ids: np.ndarray) -> np.ndarray:
    """Label ids -> RGB colours, as in `*_gtFine_color.png`."""
    return LABEL_COLORS[label_ids]
