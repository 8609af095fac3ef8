"""SAM backbone, heads and the segmenter that joins them."""

from tuner.errors import CheckpointError
from tuner.model.backbone import ENCODERS
from tuner.model.heads import HEADS
from tuner.model.segmenter import Segmenter, build_segmenter, resolve_model

__all__ = ["ENCODERS", "HEADS", "CheckpointError", "Segmenter", "build_segmenter", "resolve_model"]
