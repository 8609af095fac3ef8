"""optuna-dashboard on the study storage, with the artifact store attached so every trial's
checkpoint and config can be browsed and downloaded."""

from __future__ import annotations

import socket

import optuna

from tuner import paths
from tuner.errors import UserError
from tuner.study import ATTR_ARTIFACTS, open_artifact_store, open_storage


def _artifact_location(storage, artifacts: str | None) -> str:
    """--artifacts, else the store the studies recorded, else studies/artifacts."""
    if artifacts:
        return artifacts
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if ATTR_ARTIFACTS in summary.user_attrs:
            return summary.user_attrs[ATTR_ARTIFACTS]
    return str(paths.default_artifact_dir())


def check_port(host: str, port: int) -> None:
    """Bind once before serving, so that a taken port is one line, not a traceback."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise UserError(
            f"cannot listen on {host}:{port} ({exc.strerror}): the port is in use or not "
            "allowed; choose another with --port"
        ) from None


def wsgi_app(storage_url: str | None = None, artifacts: str | None = None):
    """The dashboard as a WSGI app (for tests, or for gunicorn/uwsgi behind a proxy)."""
    from optuna_dashboard import wsgi

    storage = open_storage(storage_url, create=False)
    store = open_artifact_store(_artifact_location(storage, artifacts))
    return wsgi(storage, artifact_store=store)


def serve(storage_url: str | None, artifacts: str | None, host: str, port: int) -> None:
    from optuna_dashboard import run_server

    check_port(host, port)
    storage = open_storage(storage_url, create=False)
    location = _artifact_location(storage, artifacts)
    print(f"optuna-dashboard on http://{host}:{port}/  (artifacts: {location}; Ctrl-C stops)")
    run_server(storage, host=host, port=port, artifact_store=open_artifact_store(location))
