"""Optuna's gRPC storage proxy, with the heartbeats it lacks.

A fleet of hundreds of workers can share one study through one process that holds the database
connections (`tuner storage-proxy`, Optuna's `run_grpc_proxy_server`): the workers open
`grpc://host:port` (`GrpcStorageProxy`) and hold no database connection at all.

Optuna's proxy protocol has no heartbeat, so a killed worker's trial would stay RUNNING for
ever. Here a worker's heartbeat travels as a trial system attribute (`HEARTBEAT_ATTR`), which
the proxy turns into a real RDB heartbeat (`HeartbeatRelayStorage`); and the proxy, which holds
the only direct connection, fails and re-queues stale trials itself (`reap_stale_trials`),
each study with the grace period and retries its own space asked for (`attrs.FAULT_TOLERANCE`).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat

from tuner.core.errors import UserError
from tuner.search import attrs
from tuner.search.study.retry import RetryingRDBStorage
from tuner.search.study.urls import is_journal, parse_grpc_url, redact

HEARTBEAT_ATTR = "sam_tuner:heartbeat"  # written through the proxy, never stored
PROXY_THREADS = 8  # concurrent requests the proxy serves (and its database connections)


class HeartbeatProxyClient(GrpcStorageProxy, BaseHeartbeat):
    """A worker's end of the proxy: Optuna's client, beating a heartbeat while a trial runs.
    Stale trials are reaped by the proxy, which can see the database, not by workers."""

    def __init__(self, *, host: str, port: int, heartbeat_interval: int) -> None:
        super().__init__(host=host, port=port)
        self.heartbeat_interval = heartbeat_interval

    def record_heartbeat(self, trial_id: int) -> None:
        import grpc

        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, True)
        except UpdateFinishedTrialError:  # the trial ended meanwhile
            pass
        except grpc.RpcError as exc:  # the proxy restarting: the next beat tries again
            print(f"heartbeat of trial {trial_id} missed: {exc.code().name}", file=sys.stderr)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []  # the proxy reaps (reap_stale_trials)

    def get_heartbeat_interval(self) -> int:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return None


def require_grpc(what: str) -> None:
    try:
        import grpc  # noqa: F401  (optional: pip install 'sam-tuner[proxy]')
    except ImportError:
        raise UserError(f"{what}: needs grpcio (pip install 'sam-tuner[proxy]')") from None


def open_proxy_client(url: str, heartbeat_interval: int | None) -> GrpcStorageProxy:
    host, port = parse_grpc_url(url)
    require_grpc(f"storage {url}")
    if heartbeat_interval is None:
        client = GrpcStorageProxy(host=host, port=port)
    else:
        client = HeartbeatProxyClient(host=host, port=port, heartbeat_interval=heartbeat_interval)
    try:
        client.wait_server_ready(timeout=30)
    except Exception:
        raise UserError(
            f"storage {url}: no proxy answers there in 30 s (start one: tuner storage-proxy "
            "--storage URL)"
        ) from None
    return client


class HeartbeatRelayStorage(RetryingRDBStorage):
    """The proxy's database: a heartbeat attribute from a worker becomes an RDB heartbeat,
    and every trial starts with one."""

    def beats_from_start(self) -> bool:
        return True

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if key == HEARTBEAT_ATTR:
            self.record_heartbeat(trial_id)
        else:
            super().set_trial_system_attr(trial_id, key, value)


def reap_stale_trials(url: str, storages: dict[tuple, RetryingRDBStorage]) -> int:
    """Fail and re-queue every study's stale trials (`optuna.storages.fail_stale_trials`), by
    the grace period and retry count each study recorded. `storages` keeps one storage per
    setting between calls. Returns how many trials were failed."""
    reaped = 0
    for frozen in _reaper(url, storages, None).get_all_studies():
        fault = frozen.system_attrs.get(attrs.RECORD_PREFIX + attrs.FAULT_TOLERANCE)
        if fault is None:  # not a tuner study
            continue
        study = optuna.load_study(
            study_name=frozen.study_name, storage=_reaper(url, storages, fault)
        )
        failed = (optuna.trial.TrialState.FAIL,)
        before = len(study.get_trials(deepcopy=False, states=failed))
        optuna.storages.fail_stale_trials(study)
        reaped += len(study.get_trials(deepcopy=False, states=failed)) - before
    return reaped


def _reaper(url: str, storages: dict, fault: dict | None) -> RetryingRDBStorage:
    key = tuple(sorted((fault or {}).items()))
    if key not in storages:
        kwargs: dict[str, Any] = {}
        if fault is not None:
            kwargs = {
                "heartbeat_interval": fault["heartbeat_interval"],
                "grace_period": fault["grace_period"],
                "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                    max_retry=fault["max_retry"]
                ),
            }
        storages[key] = RetryingRDBStorage(url, **kwargs)
    return storages[key]


def serve(url: str, host: str, port: int, reap_every: float, log=print) -> None:
    """`tuner storage-proxy`: serve `url` on host:port until interrupted, reaping stale trials
    every `reap_every` seconds from this process's own connection."""
    require_grpc("tuner storage-proxy")
    from optuna.storages._cached_storage import _CachedStorage  # what get_storage() wraps
    from optuna.storages._grpc.server import make_server

    if url.startswith("grpc://") or is_journal(url):
        raise UserError(f"--storage {url}: the proxy serves a database (PostgreSQL, MySQL, SQLite)")
    storage = _CachedStorage(HeartbeatRelayStorage(url, pool_size=PROXY_THREADS))
    try:
        server = make_server(storage, host, port, ThreadPoolExecutor(max_workers=PROXY_THREADS))
    except RuntimeError as exc:  # grpc: the port is taken or not allowed
        raise UserError(f"cannot listen on {host}:{port} ({exc}); choose another --port") from None
    server.start()
    log(
        f"serving {redact(url)} on grpc://{host}:{port}; "
        f"reaping stale trials every {reap_every:g} s"
    )
    storages: dict[tuple, RetryingRDBStorage] = {}
    try:
        while True:
            time.sleep(reap_every)
            started = time.monotonic()
            try:
                reaped = reap_stale_trials(url, storages)
            except Exception as exc:  # a study deleted meanwhile, a long outage: serve on
                log(f"reaping failed, trying again in {reap_every:g} s: {exc}")
                continue
            if reaped:
                log(f"reaped {reaped} stale trial(s) in {time.monotonic() - started:.2f} s")
    finally:
        server.stop(grace=5)
