"""`tuner run`, `tuner studies`, `tuner best`, `tuner cache`: studies and what they found."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tuner.cli._options import (
    CACHE_LIMIT,
    CHECKPOINT,
    COUNT,
    DEVICE,
    FROM_SCRATCH,
    JOBS,
    POSITIVE,
    STORAGE,
    THREADS,
    data_option,
    study_option,
)
from tuner.core import paths


@click.command("record-curves")
@study_option(help_text="the study whose space's record: grid is recorded")
@click.option("--space", "space_file", type=click.Path(path_type=Path), help="search space YAML")
@STORAGE
@data_option("Cityscapes root (default: the embedded synthetic set)")
@CHECKPOINT
@JOBS
@DEVICE
@THREADS
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="table file (default: <tuner home>/NAME.curves.json)",
)
def record_curves(study, space_file, data_root, checkpoint, out, **options) -> None:
    """Record the learning-curve table of a space's record: grid (every level, every seed),
    for replaying searches on it (python -m bench search). Resumable: run it again to go on."""
    from tuner.search.curves import record_curves as record
    from tuner.search.run import RunOptions

    run_options = RunOptions(
        study=study,
        space_file=str(space_file) if space_file else None,
        data_root=str(data_root) if data_root else None,
        checkpoint=str(checkpoint) if checkpoint else None,
        **options,
    )
    table, path = record(run_options, str(out) if out else None)
    click.echo(
        f"{len(table.configurations())} configurations x {len(table.seeds)} seeds x "
        f"{table.epochs} epochs, one grid pass {table.grid_cost() / 60:.1f} min "
        f"(best mean {table.metric} {table.best_mean():.4f}): {path}"
    )


@click.command()
@study_option(help_text="study name; its space is search_spaces/NAME.yaml")
@click.option("--space", "space_file", type=click.Path(path_type=Path), help="search space YAML")
@click.option("--trials", type=COUNT, help="run N more trials (default: the space's total budget)")
@click.option("--timeout", type=POSITIVE, help="stop starting trials after S seconds")
@STORAGE
@click.option("--artifacts", help="artifact folder or s3://bucket (default: studies/artifacts)")
@data_option("Cityscapes root (default: the embedded synthetic set)")
@CHECKPOINT
@FROM_SCRATCH
@JOBS
@DEVICE
@THREADS
@click.option(
    "--warm-start",
    metavar="STUDY",
    help="start from an earlier study: its trials where the fidelity matches, else its best",
)
@click.option("--no-report", is_flag=True, help="do not refresh the dashboard figures at the end")
@CACHE_LIMIT
@click.option(
    "--cache-as-configured",
    "cache_plan",
    flag_value=False,
    default=True,
    help="store features as each trial's config says, even where they overflow the cache",
)
def run(study, space_file, storage, data_root, checkpoint, no_report, **options) -> None:
    """Create or resume a study and run trials until its budget is spent."""
    from tuner.report import attach_to_dashboard, build_sections
    from tuner.search.run import RunOptions
    from tuner.search.run import run as run_study

    run_options = RunOptions(
        study=study,
        space_file=str(space_file) if space_file else None,
        storage=storage,
        data_root=str(data_root) if data_root else None,
        checkpoint=str(checkpoint) if checkpoint else None,
        **options,
    )
    try:
        result = run_study(run_options)
    except KeyboardInterrupt:
        click.echo(
            "\ninterrupted: the running trial is marked FAIL and queued again; "
            "run the same command to continue.",
            err=True,
        )
        print_leaderboard(study, storage)
        sys.exit(130)
    print_leaderboard(study, storage, result)
    if not no_report:
        try:
            attach_to_dashboard(result, build_sections(result))
        except Exception as exc:  # the study is done; a figure must not turn that into a failure
            click.secho(f"report not attached: {type(exc).__name__}: {exc}", fg="yellow")
            return
        click.echo(
            "the decision is in the study's note and the report attached to the study: "
            f"`tuner dashboard` shows both; `tuner report --study {study}` writes it to a file"
        )


def print_leaderboard(study_name, storage_url, study=None) -> None:
    from tuner.core.text import table
    from tuner.search.leaderboard import leaderboard_rows
    from tuner.search.study import load_existing_study, open_storage
    from tuner.search.verdict import decide

    study = study or load_existing_study(study_name, open_storage(storage_url, create=False))
    rows, headers = leaderboard_rows(study)
    click.echo(f"\nleaderboard of study {study.study_name!r} ({len(study.trials)} trials)")
    click.echo(table(rows, headers))
    verdict = decide(study)
    if verdict is not None:
        click.echo(f"verdict: {verdict.text}")


def _pair(ctx, param, value):
    """'2975,500' -> (2975, 500); '1024x2048' -> (1024, 2048)."""
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    try:
        pair = tuple(int(p) for p in parts)
    except ValueError:
        pair = ()
    if len(pair) != 2 or min(pair) < 1:
        raise click.BadParameter(f"{value!r}: expected two positive integers, e.g. {param.metavar}")
    return pair


def _settings(ctx, param, values):
    import yaml

    out = {}
    for item in values:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE, e.g. image_size=[1024,1024]")
        out[key.strip()] = yaml.safe_load(text)
    return out


@click.command()
@study_option(help_text="study name; its space is search_spaces/NAME.yaml")
@click.option("--space", "space_file", type=click.Path(path_type=Path), help="search space YAML")
@data_option("Cityscapes root (default: the embedded synthetic set)")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="official SAM .pth")
@FROM_SCRATCH
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="default: auto")
@click.option("--threads", type=COUNT, help="CPU threads per worker")
@click.option("--jobs", default=1, show_default=True, type=COUNT, help="workers to divide by")
@click.option("--trials", type=COUNT, help="plan N trials (default: the space's budget)")
@CACHE_LIMIT
@click.option(
    "--assume-images",
    "assume",
    metavar="TRAIN,VAL",
    callback=_pair,
    help="plan for data that is not here: this many train and val images",
)
@click.option(
    "--assume-size",
    metavar="HxW",
    default="1024x2048",
    show_default=True,
    callback=_pair,
    help="their size, with --assume-images",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    callback=_settings,
    metavar="KEY=VALUE",
    help="override a TrainConfig field in every trial (e.g. model=vit_b, image_size=[1024,1024])",
)
def plan(study, space_file, data_root, checkpoint, assume, assume_size, settings, **options):
    """What a study will cost before it runs: time (or GPU-hours), feature-cache bytes and hit
    rate, checkpoint bytes and peak memory, from a few timed steps of the real model here."""
    from tuner.search.run import RunOptions, project

    run_options = RunOptions(
        study=study,
        space_file=str(space_file) if space_file else None,
        data_root=str(data_root) if data_root else None,
        checkpoint=str(checkpoint) if checkpoint else None,
        **options,
    )
    result = project(run_options, assume, assume_size, settings, log=click.echo)
    for line in result.lines():
        click.echo(line)


@click.command()
@STORAGE
def studies(storage) -> None:
    """List studies (trials by state and best values) and the feature cache's size."""
    from tuner.core.cache import FeatureCache
    from tuner.core.text import table
    from tuner.search.leaderboard import STUDY_HEADERS, study_rows

    rows = study_rows(storage)
    if not rows:
        click.echo("no studies yet: try `tuner run --study smoke`")
    else:
        click.echo(table(rows, STUDY_HEADERS))
    click.echo(FeatureCache.at(paths.cache_dir()).usage().describe())


@click.command()
@CACHE_LIMIT
@click.option("--clear", is_flag=True, help="remove every feature set not in use")
def cache(cache_limit, clear) -> None:
    """The frozen-prefix feature cache: its size, or --clear it."""
    from tuner.core.cache import FeatureCache

    features = FeatureCache.at(paths.cache_dir(), cache_limit)
    if clear:
        click.echo(f"removed {features.clear()} feature set(s)")
    click.echo(features.usage().describe())


@click.command()
@study_option()
@STORAGE
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="one JSON document (value, interval, seeds, verdict, ...)",
)
def best(study, storage, as_json) -> None:
    """The best configuration (or Pareto front): its score with a 95 % interval, whether it is
    really ahead of the runner-ups, params and checkpoint."""
    from tuner.search.leaderboard import describe_best

    click.echo(describe_best(study, storage, as_json))


@click.command("storage-proxy")
@click.option(
    "--storage",
    required=True,
    help="the database the workers share (PostgreSQL, MySQL or SQLite URL)",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=13000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--reap-every",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="seconds between sweeps for the stale trials of dead workers",
)
def storage_proxy(storage, host, port, reap_every) -> None:
    """Serve a study database to many workers through Optuna's gRPC proxy: they run
    `tuner run --storage grpc://HOST:PORT` and hold no database connection. It also fails and
    retries the trials of dead workers, which workers behind a proxy cannot."""
    from tuner.search.study.proxy import serve

    try:
        serve(storage, host, port, reap_every, log=click.echo)
    except KeyboardInterrupt:
        click.echo("storage proxy stopped")
