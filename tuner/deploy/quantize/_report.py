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
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeReport:
        """Back from JSON (a study's user attr, comparison.json)."""
        variants = ("fp32", "candidates", "baselines")
        return cls(
            **{k: v for k, v in data.items() if k not in variants},
            fp32=Measurement(**data["fp32"]),
            candidates=[Measurement(**v) for v in data["candidates"]],
            baselines=[Measurement(**v) for v in data.get("baselines", [])],
        )


def comparison_rows(report: QuantizeReport) -> tuple[list[list[Any]], list[str]]:
    headers = [
        "model",
        "run as",
        "mIoU",
        "drop (pts)",
        "boundary F1",
        "latency ms",
        "speed vs FP32 (same run)",
        "size MB",
        "size vs FP32",
        "within tol.",
    ]
    rows = []
    for v in [*(report.baselines or [report.fp32]), *report.candidates]:
        same_mode = next((b for b in report.baselines if b.compiled == v.compiled), report.fp32)
        rows.append(
            [
                v.name + (" (chosen)" if v.name == report.chosen else ""),
                "compiled" if v.compiled else "eager",
                v.miou,
                (report.fp32.miou - v.miou) * 100,
                v.boundary_f1,
                round(v.latency_ms, 2),
                f"{same_mode.latency_ms / v.latency_ms:.2f}x",
                round(v.size_bytes / 1e6, 2),
                f"{v.size_bytes / report.fp32.size_bytes:.0%}",
                "yes" if v.passed else "NO",
            ]
        )
    return rows, headers
