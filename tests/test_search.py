"""`tuner run` and friends: studies, budgets, pruning, failures, kills, workers, dashboard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from click.testing import CliRunner
from optuna.trial import TrialState
from wsgi_client import call_wsgi

from tuner.cli import main
from tuner.core.checkpoint import load_segmenter
from tuner.search import attrs
from tuner.search.objective import TrialReporter
from tuner.search.run import RunOptions, run
from tuner.search.space import load_space
from tuner.search.study import fetch_checkpoint, load_existing_study, open_storage, open_study

FAST = {
    "model": "sam_tiny",
    "head": "linear",
    "freeze_depth": 2,
    "batch_size": 2,
    "epochs": 2,
    "image_size": [64, 128],
    "scale_range": [0.75, 1.25],
    "encoder_lr_mult": 1.0,
    "threads": 1,
}
SYNTH = {"train": 8, "val": 4, "height": 128, "width": 256}


def space_file(tmp_path: Path, name: str, params: dict, **extra) -> Path:
    data = {
        "study": name,
        "sampler": {"name": "tpe", "seed": 0, "n_startup_trials": 2},
        "pruner": {"name": "none"},
        "trials": 2,
        "fixed": {k: v for k, v in FAST.items() if k not in params},
        "params": params,
        "synthetic": SYNTH,
        "fault_tolerance": {"heartbeat_interval": 1, "grace_period": 3, "max_retry": 2},
    }
    for key, value in extra.items():
        if key == "fixed":
            data["fixed"].update(value)
        else:
            data[key] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def storage_url(home: Path) -> str:
    return f"sqlite:///{home / 'tuner.db'}"


def load(home: Path, name: str) -> optuna.Study:
    return load_existing_study(name, open_storage(storage_url(home)))


def as_from_a_terminal() -> None:
    """SIGINT as a terminal leaves it. A test run started in the background by a
    non-interactive shell inherits SIGINT ignored, and Python then never raises
    KeyboardInterrupt: Ctrl-C could not be tested at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def tuner_subprocess(*args: str, home: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "TUNER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tuner", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=as_from_a_terminal,
        **kwargs,
    )


def wait_for(predicate, timeout: float = 120, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


# The shipped smoke study, end to end -----------------------------------------------------------
@pytest.mark.slow
def test_smoke_study_end_to_end_and_rerun(tuner_home):
    result = invoke("run", "--study", "smoke")
    assert result.exit_code == 0, result.output
    assert "leaderboard of study 'smoke' (3 trials)" in result.output
    study = load(tuner_home, "smoke")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 3
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    best = study.best_trial
    for key in (
        "val_per_class_iou",
        "val_boundary_f1",
        "val_pixel_acc",
        "epoch_seconds",
        "trainable_params",
        "device",
        "versions",
        "config",
    ):
        assert key in best.user_attrs, key
    assert len(best.user_attrs["val_per_class_iou"]) == 19
    assert best.user_attrs["versions"]["optuna"] == optuna.__version__
    assert len(best.intermediate_values) == 2  # reported every epoch

    # The best checkpoint is an artifact that loads back into a model.
    ckpt = fetch_checkpoint(study, best, tuner_home / "fetched" / "best.pt")
    _model, meta = load_segmenter(ckpt)
    assert meta.config.loss == best.params["loss"]
    assert meta.metrics["val_miou"] == pytest.approx(best.value)

    out = invoke("studies").output
    row = next(line.split() for line in out.splitlines() if line.startswith("smoke"))
    assert row[1] == "3" and int(row[2]) + int(row[3]) == 3  # trials; complete + pruned
    out = invoke("best", "--study", "smoke").output
    assert f"trial {best.number}" in out and "checkpoint:" in out

    # A rerun of a complete study runs nothing; --trials adds trials, none duplicated.
    again = invoke("run", "--study", "smoke", "--no-report")
    assert "already holds 3 trials" in again.output
    assert len(load(tuner_home, "smoke").trials) == 3
    more = invoke("run", "--study", "smoke", "--trials", "2", "--no-report")
    assert more.exit_code == 0, more.output
    trials = load(tuner_home, "smoke").trials
    assert len(trials) == 5
    params = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(params) == 5


def test_bad_learning_rate_is_pruned(tuner_home, tmp_path):
    path = space_file(
        tmp_path,
        "prune",
        {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
        pruner={"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0},
        trials=3,
        fixed={"epochs": 3, "freeze_depth": 0},
    )
    space = load_space(path)
    study = open_study(space, open_storage(storage_url(tuner_home)))
    for lr in (1e-3, 3e-3, 0.9):  # two sane runs, then an absurd learning rate
        study.enqueue_trial({"lr": lr})
    run(RunOptions(study="prune", space_file=str(path), progress=False))
    trials = load(tuner_home, "prune").trials
    assert [t.state for t in trials[:2]] == [TrialState.COMPLETE] * 2
    bad = trials[2]
    assert bad.params["lr"] == 0.9
    assert bad.state == TrialState.PRUNED
    assert len(bad.intermediate_values) < 3  # stopped before its last epoch


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path):
    # A pruner that says "prune" at every step stops a trial early, but not after its last
    # epoch: that trial finished, so it is complete and its log must not call it pruned.
    space = load_space(
        space_file(tmp_path, "last", {"lr": {"type": "float", "low": 1e-4, "high": 1e-2}})
    )
    study = optuna.create_study(pruner=AlwaysPrune())
    said: list[str] = []
    reporter = TrialReporter(study.ask(), space, epochs=3, log=said.append)
    metrics = {"train_loss": 1.0, "val_miou": 0.3, "val_boundary_f1": 0.1}
    assert reporter.on_epoch_end(0, {**metrics, "epoch": 0}) is True
    assert said == ["pruned after epoch 1"]
    said.clear()
    assert reporter.on_epoch_end(2, {**metrics, "epoch": 2}) is False
    assert said == []


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tuner_home, tmp_path):
    # A learning rate of 1e6 diverges to a NaN loss inside its trial (nothing preflight can
    # see); that trial is FAIL with its reason and the other one still runs.
    path = space_file(
        tmp_path,
        "failing",
        {"lr": {"type": "categorical", "choices": [1e-3, 1e6]}},
        sampler={"name": "grid", "seed": 0},
    )
    result = invoke("run", "--study", "failing", "--space", str(path), "--no-report")
    assert result.exit_code == 0, result.output
    trials = load(tuner_home, "failing").trials
    states = {t.params["lr"]: t for t in trials}
    assert states[1e-3].state == TrialState.COMPLETE
    assert states[1e6].state == TrialState.FAIL
    assert "NonFiniteLossError: loss is nan" in states[1e6].user_attrs["fail_reason"]


def test_missing_study_and_missing_artifact_are_named(tuner_home, tmp_path):
    result = CliRunner().invoke(main, ["best", "--study", "ghost"])
    assert result.exit_code == 2 and "no study storage at" in result.output  # and none made
    path = space_file(
        tmp_path, "art", {"loss": {"type": "categorical", "choices": ["ce"]}}, trials=1
    )
    assert invoke("run", "--study", "art", "--space", str(path), "--no-report").exit_code == 0
    result = CliRunner().invoke(main, ["best", "--study", "ghost"])
    assert (
        result.exit_code == 2
        and "no study named 'ghost' in this storage; studies here: art" in result.output
    )
    study = load(tuner_home, "art")
    trial = study.best_trial
    artifact = Path(study.user_attrs["artifact_store"]) / trial.user_attrs["checkpoint_artifact_id"]
    artifact.unlink()
    from tuner.core.errors import CheckpointError

    with pytest.raises(
        CheckpointError, match=f"checkpoint artifact .* of trial {trial.number} is missing"
    ):
        fetch_checkpoint(study, trial, tmp_path / "x.pt")


# Fault tolerance: kill -9 and Ctrl-C -----------------------------------------------------------
SLOW = {"epochs": 40, "image_size": [128, 256], "freeze_depth": 0}


def running_trial(home: Path, name: str):
    try:
        trials = load(home, name).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    except Exception:
        return None
    return trials[0] if trials and trials[0].intermediate_values else None


LOSS_CHOICE = {"loss": {"type": "categorical", "choices": ["ce", "dice"]}}


def start_slow_trial(name: str, home: Path, tmp_path: Path, trials: int):
    """A `tuner run` subprocess whose first trial is running (and has reported an epoch)."""
    path = space_file(tmp_path, name, LOSS_CHOICE, trials=trials, fixed=SLOW)
    worker = tuner_subprocess(
        "run", "--study", name, "--space", str(path), "--no-report", home=home
    )
    return worker, wait_for(lambda: running_trial(home, name), timeout=180)


@pytest.mark.slow
def test_sigkilled_worker_trial_is_failed_and_retried_with_same_params(tuner_home, tmp_path):
    worker, victim = start_slow_trial("kill", tuner_home, tmp_path, trials=1)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    time.sleep(4)  # past the 3 s grace period: the heartbeat is stale
    fast = space_file(tmp_path, "kill", LOSS_CHOICE, trials=1, fixed={"epochs": 1})
    result = invoke("run", "--study", "kill", "--space", str(fast), "--no-report")
    assert result.exit_code == 0, result.output
    trials = load(tuner_home, "kill").trials
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retried = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert [t.number for t in failed] == [victim.number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == victim.params
    assert len(trials) == 2  # the killed trial did not use up the budget of 1


@pytest.mark.slow
def test_ctrl_c_marks_the_trial_failed_and_queues_it_again(tuner_home, tmp_path):
    worker, victim = start_slow_trial("sigint", tuner_home, tmp_path, trials=2)
    worker.send_signal(signal.SIGINT)
    output, _ = worker.communicate(timeout=120)
    assert worker.returncode == 130, output
    assert "interrupted" in output and "leaderboard" in output
    trials = load(tuner_home, "sigint").trials
    failed = next(t for t in trials if t.number == victim.number)
    assert failed.state == TrialState.FAIL
    assert "interrupted" in failed.user_attrs["fail_reason"]
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].params == victim.params


# Parallel and distributed workers --------------------------------------------------------------
GRID4 = {
    "loss": {"type": "categorical", "choices": ["ce", "dice"]},
    "lr": {"type": "categorical", "choices": [0.001, 0.003]},
}


def assert_grid_done_once(study: optuna.Study) -> None:
    # A point two workers drew at once ends as a FAIL marked duplicate, before running.
    trials = [t for t in study.trials if attrs.DUPLICATE_OF not in t.user_attrs]
    assert len(trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    points = {(t.params["loss"], t.params["lr"]) for t in trials}
    assert len(points) == 4  # every grid point exactly once: no duplicates
    return {t.user_attrs["worker"] for t in trials}


@pytest.mark.slow
def test_two_local_workers_share_one_sqlite_study(tuner_home, tmp_path):
    path = space_file(
        tmp_path, "jobs", GRID4, sampler={"name": "grid", "seed": 0}, trials=4, fixed={"epochs": 3}
    )
    result = invoke("run", "--study", "jobs", "--space", str(path), "--jobs", "2", "--no-report")
    assert result.exit_code == 0, result.output
    workers = assert_grid_done_once(load(tuner_home, "jobs"))
    # Each grid point ran once, in the spawned workers (not this process). How many of the two
    # took a trial depends on when each started, so that is bounded, not counted.
    assert 1 <= len(workers) <= 2 and f":{os.getpid()}" not in " ".join(workers)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_machines_share_a_postgres_study_one_directly_one_through_the_proxy(
    postgres_url, tuner_home, tmp_path
):
    from bench.services import free_port

    name = f"pg{os.getpid()}"
    path = space_file(
        tmp_path, name, GRID4, sampler={"name": "grid", "seed": 0}, trials=4, fixed={"epochs": 3}
    )
    port = free_port()
    proxy = tuner_subprocess(
        "storage-proxy", "--storage", postgres_url, "--port", str(port), home=tuner_home
    )
    try:
        args = ("run", "--study", name, "--space", str(path), "--no-report", "--storage")
        machines = [
            tuner_subprocess(*args, url, home=tuner_home)
            for url in (postgres_url, f"grpc://127.0.0.1:{port}")
        ]
        outputs = [m.communicate(timeout=600)[0] for m in machines]
        # What the proxy serves is the study itself: its leaderboard reads the same.
        through_proxy = invoke("best", "--study", name, "--storage", f"grpc://127.0.0.1:{port}")
    finally:
        proxy.send_signal(signal.SIGINT)
        served = proxy.communicate(timeout=60)[0]
    assert [m.returncode for m in machines] == [0, 0], outputs
    assert f"on grpc://127.0.0.1:{port}" in served and "storage proxy stopped" in served
    study = load_existing_study(name, open_storage(postgres_url))
    workers = assert_grid_done_once(study)
    pids = {m.pid for m in machines}
    assert 1 <= len(workers) <= 2 and {int(w.rsplit(":", 1)[1]) for w in workers} <= pids
    direct = invoke("best", "--study", name, "--storage", postgres_url)
    assert through_proxy.exit_code == 0 and through_proxy.output == direct.output


# Dashboard -------------------------------------------------------------------------------------
def test_dashboard_lists_the_study_and_its_checkpoint(tuner_home, tmp_path):
    from tuner.report.dashboard import wsgi_app

    path = space_file(
        tmp_path,
        "dash",
        {"loss": {"type": "categorical", "choices": ["ce"]}},
        trials=1,
        fixed={"epochs": 1},
    )
    assert invoke("run", "--study", "dash", "--space", str(path), "--no-report").exit_code == 0
    app = wsgi_app()
    code, body = call_wsgi(app, "/api/studies")
    assert code.startswith("200")
    names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
    assert names == ["dash"]
    study_id = json.loads(body)["study_summaries"][0]["study_id"]
    code, body = call_wsgi(app, f"/api/studies/{study_id}")
    trial = json.loads(body)["trials"][0]
    artifact = {a["filename"]: a for a in trial["artifacts"]}["best.pt"]
    code, body = call_wsgi(
        app, f"/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}"
    )
    assert code.startswith("200") and len(body) > 1000


def test_run_with_an_official_format_checkpoint_starts_every_trial_from_it(tuner_home, tmp_path):
    import torch

    from tuner.core.model.backbone import build_sam

    weights = tmp_path / "sam_tiny_official_format.pth"
    torch.save(build_sam("sam_tiny").state_dict(), weights)
    path = space_file(
        tmp_path, "ckpt", LOSS_CHOICE, trials=1, fixed={"epochs": 1, "model": "vit_b"}
    )
    args = ["run", "--study", "ckpt", "--space", str(path), "--checkpoint", str(weights)]
    result = invoke(*args, "--no-report")
    assert result.exit_code == 0, result.output
    config = load(tuner_home, "ckpt").trials[0].user_attrs["config"]
    assert config["model"] == "sam_tiny"  # the variant comes from the checkpoint's shapes
    assert config["sam_checkpoint"] == str(weights)


def test_budget_counts_a_chain_of_retries_once(tmp_path):
    from optuna.distributions import CategoricalDistribution

    from tuner.search.study import counted_trials, requeue

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'chain.db'}")
    dist = {"loss": CategoricalDistribution(["ce", "dice"])}
    study.add_trial(
        optuna.create_trial(state=TrialState.FAIL, params={"loss": "ce"}, distributions=dist)
    )
    requeue(study, study.trials[0], reason="killed")  # trial 1 retries 0
    trial = study.ask()  # runs the queued retry ...
    assert trial.number == 1
    study.tell(trial, state=TrialState.FAIL)  # ... which fails too
    requeue(study, study.trials[1], reason="killed")  # trial 2 retries 1 (history [0, 1])
    assert study.trials[2].system_attrs["retry_history"] == [0, 1]
    assert counted_trials(study) == 1  # only the pending retry uses the budget


def test_sampler_seeds_differ_between_machines_but_repeat_on_one(monkeypatch):
    from tuner.search import worker as run_module

    def seed_on(host: str, pid: int, worker: int = 0, shared: bool = True) -> int:
        monkeypatch.setattr(run_module.socket, "gethostname", lambda: host)
        monkeypatch.setattr(run_module.os, "getpid", lambda: pid)
        return run_module.sampler_seed(0, 5, worker, machine_shared=shared)

    # Two machines on one PostgreSQL study, same pid and history: different draws.
    assert seed_on("node-a", 100) != seed_on("node-b", 100)
    assert seed_on("node-a", 100) == seed_on("node-a", 100)  # a rerun repeats its draws
    # On SQLite (one machine) the host does not enter: reruns reproduce; workers still differ.
    assert seed_on("node-a", 100, shared=False) == seed_on("node-b", 200, shared=False)
    assert seed_on("node-a", 100, 0, shared=False) != seed_on("node-a", 100, 1, shared=False)
