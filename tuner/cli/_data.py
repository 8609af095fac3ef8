"""`tuner data`: synthetic data sets, checks of a Cityscapes root, the pretrained stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tuner.cli._options import COUNT, SIDE, TunerGroup, out_option


@click.group(cls=TunerGroup)
def data() -> None:
    """Datasets, and the stand-in for SAM's pretrained weights."""


@data.command("synth", short_help="Write a synthetic Cityscapes-format dataset.")
@out_option("dataset root to write", required=True)
@click.option("--train", default=64, show_default=True, type=COUNT, help="training images")
@click.option("--val", default=16, show_default=True, type=COUNT, help="validation images")
@click.option(
    "--test", default=0, show_default=True, type=click.IntRange(min=0), help="test images"
)
@click.option("--height", default=256, show_default=True, type=SIDE, help="image height, pixels")
@click.option("--width", default=512, show_default=True, type=SIDE, help="image width, pixels")
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="generator seed: the same seed writes the same images",
)
@click.option(
    "--style",
    type=click.Choice(["default", "shifted"]),
    default="default",
    show_default=True,
    help="shifted: another camera height, palette, lighting and texture (a domain gap)",
)
def data_synth(out_dir: Path, train, val, test, height, width, seed, style) -> None:
    """Write a synthetic Cityscapes-format dataset (images, labelIds, color, instanceIds,
    polygons.json, disparity)."""
    from tuner.core.data import synth

    spec = synth.SynthSpec(
        train=train, val=val, test=test, height=height, width=width, seed=seed, style=style
    )
    synth.generate(out_dir, spec, progress=True)
    click.echo(f"wrote {train} train / {val} val / {test} test images to {out_dir}")


@data.command("check", short_help="Check a Cityscapes root; one line per problem.")
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


@data.command("pretrain")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="state-dict file to write (default: the shipped stand-in, "
    "tuner/core/model/weights/sam_tiny_standin.pth)",
)
@click.option("--quick", is_flag=True, help="2 steps on 4 images (tests)")
@click.option("--steps", type=COUNT, help="optimizer steps (default: 1000)")
@click.option("--threads", type=COUNT, help="CPU threads")
def data_pretrain(out, quick, steps, threads) -> None:
    """Make the pretrained sam_tiny stand-in for SAM: a segmentation pretraining on a separate,
    shifted synthetic set."""
    from tuner.core.pretrain import main

    args = ["--quick"] if quick else []
    for flag, value in (("--out", out), ("--steps", steps), ("--threads", threads)):
        if value is not None:
            args += [flag, str(value)]
    sys.exit(main(args))
