"""A study in pictures: plotly figures, an offline HTML report, the same figures inside
optuna-dashboard, and PNG export through kaleido when a system Chromium exists."""

from __future__ import annotations

import optuna

from tuner.report._decision import decision
from tuner.report._export import export_png, system_chromium
from tuner.report._figures import class_heatmap, comparison, learning_curves
from tuner.report._html import render_html, write_report
from tuner.report._optuna_figures import optuna_figures
from tuner.report._predictions import prediction_grid
from tuner.report._provenance import provenance_section
from tuner.report._quantization import latency_front, quantization_table
from tuner.report._sections import SECTIONS, Section
from tuner.report.dashboard import attach_to_dashboard

__all__ = [
    "SECTIONS",
    "Section",
    "attach_to_dashboard",
    "build_sections",
    "export_png",
    "render_html",
    "system_chromium",
    "write_report",
]


# Assembling ----------------------------------------------------------------------------------
def build_sections(study: optuna.Study, predictions: bool = True) -> list[Section]:
    """The decision first, where its numbers come from, then the figures that say something
    for this study."""
    sections = [decision(study), provenance_section(study), *optuna_figures(study)]
    sections += [learning_curves(study), latency_front(study), comparison(study)]
    sections += [class_heatmap(study), quantization_table(study)]
    if predictions:
        sections.append(prediction_grid(study))
    return [s for s in sections if s is not None]
