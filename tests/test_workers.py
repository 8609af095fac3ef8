"""Many workers on one study: the torch-free worker loop, a grid point run once, a lost database
connection waited out, trials that beat from their start, and the storage proxy's reaper.
The load test itself (32 workers, kills, a database restart) is `python -m bench workers`;
tests/test_bench.py runs its 8-worker version."""

from __future__ import annotations

import subprocess
import sys
import threading

import optuna
import pytest
import sqlalchemy.exc
from click.testing import CliRunner
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.trial import TrialState

from tuner.cli import main
from tuner.core.errors import UserError
from tuner.search import attrs
from tuner.search.study import counted_trials, open_storage
from tuner.search.study import retry as retry_module
from tuner.search.study.proxy import HEARTBEAT_ATTR, HeartbeatRelayStorage, reap_stale_trials
from tuner.search.study.retry import RetryingRDBStorage
from tuner.search.worker import DuplicateGridPoint, OncePerGridPoint

# SQLite keeps heartbeats to the second: a grace period of 2 s tells a fresh one from a stale one.
FAULT = {"heartbeat_interval": 1, "grace_period": 2, "max_retry": 2}


def test_the_worker_loop_and_the_proxy_import_no_torch():
    code = (
        "import sys, tuner.search.worker, tuner.search.study.proxy, tuner.search.curves, "
        "tuner.cli; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _dropped() -> StorageInternalError:
    error = StorageInternalError("commit failed")
    error.__cause__ = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
    return error


def test_a_lost_connection_is_waited_out_with_backoff_and_a_bad_statement_is_not(
    tmp_path, monkeypatch
):
    waits = []
    monkeypatch.setattr(retry_module.time, "sleep", waits.append)
    storage = RetryingRDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    calls = []

    def flaky(self, value):
        calls.append(value)
        if len(calls) <= 3:
            raise _dropped()
        return value * 2

    assert storage.retry("flaky", flaky, (21,), {}) == 42
    assert len(calls) == 4 and len(waits) == 3
    assert waits[0] < waits[2]  # backoff grows (with jitter: 0.5x-1.5x of 0.5, 1, 2 s)

    def bad(self):
        calls.append("bad")
        raise StorageInternalError("too long") from sqlalchemy.exc.DataError("x", {}, Exception())

    with pytest.raises(StorageInternalError):
        storage.retry("bad", bad, (), {})
    assert calls[-1] == "bad" and calls.count("bad") == 1  # not retried

    def gone(self):
        calls.append("gone")
        raise _dropped()

    storage.retry_for = 1.0  # a database that does not come back is an error in the end
    with pytest.raises(StorageInternalError):
        storage.retry("gone", gone, (), {})
    assert 1 <= calls.count("gone") <= 3


def test_a_state_change_committed_before_the_connection_dropped_is_not_an_error(
    tmp_path, monkeypatch
):
    storage = RetryingRDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    first, second = study.ask(), study.ask()
    real = retry_module.RDBStorage.set_trial_state_values
    dropped = []

    def commit_then_drop(self, *args):
        result = real(self, *args)
        if not dropped:  # the commit went through; the answer did not
            dropped.append(1)
            raise _dropped()
        return result

    monkeypatch.setattr(retry_module.time, "sleep", lambda s: None)
    monkeypatch.setattr(retry_module.RDBStorage, "set_trial_state_values", commit_then_drop)
    # The retry finds the tell done: True, as the first attempt would have returned.
    assert storage.set_trial_state_values(first._trial_id, TrialState.COMPLETE, [0.5])
    assert study.trials[first.number].state == TrialState.COMPLETE
    # Without a lost connection, finding it done is another worker's doing, and an error: two
    # workers failing one stale trial must not both queue its retry.
    storage.set_trial_state_values(second._trial_id, TrialState.FAIL)
    with pytest.raises(UpdateFinishedTrialError):
        storage.set_trial_state_values(second._trial_id, TrialState.FAIL)


def test_a_trial_beats_from_its_start_so_a_worker_killed_before_its_objective_is_retried(
    tmp_path,
):
    """Optuna beats only inside the objective: a RUNNING trial with no heartbeat is never
    found stale. Ours beats as it is created or taken from the queue."""
    storage = RetryingRDBStorage(
        f"sqlite:///{tmp_path / 's.db'}",
        heartbeat_interval=FAULT["heartbeat_interval"],
        grace_period=FAULT["grace_period"],
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(2),
    )
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 1.0})
    taken = study.ask()  # from the queue
    created = study.ask()  # new
    assert {taken.number, created.number} == {0, 1}
    _wait_past_grace()
    optuna.storages.fail_stale_trials(study)  # what every worker runs before a trial
    states = [t.state for t in study.trials]
    assert states[:2] == [TrialState.FAIL, TrialState.FAIL]
    assert [t.state for t in study.trials[2:]] == [TrialState.WAITING] * 2  # both retried


def _wait_past_grace() -> None:
    import time

    time.sleep(FAULT["grace_period"] + 1.5)  # stale by the database's clock


def test_a_grid_point_drawn_twice_runs_once_and_uses_no_budget(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(
        storage=storage, sampler=optuna.samplers.GridSampler({"a": [1, 2]}, seed=0)
    )

    class Objective:
        space, artifact_store, current = None, None, None

        def __call__(self, trial):
            self.current = trial.number
            return trial.suggest_categorical("a", [1, 2])

    guarded = OncePerGridPoint(Objective())
    first, second = study.ask(), study.ask()
    # Two workers that asked at the same moment: the second drew the first's point.
    point = study.trials[first.number].system_attrs["grid_id"]
    storage.set_trial_system_attr(second._trial_id, "grid_id", point)
    with pytest.raises(DuplicateGridPoint, match=f"trial {first.number} holds it"):
        guarded(second)
    study.tell(second, state=TrialState.FAIL)
    assert study.trials[second.number].user_attrs[attrs.DUPLICATE_OF] == first.number
    study.tell(first, guarded(first))  # the earlier trial goes on
    assert counted_trials(study) == 1  # the duplicate ran nothing and costs nothing


def test_an_earlier_trial_that_draws_the_same_point_a_moment_later_still_holds_it(tmp_path):
    """Trials are created before they draw: the later trial waits for the earlier's draw."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(
        storage=storage, sampler=optuna.samplers.GridSampler({"a": [1, 2]}, seed=0)
    )
    earlier = storage.create_new_trial(study._study_id)  # created; its point not drawn yet
    later = study.ask()
    point = study.trials[later.number].system_attrs["grid_id"]
    draw = threading.Timer(0.5, storage.set_trial_system_attr, (earlier, "grid_id", point))
    draw.start()

    class Objective:
        space, artifact_store, current = None, None, None

        def __call__(self, trial):
            return 0.0

    with pytest.raises(DuplicateGridPoint, match="trial 0 holds it"):
        OncePerGridPoint(Objective())(later)
    draw.join()


def test_the_proxy_relays_heartbeats_and_reaps_each_study_by_its_own_grace_period(tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    relay = HeartbeatRelayStorage(url)
    watched = optuna.create_study(storage=relay, study_name="watched")
    attrs.set_record(watched, attrs.FAULT_TOLERANCE, FAULT)
    patient = optuna.create_study(storage=relay, study_name="patient")
    attrs.set_record(patient, attrs.FAULT_TOLERANCE, {**FAULT, "grace_period": 3600})
    foreign = optuna.create_study(storage=relay, study_name="not-ours")  # no record: left alone
    killed = watched.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    alive = watched.ask()
    for study in (patient, foreign):
        study.ask()
    _wait_past_grace()
    # The live worker's heartbeat arrives as a trial attribute through the proxy ...
    relay.set_trial_system_attr(alive._trial_id, HEARTBEAT_ATTR, True)
    assert HEARTBEAT_ATTR not in watched.trials[alive.number].system_attrs  # ... not stored
    assert reap_stale_trials(url, {}) == 1
    states = {
        s: [t.state for t in optuna.load_study(study_name=s, storage=url).trials]
        for s in ("watched", "patient", "not-ours")
    }
    assert states["watched"] == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert watched.trials[2].params == {"x": killed.params["x"]}  # the same params, queued
    assert states["patient"] == states["not-ours"] == [TrialState.RUNNING]


def test_bad_proxy_addresses_and_storages_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"grpc://localhost: expected grpc://HOST:PORT"):
        open_storage("grpc://localhost")
    result = CliRunner().invoke(main, ["storage-proxy", "--storage", str(tmp_path / "study.log")])
    assert result.exit_code != 0
    assert "the proxy serves a database" in result.output


def test_a_trial_failed_elsewhere_while_it_ran_costs_that_trial_not_the_worker(tmp_path):
    """Heartbeats held up past the grace period: another worker fails and retries the trial,
    and this worker's tell then raises inside Optuna. The worker says so and goes on."""
    from types import SimpleNamespace

    from tuner.search.worker import optimize

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)

    class Objective:
        space, artifact_store, current = SimpleNamespace(confirm=None), None, None

        def __call__(self, trial):
            self.current = trial.number
            if trial.number == 0:  # what the reaper does meanwhile
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            return 1.0

    optimize(study, Objective(), n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
