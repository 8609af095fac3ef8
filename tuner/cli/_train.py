"""`tuner train`, `tuner predict`, `tuner evaluate`: one run, and using its model."""

from __future__ import annotations

from pathlib import Path

import click

from tuner.cli._options import (
    CACHE_LIMIT,
    FROM_SCRATCH,
    build_config,
    config_options,
    data_option,
    out_option,
)
from tuner.core import paths


@click.command()
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
    from tuner.core.cache import FeatureCache
    from tuner.core.data import synth
    from tuner.core.data.cityscapes import CityscapesDataset
    from tuner.core.model import resolve_model
    from tuner.core.model.backbone import scratch_variant
    from tuner.core.text import metrics_table
    from tuner.core.train import fit

    config = build_config(config_file, **flags)
    if checkpoint is not None and from_scratch:
        raise click.UsageError("--checkpoint and --from-scratch exclude each other")
    if checkpoint is not None:
        config = resolve_model(config.replace(sam_checkpoint=str(checkpoint)))
    if from_scratch:
        config = config.replace(model=scratch_variant(config.model))
    cache = FeatureCache.at(paths.cache_dir(), cache_limit)
    root = data_root or synth.embedded(paths.data_dir())
    train_set = CityscapesDataset(root, "train", limit=config.train_limit)
    val_set = CityscapesDataset(root, "val", limit=config.val_limit)
    out_dir = out_dir or paths.inside_home("runs", f"{config.model}-{config.head}-{config.loss}")
    summary = fit(config, train_set, val_set, out_dir=out_dir, cache=cache)
    click.echo(
        f"\nbest epoch {summary.best_epoch + 1} of {summary.epochs_run}; "
        f"{summary.fit_seconds:.0f}s in all "
        f"({sum(summary.epoch_seconds) / summary.epochs_run:.1f}s per epoch)"
    )
    click.echo(metrics_table(summary.best_metrics))
    click.echo(f"checkpoint: {summary.checkpoint}")


@click.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), help="sam-tuner checkpoint")
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="quantized model folder written by `tuner quantize` (trusted sources only)",
)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@out_option("folder for the colour labels and overlays", required=True)
def predict(checkpoint, model_dir, images, out_dir) -> None:
    """Segment IMAGES; write colour label PNGs and overlays."""
    from tuner.deploy.predict import load_predictor, predict_files

    predictor = load_predictor(checkpoint, model_dir)
    for written in predict_files(predictor, images, out_dir):
        click.echo(written)


@click.command()
@click.option(
    "--checkpoint", type=click.Path(path_type=Path), required=True, help="sam-tuner checkpoint"
)
@click.option(
    "--data", "data_root", type=click.Path(path_type=Path), required=True, help="Cityscapes root"
)
@click.option(
    "--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True
)
@out_option("also write label-id PNGs for the official evaluation")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
def evaluate(checkpoint, data_root, split, out_dir, device) -> None:
    """Metrics of a checkpoint on a Cityscapes split."""
    from tuner.core.text import metrics_table
    from tuner.deploy.predict import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, data_root, split, out_dir, device)
    click.echo(metrics_table(metrics, prefix=""))
    if out_dir:
        click.echo(
            f"label-id predictions in {out_dir} (csEvalPixelLevelSemanticLabeling reads them)"
        )


@click.command(short_help="Write a standalone checkpoint from a trial's delta checkpoint.")
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    required=True,
    help="a trial's delta checkpoint (the tensors that differ from its base weights)",
)
@out_option("standalone checkpoint file to write (e.g. model.pt)", required=True, folder=False)
@click.option(
    "--base",
    type=click.Path(path_type=Path),
    help="the base weights file, where a delta checkpoint's recorded path has moved",
)
def export(checkpoint, out_file, base) -> None:
    """Write a standalone checkpoint (every tensor) from a trial's delta checkpoint."""
    from tuner.core.checkpoint import export_checkpoint

    written = export_checkpoint(checkpoint, out_file, base=base)
    click.echo(f"{written} ({written.stat().st_size / 2**20:.1f} MiB, standalone)")
