"""A database that goes away for a while (a restart, a fail-over, a network blip) costs a
worker a wait, not its trial.

`RetryingRDBStorage` is Optuna's RDBStorage whose every database call, heartbeats included, is
retried with exponential backoff while the error is a lost connection, for up to `retry_for`
seconds. Other errors (a bad value, a finished trial) are raised at once. Its engine's pool
is bounded (`bounded_pool`): one connection per worker process and a pre-ping, so a fleet of N
workers holds at most N connections and a connection that died with the server is replaced
before use instead of failing a query.

A retried write may have been committed just before the connection dropped. Writes that
Optuna makes idempotent (attributes, heartbeats, intermediate values) are harmless to repeat;
a state change that turns out to be done already is recognised (`set_trial_state_values`).
"""

from __future__ import annotations

import functools
import random
import sys
import time
from typing import Any

import sqlalchemy.exc
import sqlalchemy.pool
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from tuner.search.study.urls import is_sqlite

RETRY_FOR_S = 300.0  # a longer outage is an error: the database is gone, not restarting
FIRST_WAIT_S, LONGEST_WAIT_S = 0.5, 10.0

# Every other RDBStorage method that talks to the database, the private ones that
# Optuna's _CachedStorage (the proxy's) calls included; creating a trial and changing its
# state are wrapped below.
DATABASE_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "set_trial_param",
    "_set_trial_param",
    "get_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "_get_trials",
    "get_best_trial",
    "record_heartbeat",
    "_get_stale_trial_ids",
)


def bounded_pool(url: str, size: int = 1) -> dict[str, Any]:
    """SQLAlchemy engine options for one worker process: one pooled connection (Optuna's calls
    are short sessions; the heartbeat thread waits its turn), no overflow, pre-pinged."""
    if is_sqlite(url):
        return {"connect_args": {"timeout": 60}}  # one file, one writer: wait for the lock
    return {"pool_size": size, "max_overflow": 0, "pool_pre_ping": True, "pool_timeout": 120}


_PREPARED: set[str] = set()


def prepare_schema(url: str) -> None:
    """Create Optuna's tables on a new database and check the schema version, once per
    process, with connections closed after use: both hold two connections at once, which a
    one-connection pool would wait on for ever."""
    if url in _PREPARED:
        return
    RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool}).engine.dispose()
    _PREPARED.add(url)


def lost_connection(exc: BaseException) -> bool:
    """A dropped or refused connection (worth waiting for), not a bad statement."""
    cause = exc.__cause__ if isinstance(exc, StorageInternalError) else exc
    if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
        return True
    # PendingRollbackError: a session whose connection dropped mid-transaction, used again.
    lost = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.PendingRollbackError,
    )
    return isinstance(cause, lost)


def retrying(name: str, method):
    @functools.wraps(method)
    def call(self: RetryingRDBStorage, *args, **kwargs):
        return self.retry(name, method, args, kwargs)

    return call


class RetryingRDBStorage(RDBStorage):
    """RDBStorage that waits out a lost database connection (see the module's docstring)."""

    retry_for: float = RETRY_FOR_S

    def __init__(self, url: str, pool_size: int = 1, **kwargs) -> None:
        if not is_sqlite(url):
            # Tables and schema checks, done by prepare_schema; here they would nest connections.
            prepare_schema(url)
            kwargs |= {"skip_table_creation": True, "skip_compatibility_check": True}
        super().__init__(url, engine_kwargs=bounded_pool(url, pool_size), **kwargs)

    def retry(self, name: str, method, args: tuple, kwargs: dict):
        deadline, wait, warned = time.monotonic() + self.retry_for, FIRST_WAIT_S, False
        # Wait no longer than a heartbeat between tries: once the database is back, a running
        # trial must beat again well within its grace period, or another worker retries it.
        longest = min(LONGEST_WAIT_S, self.heartbeat_interval or LONGEST_WAIT_S)
        while True:
            try:
                return method(self, *args, **kwargs)
            except (StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as exc:
                if not lost_connection(exc) or time.monotonic() + wait > deadline:
                    raise
                # This thread's session may hold the dead connection's transaction: start anew.
                self.scoped_session.remove()
                if not warned:
                    print(
                        f"storage: lost the database connection ({type(exc).__name__}); "
                        f"retrying {name} for up to {self.retry_for:.0f} s",
                        file=sys.stderr,
                    )
                warned = True
            time.sleep(wait * (0.5 + random.random()))  # jitter: a fleet does not retry in step
            wait = min(longest, wait * 2)

    def beats_from_start(self) -> bool:
        """Whether a trial gets its first heartbeat as it starts (see `create_new_trial`)."""
        return self.heartbeat_interval is not None

    def _create_new_trial(self, study_id: int, template_trial=None):
        """Optuna's, plus a first heartbeat for a trial created running. Optuna beats only
        once the objective has started, and a RUNNING trial with no heartbeat at all is never
        found stale: a worker killed between its ask and its objective would leave that trial
        RUNNING for ever."""
        trial = self.retry(
            "create_new_trial", RDBStorage._create_new_trial, (study_id, template_trial), {}
        )
        if self.beats_from_start() and trial.state == TrialState.RUNNING:
            self.record_heartbeat(trial._trial_id)
        return trial

    def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
        attempts: list[int] = []

        def attempt(storage, *args):
            attempts.append(1)
            return RDBStorage.set_trial_state_values(storage, *args)

        try:
            changed = self.retry("set_trial_state_values", attempt, (trial_id, state, values), {})
        except UpdateFinishedTrialError:
            # Only after a lost connection: the first attempt may have committed. Otherwise the
            # error is Optuna's "someone else finished it" (two workers failing one stale trial
            # must not both queue its retry), and it stands.
            trial = self.get_trial(trial_id)
            same = trial.state == state and (
                values is None or list(trial.values or []) == list(values)
            )
            if len(attempts) < 2 or not same:
                raise
            changed = True
        # A queued trial taken: beat from its start too. After a retry, "not taken" may be our
        # own committed take, so beat then as well (harmless if another worker holds it).
        if (
            state == TrialState.RUNNING
            and self.beats_from_start()
            and (changed or len(attempts) > 1)
        ):
            self.record_heartbeat(trial_id)
        return changed


for _name in DATABASE_CALLS:
    setattr(RetryingRDBStorage, _name, retrying(_name, getattr(RDBStorage, _name)))
