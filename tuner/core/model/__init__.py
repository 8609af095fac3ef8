"""SAM backbone, heads and the segmenter that joins them."""

from tuner.core.errors import CheckpointError
from tuner.core.model.segmenter import Segmenter, build_segmenter, resolve_model
from tuner.core.registry import ENCODERS, HEADS

__all__ = ["ENCODERS", "HEADS", "CheckpointError", "Segmenter", "build_segmenter", "resolve_model"]
