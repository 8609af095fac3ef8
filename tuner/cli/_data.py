"""`tuner data`: synthetic data sets, checks of a Cityscapes root, the pretrained stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tuner.cli._options import COUNT, SIDE, out_option


@click.group()
def data() -> None:
    """Datasets, and the stand-in for SAM's pretrained weights."""


@data.command("synth")
@out_option("dataset root to write", required=True)
@click.option("--train", default=64, show_default=True, type=COUNT, help="training images")
@click.option("--val", default=16, show_default=True, type=COUNT, help="validation images")
@click.option(
    "--test", default=0, show_default=True, type=click.IntRange(min=0), help="test images"
)
@click.option("--height", default=256, show_default=True, type=SIDE)
@click.option("--width", default=512, show_default=True, type=SIDE)
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--style", type=click.Choice(["default", "shifted"]), default="default")
def data_synth(out_dir: Path, train, val, test, height, width, seed, style) -> None:
    """Write a synthetic Cityscapes-format dataset (images, labelIds, color, instanceIds,
    polygons.json, disparity)."""
    from tuner.core.data import synth

    spec = synth.SynthSpec(
        train=train, val=val, test=test, height=height, width=width, seed=seed, style=style
    )
    synth.generate(out_dir, spec, progress=True)
    click.echo(f"wrote {train} train / {val} val / {test} test images to {out_dir}")


@data.command("check")
@click.argument("root", type=click.Path(path_type=Path))
def data_check(root: Path) -> None:
    """Check a Cityscapes root: image and label sizes, label ids, evaluated pixels. One line
    per problem, then a summary; exit status 2 if there is any problem."""
    from tuner.core.data.check import check_root
    from tuner.core.data.cityscapes import CityscapesDataset

    reports = check_root(root, CityscapesDataset)
    for report in reports:
        for problem in report.problems:
            click.echo(problem)
    for report in reports:
        click.echo(report.summary())
    if any(report.problems for report in reports):
        sys.exit(2)


@data.command("pretrain", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def data_pretrain(args) -> None:
    """Make the pretrained sam_tiny stand-in for SAM (--help for its options)."""
    from tuner.core.pretrain import main

    sys.exit(main(list(args)))
