"""The `tuner` command. Thin: it parses, calls one function, prints what it returns."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tuner import paths
from tuner.config import TrainConfig
from tuner.errors import UserError


class TunerGroup(click.Group):
    """Turns the errors a user can fix into one red line and exit code 2, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=TunerGroup)
@click.version_option(package_name="sam-tuner")
def main() -> None:
    """Fine-tune SAM into a Cityscapes segmenter, search its hyper-parameters with Optuna, and
    quantize the winner with Intel Neural Compressor."""


COUNT = click.IntRange(min=1)
SIDE = click.IntRange(min=32)  # image sides in pixels
POSITIVE = click.FloatRange(min=0, min_open=True)  # also refuses nan
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
    from tuner.space import check_study_name

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

    name = "out_dir" if folder else "out_file"
    return click.option(
        "--out",
        name,
        type=click.Path(path_type=Path),
        required=required,
        help=help_text,
        callback=check,
    )


def data_option(help_text: str):
    return click.option("--data", "data_root", type=click.Path(path_type=Path), help=help_text)


# Data ----------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Datasets."""


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
def data_synth(out_dir: Path, train, val, test, height, width, seed) -> None:
    """Write a synthetic Cityscapes-format dataset (images, labelIds, color, instanceIds,
    polygons.json, disparity)."""
    from tuner.data import synth

    spec = synth.SynthSpec(train=train, val=val, test=test, height=height, width=width, seed=seed)
    synth.generate(out_dir, spec, progress=True)
    click.echo(f"wrote {train} train / {val} val / {test} test images to {out_dir}")


@data.command("check")
@click.argument("root", type=click.Path(path_type=Path))
def data_check(root: Path) -> None:
    """Check a Cityscapes root: image and label sizes, label ids, evaluated pixels. One line
    per problem, then a summary; exit status 2 if there is any problem."""
    from tuner.data.check import check_root
    from tuner.data.cityscapes import CityscapesDataset

    reports = check_root(root, CityscapesDataset)
    for report in reports:
        for problem in report.problems:
            click.echo(problem)
    for report in reports:
        click.echo(report.summary())
    if any(report.problems for report in reports):
        sys.exit(2)


# Training ------------------------------------------------------------------------------------
def config_options(fn):
    """Flags for the TrainConfig fields people change most; the rest go in --config."""
    options = [
        click.option(
            "--config",
            "config_file",
            type=click.Path(path_type=Path),
            help="YAML/JSON file of TrainConfig fields",
        ),
        click.option("--model", help="sam_tiny | vit_b | vit_l | vit_h"),
        click.option("--head", help="linear | conv | mask_decoder"),
        click.option("--loss", help="ce | ohem_ce | focal | dice | ce_dice | lovasz | boundary_ce"),
        click.option("--freeze-depth", type=click.IntRange(min=0)),
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


@main.command()
@config_options
@data_option("Cityscapes root; default: the synthetic set under studies/data")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="official SAM checkpoint (sam_vit_b/l/h .pth) to start from",
)
@FROM_SCRATCH
@out_option("run folder (default: studies/runs/MODEL-HEAD-LOSS)")
@CACHE_LIMIT
def train(config_file, data_root, checkpoint, from_scratch, out_dir, cache_limit, **flags) -> None:
    """Fine-tune one configuration and print its metrics."""
    from tuner.data.cityscapes import CityscapesDataset
    from tuner.model import resolve_model
    from tuner.model.backbone import scratch_variant
    from tuner.tables import metrics_table
    from tuner.train import fit

    config = build_config(config_file, **flags)
    if checkpoint is not None and from_scratch:
        raise click.UsageError("--checkpoint and --from-scratch exclude each other")
    if checkpoint is not None:
        config = resolve_model(config.replace(sam_checkpoint=str(checkpoint)))
    if from_scratch:
        config = config.replace(model=scratch_variant(config.model))
    root = data_root or paths.synthetic_data()
    train_set = CityscapesDataset(root, "train", limit=config.train_limit)
    val_set = CityscapesDataset(root, "val", limit=config.val_limit)
    out_dir = out_dir or paths.inside_home("runs", f"{config.model}-{config.head}-{config.loss}")
    cache = paths.feature_cache(cache_limit)
    summary = fit(config, train_set, val_set, out_dir=out_dir, cache=cache)
    click.echo(
        f"\nbest epoch {summary.best_epoch + 1} of {summary.epochs_run}; "
        f"{summary.fit_seconds:.0f}s in all "
        f"({sum(summary.epoch_seconds) / summary.epochs_run:.1f}s per epoch)"
    )
    click.echo(metrics_table(summary.best_metrics))
    click.echo(f"checkpoint: {summary.checkpoint}")


@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), help="sam-tuner checkpoint")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="quantized model folder written by `tuner quantize`",
)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@out_option("folder for the colour labels and overlays", required=True)
def predict(checkpoint, model_dir, images, out_dir) -> None:
    """Segment IMAGES; write colour label PNGs and overlays."""
    from tuner.predict import load_predictor, predict_files

    predictor = load_predictor(checkpoint, model_dir)
    for written in predict_files(predictor, images, out_dir):
        click.echo(written)


@main.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), required=True)
@click.option("--data", "data_root", type=click.Path(path_type=Path), required=True)
@click.option("--split", default="val", show_default=True)
@out_option("also write label-id PNGs for the official evaluation")
@click.option("--device", default="auto", show_default=True)
def evaluate(checkpoint, data_root, split, out_dir, device) -> None:
    """Metrics of a checkpoint on a Cityscapes split."""
    from tuner.predict import evaluate_checkpoint
    from tuner.tables import metrics_table

    metrics = evaluate_checkpoint(checkpoint, data_root, split, out_dir, device)
    click.echo(metrics_table(metrics, prefix=""))
    if out_dir:
        click.echo(
            f"label-id predictions in {out_dir} (csEvalPixelLevelSemanticLabeling reads them)"
        )


# Search --------------------------------------------------------------------------------------
@main.command()
@study_option(help_text="study name; its space is search_spaces/NAME.yaml")
@click.option("--space", "space_file", type=click.Path(path_type=Path), help="search space YAML")
@click.option("--trials", type=COUNT, help="run N more trials (default: the space's total budget)")
@click.option("--timeout", type=POSITIVE, help="stop starting trials after S seconds")
@STORAGE
@click.option("--artifacts", help="artifact folder or s3://bucket (default: studies/artifacts)")
@data_option("Cityscapes root (default: the embedded synthetic set)")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="official SAM .pth")
@FROM_SCRATCH
@click.option(
    "--jobs", default=1, show_default=True, type=COUNT, help="worker processes on this machine"
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="default: auto")
@click.option("--threads", type=COUNT, help="CPU threads per worker")
@click.option("--no-report", is_flag=True, help="do not refresh the dashboard figures at the end")
@CACHE_LIMIT
def run(
    study,
    space_file,
    trials,
    timeout,
    storage,
    artifacts,
    data_root,
    checkpoint,
    from_scratch,
    jobs,
    device,
    threads,
    no_report,
    cache_limit,
) -> None:
    """Create or resume a study and run trials until its budget is spent."""
    from tuner.search import RunOptions
    from tuner.search import run as run_study

    options = RunOptions(
        study=study,
        space_file=str(space_file) if space_file else None,
        trials=trials,
        timeout=timeout,
        storage=storage,
        artifacts=artifacts,
        data_root=str(data_root) if data_root else None,
        checkpoint=str(checkpoint) if checkpoint else None,
        from_scratch=from_scratch,
        device=device,
        threads=threads,
        jobs=jobs,
        cache_limit=cache_limit,
    )
    try:
        result = run_study(options)
    except KeyboardInterrupt:
        click.echo(
            "\ninterrupted: the running trial is marked FAIL and queued again; "
            "run the same command to continue.",
            err=True,
        )
        _print_leaderboard(study, storage)
        sys.exit(130)
    _print_leaderboard(study, storage, result)
    if not no_report:
        from tuner.report import attach_to_dashboard

        try:
            count = attach_to_dashboard(result)
        except Exception as exc:  # the study is done; a figure must not turn that into a failure
            click.secho(f"figures not attached: {type(exc).__name__}: {exc}", fg="yellow")
            return
        click.echo(
            f"{count} figures attached to the study: `tuner dashboard` shows them; "
            f"`tuner report --study {study}` writes the HTML report"
        )


def _print_leaderboard(study_name, storage_url, study=None) -> None:
    from tuner.study import leaderboard_rows, load_existing_study, open_storage
    from tuner.tables import table

    study = study or load_existing_study(study_name, open_storage(storage_url, create=False))
    rows, headers = leaderboard_rows(study)
    click.echo(f"\nleaderboard of study {study.study_name!r} ({len(study.trials)} trials)")
    click.echo(table(rows, headers))


@main.command()
@STORAGE
@click.option("--artifacts", help="artifact folder (default: the one the study recorded)")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard(storage, artifacts, host, port) -> None:
    """Serve optuna-dashboard on the study storage, with checkpoints as artifacts."""
    from tuner.dashboard import serve

    serve(storage, artifacts, host, port)


@main.command()
@STORAGE
def studies(storage) -> None:
    """List studies: trials by state and best values."""
    from tuner.study import list_studies
    from tuner.tables import table

    rows = list_studies(storage)
    if not rows:
        click.echo("no studies yet: try `tuner run --study smoke`")
    else:
        headers = ["study", "trials", "complete", "pruned", "fail", "running", "best"]
        click.echo(table(rows, headers))
    click.echo(paths.feature_cache().usage().describe())


@main.command()
@CACHE_LIMIT
@click.option("--clear", is_flag=True, help="remove every feature set not in use")
def cache(cache_limit, clear) -> None:
    """The frozen-prefix feature cache: its size, or --clear it."""
    features = paths.feature_cache(cache_limit)
    if clear:
        click.echo(f"removed {features.clear()} feature set(s)")
    click.echo(features.usage().describe())


@main.command()
@study_option()
@STORAGE
def best(study, storage) -> None:
    """The best trial (or Pareto front): params, metrics and checkpoint."""
    from tuner.study import describe_best

    click.echo(describe_best(study, storage))


# Quantization ----------------------------------------------------------------------------------
@main.command()
@click.argument("target", nargs=-1)
@study_option(required=False, help_text="study whose best trial (or trial N) to quantize")
@STORAGE
@click.option("--checkpoint", type=click.Path(path_type=Path), help="a sam-tuner checkpoint")
@data_option("Cityscapes root (default: the study's data)")
@click.option(
    "--method",
    type=click.Choice(["static", "dynamic", "weight_only", "auto"]),
    default="auto",
    show_default=True,
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1.0,
    show_default=True,
    help="allowed mIoU drop in points",
)
@click.option("--calib", type=COUNT, default=16, show_default=True, help="calibration images")
@click.option("--backend", type=click.Choice(["inc", "ipex"]), default="inc", show_default=True)
@click.option("--no-compile", is_flag=True, help="measure eager models (faster, no int8 kernels)")
@click.option("--val-limit", type=COUNT, help="evaluate on the first N val images")
@out_option("output folder (default: studies/quantized/STUDY-trialN)")
def quantize(
    target,
    study,
    storage,
    checkpoint,
    data_root,
    method,
    tolerance,
    calib,
    backend,
    no_compile,
    val_limit,
    out_dir,
) -> None:
    """INT8 with Intel Neural Compressor: `quantize best --study NAME`, `quantize trial N
    --study NAME`, or `quantize --checkpoint PATH`."""
    import json as json_module

    from tuner.quantize import QuantizeOptions, comparison_rows, quantize_checkpoint, quantize_trial
    from tuner.tables import table

    options = QuantizeOptions(
        method=method,
        tolerance=tolerance,
        calib=calib,
        compile=not no_compile,
        backend=backend,
        val_limit=val_limit,
    )
    if checkpoint is not None and not target:
        root = data_root or paths.synthetic_data(progress=False)
        out_dir = out_dir or paths.inside_home("quantized", Path(checkpoint).stem)
        report = quantize_checkpoint(checkpoint, root, out_dir, options, log=click.echo)
    elif target and target[0] in ("best", "trial") and study:
        number = None
        if target[0] == "trial":
            if len(target) != 2 or not target[1].isdigit():
                raise click.UsageError("usage: tuner quantize trial N --study NAME")
            number = int(target[1])
        report = quantize_trial(study, number, options, storage, data_root, out_dir, log=click.echo)
    else:
        raise click.UsageError(
            "usage: tuner quantize best --study NAME | trial N --study NAME | --checkpoint PATH"
        )
    rows, headers = comparison_rows(report)
    click.echo("\n" + table(rows, headers))
    click.echo(f"\nchosen: {report.chosen} ({report.reason})")
    click.echo(f"saved to {report.output_dir} (with comparison.json)")
    click.echo(json_module.dumps({"cpu": report.cpu["isa"]}))


# Report ----------------------------------------------------------------------------------------
@main.command()
@study_option()
@STORAGE
@out_option("HTML file (default: studies/reports/NAME.html)", folder=False)
@click.option(
    "--png",
    "png_dir",
    type=click.Path(path_type=Path),
    help="also export every figure as PNG (needs a system Chromium)",
)
@click.option("--no-dashboard", is_flag=True, help="do not attach the figures to the study")
def report(study, storage, out_file, png_dir, no_dashboard) -> None:
    """Write a self-contained HTML report of a study and attach its figures to the dashboard."""
    from tuner.report import attach_to_dashboard, build_sections, export_png, write_report
    from tuner.study import load_existing_study, open_storage

    loaded = load_existing_study(study, open_storage(storage, create=False))
    sections = build_sections(loaded)
    out_file = write_report(
        loaded, out_file or paths.inside_home("reports", f"{study}.html"), sections
    )
    click.echo(f"report: {out_file}")
    if not no_dashboard:
        click.echo(f"{attach_to_dashboard(loaded, sections)} figures attached to the study")
    if png_dir:
        _, message = export_png(sections, png_dir)
        click.echo(message)
