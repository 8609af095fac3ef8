"""What `tuner quantize` found: every candidate measured against FP32, and the choice."""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import asdict, dataclass, field
from typing import Any

from tuner.core.environment import package_versions
from tuner.deploy.quantize._measure import SIZE_BASIS, Measurement

# The packages whose versions decide the numbers (INC's PyTorch wheel is neural-compressor-pt).
VERSIONED = ("sam-tuner", "torch", "torchao", "neural-compressor-pt", "neural-compressor", "optuna")


def versions() -> dict[str, str]:
    return package_versions(VERSIONED)


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


@dataclass
class AdapterCost:
    """What unmergeable adapters (ConvLoRA, AdaptFormer) cost at inference: the same model with
    its adapters removed, which is the graph a merged LoRA model has, timed the same way as the
    adapted row it is compared with (`adapted`, that row's name) and in turns with it, so
    `adapted_latency_ms` is that model timed again beside this one. Latency and size only: with
    its adapters removed the model is not the trained one, so it has no accuracy."""

    name: str
    adapted: str
    compiled: bool
    latency_ms: float
    adapted_latency_ms: float
    size_bytes: int
    latency_basis: str = ""

    @property
    def added_ms(self) -> float:
        return self.adapted_latency_ms - self.latency_ms

    def describe(self) -> str:
        return (
            f"adapters add {self.added_ms:+.1f} ms ({self.added_ms / self.latency_ms:+.0%}) to "
            f"{self.adapted}: {self.adapted_latency_ms:.1f} against {self.latency_ms:.1f} ms, "
            "timed in turns"
        )


@dataclass
class QuantizeReport:
    chosen: str
    fp32: Measurement  # the baseline every candidate is gated on (compiled when compiling)
    candidates: list[Measurement]
    tolerance: float
    cpu: dict[str, Any]
    reason: str
    baselines: list[Measurement] = field(default_factory=list)  # fp32 eager, fp32 compiled
    output_dir: str | None = None  # the final folder (never a staging one)
    reload_max_abs_diff: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # trial; top: the --top K table
    created_utc: str = ""  # ISO 8601, UTC
    versions: dict[str, str] = field(default_factory=dict)
    val_images: int = 0  # images every model was scored on
    calibration_images: int = 0  # training images calibrated on ...
    calibration_windows: int = 0  # ... and the crop-sized windows cut from them
    size_basis: str = SIZE_BASIS
    skipped: list[dict[str, str]] = field(default_factory=list)  # {name, reason}: not run
    source: dict[str, Any] = field(default_factory=dict)  # where the FP32 checkpoint came from
    source_artifact_id: str | None = None  # the FP32 checkpoint's artifact (best.pt)
    output_artifact_id: str | None = None  # the INT8 folder's .tar.gz (null inside it)
    adapter_costs: list[AdapterCost] = field(default_factory=list)  # unmergeable adapters only

    def to_dict(self) -> dict[str, Any]:
        """As stored (comparison.json, quantization.json, the study): every measurement with
        its size in MB and as ratios of the FP32 model's, counted the same way."""
        data = asdict(self)
        for row in [data["fp32"], *data["candidates"], *data["baselines"]]:
            row["size_mb"] = round(row["size_bytes"] / 1e6, 3)
            row["size_ratio"] = round(row["size_bytes"] / self.fp32.size_bytes, 4)
            if row["archive_bytes"] and self.fp32.archive_bytes:
                row["archive_ratio"] = round(row["archive_bytes"] / self.fp32.archive_bytes, 4)
        for row, cost in zip(data["adapter_costs"], self.adapter_costs):
            row["added_ms"] = round(cost.added_ms, 3)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizeReport:
        """Back from JSON (a study's user attr, comparison.json), older reports included."""
        variants = ("fp32", "candidates", "baselines", "adapter_costs")
        known = {f.name for f in dataclasses.fields(cls)}

        def measurement(row: dict[str, Any]) -> Measurement:
            return Measurement(**{k: v for k, v in row.items() if k in Measurement.FIELDS})

        return cls(
            **{k: v for k, v in data.items() if k in known and k not in variants},
            fp32=measurement(data["fp32"]),
            candidates=[measurement(v) for v in data["candidates"]],
            baselines=[measurement(v) for v in data.get("baselines", [])],
            adapter_costs=[
                AdapterCost(**{k: v for k, v in row.items() if k != "added_ms"})
                for row in data.get("adapter_costs", [])
            ],
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
    for cost in report.adapter_costs:
        rows.append(
            [
                f"{cost.name} (the merged-LoRA graph): {cost.describe()}",
                "compiled" if cost.compiled else "eager",
                "-",
                "-",
                "-",
                f"{cost.latency_ms:.1f}",
                "-",
                f"{cost.size_bytes / 1e6:.2f}",
                f"{cost.size_bytes / report.fp32.size_bytes:.0%}",
                "-",
                "-",
            ]
        )
    return rows, headers
