"""Plain-text tables for the terminal: metrics, leaderboards, comparisons."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tuner.core.data.labels import CLASS_NAMES


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def short(value: Any) -> Any:
    """Parameters in tables and log lines: 3 significant digits for floats."""
    return f"{value:.3g}" if isinstance(value, float) else value


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def metrics_table(metrics: dict[str, Any], prefix: str = "val_") -> str:
    """Per-class IoU and boundary F1, then the summary rows."""
    iou = metrics.get(f"{prefix}per_class_iou") or [None] * len(CLASS_NAMES)
    bf1 = metrics.get(f"{prefix}per_class_boundary_f1") or [None] * len(CLASS_NAMES)
    rows = [[name, i, b] for name, i, b in zip(CLASS_NAMES, iou, bf1)]
    rows.append(
        ["mean (mIoU / mBF1)", metrics.get(f"{prefix}miou"), metrics.get(f"{prefix}boundary_f1")]
    )
    rows.append(["pixel accuracy", metrics.get(f"{prefix}pixel_acc"), None])
    return table(rows, ["class", "IoU", "boundary F1"])
