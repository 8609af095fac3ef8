"""`tuner report` and `tuner dashboard`: looking at a study."""

from __future__ import annotations

from pathlib import Path

import click

from tuner.cli._options import STORAGE, out_option, study_option
from tuner.core import paths


@click.command()
@study_option()
@STORAGE
@out_option("HTML file (default: studies/reports/NAME.html)", folder=False)
@click.option(
    "--png",
    "png_dir",
    type=click.Path(path_type=Path),
    help="also export every figure as PNG (needs a system Chromium)",
)
@click.option(
    "--no-dashboard",
    is_flag=True,
    help="do not write the study's note nor attach the report to the study",
)
def report(study, storage, out_file, png_dir, no_dashboard) -> None:
    """Write a self-contained HTML report of a study; put its decision in the study's note and
    attach the report to the study, where optuna-dashboard shows both."""
    from tuner.report import attach_to_dashboard, build_sections, export_png, write_report
    from tuner.search.study import load_existing_study, open_storage

    loaded = load_existing_study(study, open_storage(storage, create=False))
    sections = build_sections(loaded)
    out_file = write_report(
        loaded, out_file or paths.inside_home("reports", f"{study}.html"), sections
    )
    click.echo(f"report: {out_file}")
    if not no_dashboard:
        attach_to_dashboard(loaded, sections, report_file=out_file)
        click.echo("the decision is in the study's note and this report attached to the study")
    if png_dir:
        _, message = export_png(sections, png_dir)
        click.echo(message)


@click.command()
@STORAGE
@click.option("--artifacts", help="artifact folder (default: the one the study recorded)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard(storage, artifacts, host, port) -> None:
    """Serve optuna-dashboard on the study storage, with checkpoints as artifacts."""
    from tuner.report.dashboard import serve

    serve(storage, artifacts, host, port)
