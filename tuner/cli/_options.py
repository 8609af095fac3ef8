"""What several commands share: option types, the study-name and --out checks, the TrainConfig
flags (their choices read from the registries), and the one-line error handling."""

from __future__ import annotations

import importlib
import inspect
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
    """Turns the errors a user can fix into one red line and exit code 2, not a traceback;
    lists each command with its whole short help (click cuts it at the width with "...")."""

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.short_help or first_sentence(command.help or "")))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)  # wraps long text onto more lines, never cuts it

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


def first_sentence(text: str) -> str:
    """The first sentence of a docstring, whole, on one line."""
    paragraph = " ".join(inspect.cleandoc(text).split("\n\n")[0].split())
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


class RegistryChoice(click.Choice):
    """A choice among a registry's names, read when the option is used or its help is shown:
    a loss registered anywhere appears in `--help` and is accepted, with no list to update.
    Help lists the registry's declared names, so that it imports no provider (torch).
    A registry above the core is given as "module:NAME" with the names it declares, and
    imported only when a value is checked."""

    def __init__(self, registry: Registry | str, declared: tuple[str, ...] = ()) -> None:
        self._registry = registry
        self._declared = declared
        self.case_sensitive = True

    @property
    def registry(self) -> Registry:
        if isinstance(self._registry, str):
            module, name = self._registry.split(":")
            self._registry = getattr(importlib.import_module(module), name)
        return self._registry

    @property
    def choices(self) -> tuple[str, ...]:
        if isinstance(self._registry, str):  # help or completion: not imported yet
            return self._declared
        return tuple(self._registry.known_names())

    def convert(self, value, param, ctx):
        if isinstance(self._registry, str):  # the command runs: check the real names
            self.registry  # noqa: B018 - imports the module that fills the registry
        return super().convert(value, param, ctx)


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


JOBS = click.option(
    "--jobs", default=1, show_default=True, type=COUNT, help="worker processes on this machine"
)
DEVICE = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="default: auto")
THREADS = click.option("--threads", type=COUNT, help="CPU threads per worker")
CHECKPOINT = click.option("--checkpoint", type=click.Path(path_type=Path), help="official SAM .pth")


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
        click.option("--model", type=RegistryChoice(ENCODERS), help="SAM image encoder size"),
        click.option("--head", type=RegistryChoice(HEADS), help="segmentation head"),
        click.option("--loss", type=RegistryChoice(LOSSES), help="training loss"),
        click.option(
            "--freeze-depth",
            type=click.IntRange(min=0),
            help="freeze the first N encoder blocks and the embedding before them (0: train all)",
        ),
        click.option(
            "--adapter",
            type=RegistryChoice(ADAPTERS),
            help="fine-tuning method, on the frozen blocks (convlora and adaptformer: on every "
            "block, the encoder frozen, unless --freeze-depth says otherwise)",
        ),
        click.option("--lora-rank", type=COUNT, help="rank of the LoRA (and ConvLoRA) updates"),
        click.option("--lora-alpha", type=POSITIVE, help="updates are scaled by alpha / rank"),
        click.option(
            "--lora-targets",
            type=click.Choice(LORA_TARGETS),
            help="Linears that LoRA (and ConvLoRA) adapts",
        ),
        click.option("--convlora-experts", type=COUNT, help="ConvLoRA: convolution scales 1..N"),
        click.option("--adapter-dim", type=COUNT, help="AdaptFormer: bottleneck width"),
        click.option("--adapter-scale", type=POSITIVE, help="AdaptFormer: output scale"),
        click.option(
            "--lr",
            type=POSITIVE,
            help="peak AdamW learning rate of the head; the encoder gets lr x encoder_lr_mult",
        ),
        click.option("--batch-size", type=COUNT, help="images per optimizer step"),
        click.option("--epochs", type=COUNT, help="passes over the training images"),
        click.option("--image-size", type=SIDE, nargs=2, help="training crop H W, in pixels"),
        click.option(
            "--seed",
            type=click.IntRange(min=0),
            help="seed of initial weights, data order and augmentation",
        ),
        click.option("--device", help="auto | cpu | cuda | cuda:N"),
        click.option("--threads", type=COUNT, help="CPU threads"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_config(config_file: Path | None, **flags) -> TrainConfig:
    values = {}
    if config_file is not None:
        values = TrainConfig.read_file(config_file)  # its keys, so defaults stay defaults
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig.from_dict(values, source=str(config_file or "command line"))
