"""What `tuner quantize` found: every candidate measured against FP32, and the choice."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tuner.deploy.quantize._measure import Measurement


@dataclass
class QuantizeReport:
    chosen: str
    fp32: Measurement
    candidates: list[Measurement]
    tolerance: float
    cpu: dict[str, Any]
    reason: str
    baselines: list[Measurement] = field(default_factory=list)  # FP32 eager (and compiled)
    output_dir: str | None = None
    reload_max_abs_diff: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """As stored (comparison.json, the study): every measurement with its size in MB and
        as a ratio of the FP32 file."""
        data = asdict(self)
        for row in [data["fp32"], *data["candidates"], *data["baselines"]]:
            row["size_mb"] = round(row["size_bytes"] / 1e6, 3)
            row["size_ratio"] = round(row["size_bytes"] / self.fp32.size_bytes, 4)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeReport:
        """Back from JSON (a study's user attr, comparison.json)."""
        variants = ("fp32", "candidates", "baselines")

        def measurement(row: dict[str, Any]) -> Measurement:
            return Measurement(**{k: v for k, v in row.items() if k in Measurement.FIELDS})

        return cls(
            **{k: v for k, v in data.items() if k not in variants},
            fp32=measurement(data["fp32"]),
            candidates=[measurement(v) for v in data["candidates"]],
            baselines=[measurement(v) for v in data.get("baselines", [])],
        )


def comparison_rows(report: QuantizeReport) -> tuple[list[list[Any]], list[str]]:
    """The table people read: figures rounded to what the measurement can tell."""
    headers = [
        "model",
        "run as",
        "mIoU",
        "drop (pts)",
        "boundary F1",
        "latency ms",
        "speed vs FP32",
        "size MB",
        "size vs FP32",
        "within tol.",
        "kept in FP32",
    ]
    rows = []
    for v in [*(report.baselines or [report.fp32]), *report.candidates]:
        same_mode = next((b for b in report.baselines if b.compiled == v.compiled), report.fp32)
        rows.append(
            [
                v.name + (" (chosen)" if v.name == report.chosen else ""),
                "compiled" if v.compiled else "eager",
                f"{v.miou:.4f}",
                f"{(report.fp32.miou - v.miou) * 100 + 0.0:.2f}".replace("-0.00", "0.00"),
                f"{v.boundary_f1:.4f}",
                f"{v.latency_ms:.1f}",
                f"{same_mode.latency_ms / v.latency_ms:.2f}x",
                f"{v.size_bytes / 1e6:.2f}",
                f"{v.size_bytes / report.fp32.size_bytes:.0%}",
                "yes" if v.passed else "NO",
                ", ".join(v.kept_fp32) or "-",
            ]
        )
    return rows, headers
