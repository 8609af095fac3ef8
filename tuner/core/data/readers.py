"""Reading image files with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tuner.core.errors import DatasetError


def read_image(path: Path, mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if mode is not None and img.mode != mode:
                if mode == "L" and img.mode not in ("L", "P"):
                    raise DatasetError(
                        f"{path}: expected a single-channel label image, found mode {img.mode}"
                    )
                img = img.convert(mode)
            return np.array(img)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path}: unreadable image: {exc}") from None
