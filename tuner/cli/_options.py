"""What several commands share: option types, the study-name and --out checks, the TrainConfig
flags (their choices read from the registries), and the one-line error handling."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from tuner.core import paths
from tuner.core.config import LORA_TARGETS, TrainConfig
from tuner.core.errors import UserError
from tuner.core.paths import check_study_name
from tuner.core.registry import ADAPTERS, ENCODERS, HEADS, LOSSES, Registry

COUNT = click.IntRange(min=1)
SIDE = click.IntRange(min=32)  # image sides in pixels
POSITIVE = click.FloatRange(min=0, min_open=True)  # also refuses nan


class TunerGroup(click.Group):
    """Turns the errors a user can fix into one red line and exit code 2, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


class RegistryChoice(click.Choice):
    """A choice among a registry's names, read when the option is used or its help is shown:
    a loss registered anywhere appears in `--help` and is accepted, with no list to update.
    A registry above the core is given as "module:NAME" and imported only then."""

    def __init__(self, registry: Registry | str) -> None:
        self._registry = registry
        self.case_sensitive = True

    @property
    def registry(self) -> Registry:
        if isinstance(self._registry, str):
            module, name = self._registry.split(":")
            self._registry = getattr(importlib.import_module(module), name)
        return self._registry

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.registry.names())


STORAGE = click.option("--storage", help="Optuna storage URL (default: sqlite under studies/)")
FROM_SCRATCH = click.option(
    "--from-scratch",
    is_flag=True,
    help="start sam_tiny from random weights (sam_tiny_scratch), not the shipped stand-in",
)
CACHE_LIMIT = click.option(
    "--cache-limit",
    help="size limit of the frozen-prefix feature cache, e.g. 20G (default: $TUNER_CACHE_LIMIT "
    "or 20G); least recently used feature sets are evicted",
)


def _study_name(ctx, param, value):
    if value is None:
        return None
    try:
        return check_study_name(value, "--study")
    except UserError as exc:
        raise click.BadParameter(str(exc).removeprefix(f"--study={value!r}: ")) from None


def study_option(required: bool = True, help_text: str = "study name"):
    return click.option("--study", required=required, callback=_study_name, help=help_text)


def out_option(help_text: str, required: bool = False, folder: bool = True):
    """--out, checked before any work starts: a file where a folder belongs (or the reverse)
    is refused then, not after training."""

    def check(ctx, param, value):
        return None if value is None else paths.check_output(value, folder)

    return click.option(
        "--out",
        "out_dir" if folder else "out_file",
        type=click.Path(path_type=Path),
        required=required,
        help=help_text,
        callback=check,
    )


def data_option(help_text: str):
    return click.option("--data", "data_root", type=click.Path(path_type=Path), help=help_text)


def config_options(fn):
    """Flags for the TrainConfig fields people change most; the rest go in --config."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="YAML/JSON file of TrainConfig fields",
        ),
        click.option("--model", type=RegistryChoice(ENCODERS)),
        click.option("--head", type=RegistryChoice(HEADS)),
        click.option("--loss", type=RegistryChoice(LOSSES)),
        click.option("--freeze-depth", type=click.IntRange(min=0)),
        click.option("--adapter", type=RegistryChoice(ADAPTERS), help="on the frozen blocks"),
        click.option("--lora-rank", type=COUNT),
        click.option("--lora-alpha", type=POSITIVE, help="updates are scaled by alpha / rank"),
        click.option("--lora-targets", type=click.Choice(LORA_TARGETS)),
        click.option("--lr", type=POSITIVE),
        click.option("--batch-size", type=COUNT),
        click.option("--epochs", type=COUNT),
        click.option("--image-size", type=SIDE, nargs=2, help="training crop H W"),
        click.option("--seed", type=click.IntRange(min=0)),
        click.option("--device", help="auto | cpu | cuda | cuda:N"),
        click.option("--threads", type=COUNT, help="CPU threads"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_config(config_file: Path | None, **flags) -> TrainConfig:
    values = {}
    if config_file is not None:
        values = TrainConfig.from_file(config_file).to_dict()
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig.from_dict(values, source=str(config_file or "command line"))
