"""The deployment side of a study: accuracy against latency, and FP32 against INT8.

Every latency drawn here was measured, and says where: a trial's during the search (once per
architecture, `tuner.core.inference.architecture_latency_ms`), an INT8 model's and its FP32
source's in `tuner quantize`'s own run. The two runs' timings are not rescaled into one
another: they are shown side by side, each labelled.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from tuner.deploy.quantize import QuantizeReport, comparison_rows
from tuner.report._sections import SECTIONS, Section, titled, trial_label
from tuner.search import attrs


def latency_front(study: optuna.Study) -> Section | None:
    """val mIoU against latency per crop: every completed trial and their Pareto front where
    the trials differ in architecture; where they all share one (a loss study), that one
    latency in words instead of a one-point front. INT8 copies and their FP32 sources at what
    `tuner quantize` measured."""
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(attrs.LATENCY_MS) is not None
        and t.user_attrs.get("val_miou") is not None
    ]
    quantized = _quantize_points(study, {t.number: t for t in trials})
    latencies = {round(t.user_attrs[attrs.LATENCY_MS], 6) for t in trials}
    if len(latencies) < 2:
        return _one_architecture(trials, quantized)
    points = [(t.user_attrs[attrs.LATENCY_MS], t.user_attrs["val_miou"], t) for t in trials]
    figure = go.Figure()
    figure.add_trace(
        go.Scatter(
            x=[p[0] for p in points],
            y=[p[1] for p in points],
            mode="markers",
            name="FP32 trials (latency measured in the search)",
            text=[trial_label(p[2]) for p in points],
        )
    )
    front = _front(points)
    figure.add_trace(
        go.Scatter(
            x=[p[0] for p in front],
            y=[p[1] for p in front],
            mode="lines+markers",
            name="their front",
            line={"dash": "dot"},
            marker={"size": 10, "symbol": "circle-open"},
        )
    )
    for name, symbol, rows in (
        ("FP32 in tuner quantize's run", "square-open", [q for q in quantized if q[3] == "fp32"]),
        ("INT8 in tuner quantize's run", "diamond", [q for q in quantized if q[3] == "int8"]),
    ):
        if rows:
            figure.add_trace(
                go.Scatter(
                    x=[q[0] for q in rows],
                    y=[q[1] for q in rows],
                    mode="markers",
                    marker={"symbol": symbol, "size": 11},
                    name=name,
                    text=[q[2] for q in rows],
                )
            )
    figure.update_layout(xaxis_title="latency (ms per crop, batch 1)", yaxis_title="val mIoU")
    note = (
        "Latencies are measured, none derived. The search measured each architecture once per "
        "crop on the machine it trained on; tuner quantize measured its FP32 source and INT8 "
        f"copies in its own run ({quantized[0][4]}): compare INT8 with the FP32 square of "
        "that same run, not with the trials."
        if quantized
        else ""
    )
    return Section(
        "latency-front",
        SECTIONS["latency-front"],
        figure=titled(figure, SECTIONS["latency-front"]),
        note=note,
    )


def _one_architecture(trials: list[FrozenTrial], quantized: list[tuple]) -> Section | None:
    """Trials that share one architecture share one latency (speed does not depend on the
    weights); a front of one point would say nothing, so this says it in words."""
    if not trials and not quantized:
        return None
    parts = []
    if trials:
        latency = trials[0].user_attrs[attrs.LATENCY_MS]
        parts.append(
            f"All {len(trials)} completed trials share one architecture, so one latency: "
            f"{latency:.1f} ms per crop (batch 1), measured once during the search. There is "
            "no accuracy-latency trade-off between them to draw."
        )
    if quantized:
        runs = "; ".join(f"{q[2]}: {q[0]:.1f} ms, mIoU {q[1]:.4f}" for q in quantized)
        parts.append(
            f"In tuner quantize's own run: {runs} ({quantized[0][4]}; same machine and inputs "
            "for FP32 and INT8)."
        )
    return Section(
        "latency-front",
        SECTIONS["latency-front"],
        html="".join(f"<p>{html.escape(p)}</p>" for p in parts),
    )


def _front(points: list[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """The points no other point beats on both latency (lower) and mIoU (higher)."""
    front, best = [], -math.inf
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def _quantize_points(study: optuna.Study, trials: dict[int, FrozenTrial]) -> list[tuple]:
    """(latency ms, mIoU, label, "fp32" | "int8") of each model `tuner quantize` measured."""
    report = attrs.record(study, attrs.QUANTIZATION)
    if not report:
        return []
    rows = report.get("extras", {}).get("top") or [_single_row(report)]
    points = []
    for row in rows:
        number = row.get("trial")
        if "int8_miou" not in row:
            continue
        basis = row.get("latency_basis") or "measured"
        if row.get("fp32_latency_ms") and row.get("fp32_miou") is not None:
            fp32 = (row["fp32_latency_ms"], row["fp32_miou"], f"#{number} FP32", "fp32", basis)
            points.append(fp32)
        points.append((row["latency_ms"], row["int8_miou"], f"#{number} INT8", "int8", basis))
    return points


def _single_row(report: dict) -> dict:
    chosen = next(c for c in report["candidates"] if c["name"] == report["chosen"])
    return {
        "trial": report.get("extras", {}).get("trial"),
        "int8_miou": chosen["miou"],
        "latency_ms": chosen["latency_ms"],
        "fp32_latency_ms": report["fp32"]["latency_ms"],
        "fp32_miou": report["fp32"]["miou"],
        "latency_basis": chosen.get("latency_basis"),
    }


@dataclass(frozen=True)
class Int8Result:
    """The chosen INT8 model against FP32, as every surface states it (the report's decision and
    the dashboard's note): the change in mIoU in points, rounded as printed and signed as a gain
    or a loss; speed against the FP32 baseline run the same way (compiled or eager), as the
    FP32-vs-INT8 table counts it; and the 95 % interval of the FP32 run it came from."""

    name: str
    trial: int | None
    miou: float
    fp32_miou: float
    latency_ms: float
    fp32_latency_ms: float
    size_ratio: float
    derived: bool  # its latency was derived, not measured
    interval: tuple[float, float] | None
    reason: str

    @property
    def change_points(self) -> float:
        return round((self.miou - self.fp32_miou) * 100, 2) + 0.0  # as printed; no "-0.00"

    @property
    def direction(self) -> str:
        change = self.change_points
        return "gain" if change > 0 else "loss" if change < 0 else "no change"

    @property
    def speedup(self) -> float:
        return self.fp32_latency_ms / self.latency_ms

    @property
    def inside_noise(self) -> bool | None:
        """Whether the INT8 mIoU lies inside the FP32 run's interval (None: none recorded)."""
        if self.interval is None:
            return None
        return self.interval[0] <= self.miou <= self.interval[1]


def int8_result(study: optuna.Study) -> Int8Result | None:
    """What `tuner quantize` shipped for this study, or None (not quantized, nothing chosen)."""
    report = attrs.record(study, attrs.QUANTIZATION)
    if not report:
        return None
    chosen = next((c for c in report.get("candidates", []) if c["name"] == report["chosen"]), None)
    if chosen is None:
        return None
    fp32 = report["fp32"]
    same_mode = next(
        (b for b in report.get("baselines", []) if b.get("compiled") == chosen.get("compiled")),
        fp32,
    )
    number = report.get("extras", {}).get("trial")
    trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    recorded = trials[0].user_attrs.get(attrs.MIOU_CI) if trials else None
    return Int8Result(
        name=chosen["name"],
        trial=number,
        miou=chosen["miou"],
        fp32_miou=fp32["miou"],
        latency_ms=chosen["latency_ms"],
        fp32_latency_ms=same_mode["latency_ms"],
        size_ratio=chosen["size_bytes"] / fp32["size_bytes"],
        derived=chosen.get("latency_basis", "").startswith("derived"),
        interval=(float(recorded[0]), float(recorded[1])) if recorded else None,
        reason=report.get("reason", ""),
    )


# The columns a half-width card or a PNG has room for; the HTML report shows them all.
QUANTIZATION_COLUMNS = ("model", "run as", "mIoU", "drop (pts)", "latency ms", "size vs FP32")


def quantization_table(study: optuna.Study) -> Section:
    """FP32 against every INT8 candidate: an HTML table in the report (it wraps, nothing is
    clipped) and a plotly table for PNG export, tall enough for its rows."""
    report = attrs.record(study, attrs.QUANTIZATION)
    if not report:
        return Section(
            "quantization",
            SECTIONS["quantization"],
            note=f"not quantized yet: run `tuner quantize best --study {study.study_name}`",
        )
    rows, headers = comparison_rows(QuantizeReport.from_dict(report))
    keep = [headers.index(c) for c in QUANTIZATION_COLUMNS]
    figure = go.Figure(
        go.Table(
            columnwidth=[3, 2, 2, 2, 2, 2],
            header={"values": list(QUANTIZATION_COLUMNS), "font": {"size": 11}},
            cells={"values": [[row[i] for row in rows] for i in keep], "font": {"size": 11}},
        )
    )
    # Rows wrap at a card's width: room for two lines each, and the title and header.
    titled(figure, SECTIONS["quantization"], height=160 + 48 * len(rows))
    isa = ", ".join(k for k, v in report["cpu"]["isa"].items() if v)
    kept = {c["name"]: c.get("kept_fp32") for c in report["candidates"] if c.get("kept_fp32")}
    note = (
        f"trial {report.get('extras', {}).get('trial')}; {report['reason']}. "
        f"CPU: {report['cpu']['model']} ({isa}). 'drop (pts)' is FP32's mIoU minus the row's, "
        "in points of mIoU: negative is a gain."
        + "".join(f" {name} keeps {', '.join(mods)} in FP32." for name, mods in kept.items())
    )
    return Section(
        "quantization",
        SECTIONS["quantization"],
        figure=figure,
        html=_html_table(headers, rows),
        note=note,
    )


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table class='grid'><tr>{head}</tr>{body}</table>"
