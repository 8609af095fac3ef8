"""Class boundaries of label maps: where boundary-weighted losses, the boundary F-score and the
error pictures look."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuner.core.data.labels import IGNORE_INDEX


def label_boundary(target: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels with a differently labelled (non-ignored) pixel within `radius` (Chebyshev)."""
    size = 2 * radius + 1
    t = target.unsqueeze(1).float()
    ignore = (target == IGNORE_INDEX).unsqueeze(1)
    high = F.max_pool2d(t.masked_fill(ignore, -1), size, stride=1, padding=radius)
    low = -F.max_pool2d((-t).masked_fill(ignore, -1e4), size, stride=1, padding=radius)
    return ((high != low) & ~ignore).squeeze(1)
