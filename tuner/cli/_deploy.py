"""`tuner quantize`: INT8 with Intel Neural Compressor."""

from __future__ import annotations

from pathlib import Path

import click

from tuner.cli._options import COUNT, STORAGE, RegistryChoice, data_option, out_option, study_option
from tuner.core import paths


def top_rows(top: list[dict]) -> tuple[list[list], list[str]]:
    """One line per quantized configuration: FP32 and INT8 mIoU, drop, latency, size."""
    headers = ["trial", "params", "INT8 method", "FP32 mIoU", "INT8 mIoU", "drop (pts)"]
    headers += ["latency ms", "size MB", "size vs FP32", "shipped"]
    rows = []
    for row in top:
        params = ", ".join(f"{k}={v}" for k, v in row["params"].items())
        if "failure" in row:
            rows.append([row["trial"], params, "none within tolerance", *["-"] * 6, ""])
            continue
        rows.append(
            [
                row["trial"],
                params,
                row["method"],
                f"{row['fp32_miou']:.4f}",
                f"{row['int8_miou']:.4f}",
                f"{row['drop_points']:.2f}",
                f"{row['latency_ms']:.1f}",
                f"{row['size_mb']:.2f}",
                f"{row['size_ratio']:.0%}",
                "yes" if row["chosen"] else "",
            ]
        )
    return rows, headers


class MethodChoice(RegistryChoice):
    """`auto`, `all`, or registered method names separated by commas."""

    name = "method"

    @property
    def choices(self) -> tuple[str, ...]:
        return ("auto", "all", *super().choices)

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(self.choices) + "][,...]"

    def convert(self, value, param, ctx):
        if value in ("auto", "all"):
            return value
        names = [name.strip() for name in str(value).split(",")]
        for name in names:
            super().convert(name, param, ctx)  # a bad name fails here, listing the choices
        return ",".join(names)


# What `tuner.deploy.quantize.METHODS` registers, for `--help` without importing it (torch);
# tests/test_cli.py checks the two agree.
METHOD_NAMES = ("static", "dynamic", "weight_only")


@click.command(short_help="INT8 with Intel Neural Compressor, within an mIoU tolerance.")
@click.argument("target", nargs=-1)
@study_option(required=False, help_text="study whose best trial (or trial N) to quantize")
@STORAGE
@click.option("--checkpoint", type=click.Path(path_type=Path), help="a sam-tuner checkpoint")
@data_option("Cityscapes root (default: the study's data)")
@click.option(
    "--method",
    type=MethodChoice("tuner.deploy.quantize:METHODS", METHOD_NAMES),
    default="auto",
    show_default=True,
    help="auto: first the methods expected to win on this CPU (static W8A8, and weight_only "
    "where the CPU lacks the VNNI/AMX int8 instructions), the others only if those leave no "
    "model within --tolerance that is smaller and faster than FP32; all: every method; or "
    "names, comma-separated: exactly those",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="accepted drop of val mIoU from FP32 to INT8, in points of mIoU (1.0 = 0.01 mIoU, "
    "e.g. 0.3700 -> 0.3600); a method that loses more keeps modules in FP32 or is refused",
)
@click.option(
    "--calib",
    type=COUNT,
    default=16,
    show_default=True,
    help="training images that calibrate activation ranges",
)
@click.option(
    "--backend",
    type=click.Choice(["inc", "ipex"]),
    default="inc",
    show_default=True,
    help="ipex: Intel Extension for PyTorch, where it is installed",
)
@click.option("--no-compile", is_flag=True, help="measure eager models (faster, no int8 kernels)")
@click.option("--val-limit", type=COUNT, help="evaluate on the first N val images")
@click.option(
    "--top",
    type=COUNT,
    default=1,
    show_default=True,
    help="quantize the N best configurations and ship the best INT8 one",
)
@out_option("output folder (default: studies/quantized/STUDY-trialN)")
def quantize(target, study, storage, checkpoint, data_root, no_compile, out_dir, top, **kw):
    """INT8 with Intel Neural Compressor: `quantize best --study NAME`, `quantize trial N
    --study NAME`, or `quantize --checkpoint PATH`."""
    from tuner.core.data import synth
    from tuner.core.environment import isa_summary
    from tuner.core.text import table
    from tuner.deploy.quantize import QuantizeOptions, comparison_rows, quantize_checkpoint
    from tuner.deploy.trials import quantize_trial

    options = QuantizeOptions(compile=not no_compile, **kw)
    if checkpoint is not None and not target:
        root = data_root or synth.embedded(paths.data_dir(), progress=False)
        out_dir = out_dir or paths.inside_home("quantized", Path(checkpoint).stem)
        report = quantize_checkpoint(checkpoint, root, out_dir, options, log=click.echo)
    elif target and target[0] in ("best", "trial") and study:
        number = None
        if target[0] == "trial":
            if len(target) != 2 or not target[1].isdigit():
                raise click.UsageError("usage: tuner quantize trial N --study NAME")
            number = int(target[1])
        report = quantize_trial(
            study, number, options, storage, data_root, out_dir, log=click.echo, top=top
        )
    else:
        raise click.UsageError(
            "usage: tuner quantize best --study NAME | trial N --study NAME | --checkpoint PATH"
        )
    if "top" in report.extras:
        click.echo("\n" + table(*top_rows(report.extras["top"])))
    rows, headers = comparison_rows(report)
    click.echo("\n" + table(rows, headers))
    click.echo(f"\nchosen: {report.chosen} ({report.reason})")
    click.echo(f"saved to {report.output_dir} (with comparison.json)")
    click.echo(f"measured on {isa_summary(report.cpu)}")
