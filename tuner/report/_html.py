"""One self-contained HTML page: plotly.js embedded once, images inline, nothing fetched."""

from __future__ import annotations

import html
from pathlib import Path

import optuna

from tuner.report._sections import Section
from tuner.search.study import metric_names, state_counts


def render_html(study: optuna.Study, sections: list[Section]) -> str:
    """One self-contained page: plotly.js embedded once, images inline, nothing fetched."""
    parts, plotly_included = [], False
    for section in sections:
        body = ""
        if section.html is not None:
            body = section.html
        elif section.figure is not None:
            body = section.figure.to_html(
                full_html=False, include_plotlyjs=not plotly_included, div_id=f"fig-{section.key}"
            )
            plotly_included = True
        note = f'<p class="note">{html.escape(section.note)}</p>' if section.note else ""
        parts.append(
            f'<section id="{section.key}"><h2>{html.escape(section.title)}</h2>'
            f"{note}{body}</section>"
        )
    counts = state_counts(study.get_trials(deepcopy=False))
    summary = ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items()))
    title = f"Study {html.escape(study.study_name)}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }}
section {{ margin: 2.5rem 0; }} h2 {{ border-bottom: 1px solid #ddd; padding-bottom: .3rem; }}
.note {{ color: #666; }} .warn {{ color: #a15c00; }}
.decision {{ font-size: 1.15rem; }}
table {{ border-collapse: collapse; font-size: .9rem; }}
table.kv th {{ text-align: left; padding: .2rem 1rem .2rem 0; vertical-align: top; }}
table.kv td {{ overflow-wrap: anywhere; }}
table.grid th, table.grid td {{ border: 1px solid #ddd; padding: .25rem .5rem; }}
</style></head>
<body><h1>{title}</h1>
<p>{summary}; objectives: {html.escape(", ".join(metric_names(study)))}.</p>
{"".join(parts)}
</body></html>
"""


def write_report(study: optuna.Study, out: Path, sections: list[Section]) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(study, sections))
    return out
