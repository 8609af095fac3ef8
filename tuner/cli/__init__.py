"""The `tuner` command. Thin: each command parses, calls one function of the layers below and
prints what it returns. Heavy imports (torch, optuna, INC) happen inside the commands, so that
`tuner --help` is fast."""

from __future__ import annotations

import click

from tuner.cli._data import data
from tuner.cli._deploy import quantize
from tuner.cli._options import TunerGroup
from tuner.cli._report import dashboard, report
from tuner.cli._search import best, cache, plan, record_curves, run, storage_proxy, studies
from tuner.cli._train import evaluate, export, predict, train


@click.group(cls=TunerGroup)
@click.version_option(package_name="sam-tuner")
def main() -> None:
    """Fine-tune SAM into a Cityscapes segmenter, search its hyper-parameters with Optuna, and
    quantize the winner with Intel Neural Compressor."""


for command in (
    data,
    train,
    predict,
    evaluate,
    export,
    plan,
    run,
    record_curves,
    storage_proxy,
    studies,
    best,
    cache,
    quantize,
    report,
):
    main.add_command(command)
main.add_command(dashboard)

__all__ = ["main"]
