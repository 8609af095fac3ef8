"""optuna-dashboard on the study storage, with the artifact store attached so every trial's
checkpoint and config can be browsed and downloaded; and the study's decision written into its
note, with the HTML report beside it as a study artifact.

Figures are not saved on the study (save_plotly_graph_object): the dashboard re-sends every
saved figure with each poll of the study, about every 10 s even for a finished study (335 KB a
poll for a quantized `losses` study). The report artifact is fetched once, when opened."""

from __future__ import annotations

import re
import socket
import tempfile
from pathlib import Path

import optuna

from tuner.core import paths
from tuner.core.errors import UserError
from tuner.report._html import write_report
from tuner.report._note import headline, study_note
from tuner.report._sections import Section
from tuner.search import attrs
from tuner.search.study import artifact_store_for, open_artifact_store, open_storage
from tuner.search.study.artifacts import replace_study_artifact, study_artifacts

PLOT_DATA_PREFIX = "dashboard:plot_data:"  # optuna-dashboard's key for a saved figure


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


def attach_to_dashboard(
    study: optuna.Study, sections: list[Section], report_file: Path | None = None
) -> int:
    """Write the study's note and attach the HTML report (`report_file`, else rendered from
    `sections`) as a study artifact; figures saved by earlier versions are removed. The number
    of figures the attached report holds."""
    from optuna_dashboard import save_note
    from optuna_dashboard.artifact import get_artifact_path

    forget_figures(study)
    store = artifact_store_for(study)
    name = f"{_file_name(study.study_name)}-report.html"
    with tempfile.TemporaryDirectory(prefix="report-") as tmp:
        source = report_file or write_report(study, Path(tmp) / name, sections)
        replace_study_artifact(study, store, source, name=name, mimetype="text/html")
    links = [
        (meta.filename, get_artifact_path(study, meta.artifact_id))
        for meta in sorted(study_artifacts(study), key=lambda m: m.filename)
    ]
    save_note(study, study_note(study, links))
    line = headline(study)
    if line is not None:
        study.set_user_attr(attrs.DECISION, line)
    return sum(section.figure is not None for section in sections)


def forget_figures(study: optuna.Study) -> int:
    """Remove the figures earlier versions saved on the study; how many attributes went.

    Optuna has no call to delete a study attribute: on a database storage the rows are deleted;
    elsewhere (a journal file) each figure becomes an empty one, a few bytes a poll."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    saved = [
        k for k in storage.get_study_system_attrs(study._study_id) if k.startswith(PLOT_DATA_PREFIX)
    ]
    if not saved:
        return 0
    if isinstance(backend, optuna.storages.RDBStorage):
        from optuna.storages._rdb import models
        from sqlalchemy import delete

        table = models.StudySystemAttributeModel
        with backend.engine.begin() as connection:
            connection.execute(
                delete(table).where(
                    table.study_id == study._study_id,
                    table.key.startswith(PLOT_DATA_PREFIX, autoescape=True),
                )
            )
        return len(saved)
    for key in saved:  # one chunk per figure: "<prefix><id>:<chunk number>"
        first = key.endswith(":0")
        storage.set_study_system_attr(study._study_id, key, '{"data": []}' if first else "")
    return len(saved)


def _file_name(text: str) -> str:
    """A study name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "study"
