"""optuna-dashboard on the study storage, with the artifact store attached so every trial's
checkpoint and config can be browsed and downloaded; and the report's figures saved on the
study, where the dashboard shows them."""

from __future__ import annotations

import socket

import optuna

from tuner.core import paths
from tuner.core.errors import UserError
from tuner.report._sections import Section
from tuner.search import attrs
from tuner.search.study import open_artifact_store, open_storage


def _artifact_location(storage, artifacts: str | None) -> str:
    """--artifacts, else the store the studies recorded, else studies/artifacts."""
    if artifacts:
        return artifacts
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        if attrs.ARTIFACT_STORE in summary.user_attrs:
            return summary.user_attrs[attrs.ARTIFACT_STORE]
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


def attach_to_dashboard(study: optuna.Study, sections: list[Section]) -> int:
    """Save the figures on the study, where optuna-dashboard shows them."""
    from optuna_dashboard import save_plotly_graph_object

    saved = 0
    for section in sections:
        if section.figure is not None:
            save_plotly_graph_object(study, section.figure, graph_object_id=section.key)
            saved += 1
    return saved
