"""`tuner report`: every section, offline, drawn in a real browser, and inside the dashboard."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import subprocess
from html.parser import HTMLParser

import plotly.graph_objects as go
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from wsgi_client import call_wsgi, request

from tuner import report as report_module
from tuner.cli import main
from tuner.deploy.quantize import QuantizeOptions
from tuner.deploy.trials import quantize_trial
from tuner.search import attrs
from tuner.search.study import load_existing_study, open_storage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report_home(tmp_path_factory):
    """A small loss study, quantized (weight-only, eager: the fastest path), plus its report."""
    home = tmp_path_factory.mktemp("rhome")
    space = {
        "study": "rep",
        "sampler": {"name": "grid", "seed": 0},
        "pruner": {"name": "none"},
        "fixed": {
            "model": "sam_tiny",
            "head": "linear",
            "epochs": 2,
            "batch_size": 2,
            "image_size": [64, 128],
            "encoder_lr_mult": 1.0,
            "lr": 3e-3,
        },
        "params": {"loss": {"type": "categorical", "choices": ["ce", "dice", "boundary_ce"]}},
        "synthetic": {"train": 8, "val": 4, "height": 128, "width": 256},
    }
    (home / "rep.yaml").write_text(yaml.safe_dump(space))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        run = CliRunner().invoke(main, ["run", "--study", "rep", "--space", str(home / "rep.yaml")])
        assert run.exit_code == 0, run.output
        assert "the decision is in the study's note" in run.output
        quantize_trial(
            "rep",
            None,
            QuantizeOptions(
                method="weight_only", compile=False, calib=2, latency_images=1, latency_repeats=1
            ),
        )
        result = CliRunner().invoke(
            main, ["report", "--study", "rep", "--out", str(home / "rep.html")]
        )
        assert result.exit_code == 0, result.output
        yield home


def section(text: str, key: str) -> str:
    """One section of the page, its entities unescaped (run's, not run&#x27;s)."""
    start = text.index(f'<section id="{key}">')
    return html.unescape(text[start : text.index("</section>", start)])


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.scripts, self.divs, self.links = [], [], [], [], []

    def handle_starttag(self, tag, attributes):
        attrs = dict(attributes)
        if tag == "section":
            self.sections.append(attrs["id"])
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag == "link":
            self.links.append(attrs.get("href"))
        elif tag == "script":
            self.scripts.append(attrs.get("src"))
        elif tag == "div" and attrs.get("id", "").startswith("fig-"):
            self.divs.append(attrs["id"])


def test_report_opens_with_the_decision_and_draws_what_says_something(report_home):
    text = (report_home / "rep.html").read_text()
    page = Page()
    page.feed(text)
    # One parameter varies: no importance bar of 1.0, no parallel-coordinate restatement.
    expected = [
        "decision",
        "provenance",
        "history",
        "learning-curves",
        "latency-front",
        "comparison",
        "class-iou",
        "quantization",
        "predictions",
    ]
    assert page.sections == expected
    # Three losses, one architecture: the latency is one measured value, said in words, not a
    # one-point front; the FP32-vs-INT8 table is HTML (it wraps, nothing clipped).
    html_only = ("decision", "provenance", "latency-front", "quantization", "predictions")
    assert set(page.divs) == {f"fig-{k}" for k in expected if k not in html_only}
    assert page.scripts and all(src is None for src in page.scripts)  # plotly.js is inline
    # Nothing is fetched: no external scripts, stylesheets or images.
    assert page.links == [] and all(src.startswith("data:image/jpeg") for src in page.images)
    decision = section(text, "decision")
    assert "Best: #" in decision and "Verdict:" in decision
    # The interval is of the headline value: the value lies inside it.
    value, low, high = map(
        float,
        re.search(
            r"val mIoU (\d\.\d{4}), 95 % interval \[(\d\.\d{4}), (\d\.\d{4})\]", decision
        ).groups(),
    )
    assert low <= value <= high
    assert "BCa bootstrap over 4 validation images, one seed" in decision
    # The INT8 change is signed as what it is, and set against the noise.
    found = re.search(r"([+-]\d+\.\d\d) points \((gain|loss|no change)\)", decision)
    change = float(found.group(1))
    assert found.group(2) == ("gain" if change > 0 else "loss" if change < 0 else "no change")
    assert "side the noise: the FP32 run's 95 % interval" in decision
    latency = section(text, "latency-front")
    assert "All 3 completed trials share one architecture, so one latency" in latency
    assert "INT8: " in latency and "measured" in latency
    provenance = section(text, "provenance")
    assert "SYNTHETIC Cityscapes-format" in provenance and "train 8, val 4" in provenance
    assert re.search(r"sam_tiny from .*, sha256 [0-9a-f]{64} \(3 trials\)", provenance)
    assert "torch " in provenance and "optuna " in provenance and "cpu: " in provenance
    assert "int8 weight_only" in section(text, "quantization")  # the FP32-vs-INT8 table
    assert "Losses compared" in text
    for name in ("ce", "dice", "boundary_ce"):
        assert f"loss={name}" in text  # curves and points named by their params
    assert '"text":"val mIoU"' in text  # axes named by metric, not Optuna's "Objective Value"
    (uri,) = page.images
    grid = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    # 4 val images x (photo, truth, prediction, errors), a header row and a class legend.
    assert grid.size[0] == 4 * 256 and grid.size[1] > 4 * 128


def test_dashboard_poll_is_light_and_the_note_carries_the_decision(report_home):
    from tuner.search.leaderboard import describe_best

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(report_home))
        from tuner.report.dashboard import wsgi_app

        app = wsgi_app()
        _, listing = call_wsgi(app, "/api/studies")
        study_id = json.loads(listing)["study_summaries"][0]["study_id"]
        code, first = call_wsgi(app, f"/api/studies/{study_id}?after=0")
        detail = json.loads(first)
        # What the page sends every ~10 s once it holds every finished trial.
        _, poll = call_wsgi(app, f"/api/studies/{study_id}?after={len(detail['trials'])}")
        headline = re.search(r"val_miou: (\d\.\d{4})", describe_best("rep", None))[1]
        artifacts = {a["filename"]: a for a in detail["artifacts"]}
        code_html, headers, page = request(
            app, f"/artifacts/{study_id}/{artifacts['rep-report.html']['artifact_id']}"
        )
    assert code.startswith("200") and code_html.startswith("200")
    assert detail["plotly_graph_objects"] == []  # figures are in the report artifact
    assert len(first) <= 50_000 and len(poll) <= 50_000, (len(first), len(poll))
    print(f"study detail: {len(first)} bytes at after=0, {len(poll)} bytes a later poll")
    note = detail["note"]["body"]
    assert f"**{headline}**" in note and "**Verdict:**" in note
    assert "### INT8" in note and "points of mIoU" in note
    assert "```yaml\nfixed:\n  batch_size: 2\n" in note  # the space with its line breaks
    assert f"[rep-report.html](/artifacts/{study_id}/" in note
    assert not re.search(r"\d\.\d{5,}", note)  # no raw floats
    assert "SYNTHETIC Cityscapes-format" in note  # where the numbers come from
    # The front page's attributes: the headline in one line, no raw JSON or flattened YAML.
    shown = {a["key"]: a["value"] for a in detail["user_attrs"]}
    assert headline in shown["decision"] and "95 % interval" in shown["decision"]
    assert not {"quantization", "search_space"} & set(shown)
    assert headers["Content-Type"].startswith("text/html")
    assert b'id="fig-history"' in page


@pytest.mark.chromium
def test_report_draws_in_headless_chromium(report_home, chromium_path, tmp_path):
    dom = subprocess.run(
        [
            chromium_path,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=15000",
            "--dump-dom",
            (report_home / "rep.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # plotly draws each figure as an <svg class="main-svg">; a failed script leaves none.
    drawn = dom.count('class="main-svg"')
    assert drawn >= 4, drawn
    initialised = re.findall(r'<div[^>]*class="[^"]*js-plotly-plot', dom)
    # Every figure div was turned into a plot by plotly.js: history, learning curves, losses
    # compared and per-class IoU (the latency and FP32-vs-INT8 sections are HTML here).
    assert len(initialised) == 4


def test_png_export_says_why_without_chromium_and_downloads_nothing(monkeypatch, tmp_path):
    import kaleido
    from choreographer.browsers.chromium import Chromium

    # No browser on this machine, as choreographer (what kaleido drives) sees it; any attempt to
    # render or to fetch a browser anyway trips the test.
    monkeypatch.setattr(Chromium, "find_browser", staticmethod(lambda *a, **k: None))
    monkeypatch.setattr(kaleido, "get_chrome_sync", lambda *a, **k: pytest.fail("download!"))
    monkeypatch.setattr(go.Figure, "write_image", lambda *a, **k: pytest.fail("rendered!"))
    assert report_module.system_chromium() is None
    section = report_module.Section("x", "x", figure=go.Figure())
    written, message = report_module.export_png([section], tmp_path / "png")
    assert written == [] and "no system Chromium" in message
    assert not (tmp_path / "png").exists()


@pytest.mark.chromium
def test_png_export_with_system_chromium(report_home, chromium_path, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(report_home))
        study = load_existing_study("rep", open_storage(None))
    # The first four: the decision and provenance have no figure.
    sections = report_module.build_sections(study, predictions=False)[:4]
    written, _ = report_module.export_png(sections, tmp_path)
    assert [p.name for p in written] == ["history.png", "learning-curves.png"]
    assert Image.open(written[0]).size[0] == 1200


def test_quantize_top_k_ships_the_best_int8_configuration(report_home, tmp_path):
    out = tmp_path / "top"
    args = ["quantize", "best", "--study", "rep", "--top", "2", "--method", "weight_only"]
    args += ["--no-compile", "--calib", "2", "--out", str(out)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(report_home))
        result = CliRunner().invoke(main, args)
        study = load_existing_study("rep", open_storage(None))
    assert result.exit_code == 0, result.output
    assert "INT8 mIoU" in result.output and "INT8 winner: trial" in result.output
    top = json.loads((out / "comparison.json").read_text())["extras"]["top"]
    assert len(top) == 2 and sum(row["chosen"] for row in top) == 1
    winner = next(row for row in top if row["chosen"])
    assert winner["int8_miou"] == max(row["int8_miou"] for row in top)
    assert attrs.record(study, attrs.QUANTIZATION)["extras"]["trial"] == winner["trial"]
    front = report_module.build_sections(study, predictions=False)
    latency = next(s for s in front if s.key == "latency-front")
    # One architecture: said in words, with both INT8 copies as tuner quantize measured them.
    for row in top:
        assert f"#{row['trial']} INT8: {row['latency_ms']:.1f} ms" in latency.html


# The dashboard's note and artifacts ------------------------------------------------------------
def small_study(tmp_path):
    """A finished single-objective study in SQLite, three configurations with the attributes a
    run records, and a quantization result; no per-image counts."""
    import optuna

    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="note", storage=storage, direction="maximize")
    study.set_metric_names(["val_miou"])
    study.set_user_attr(attrs.ARTIFACT_STORE, str(tmp_path / "artifacts"))
    attrs.set_record(
        study, attrs.SEARCH_SPACE, "study: note\nparams:\n  loss: {type: categorical}\n"
    )
    loss = optuna.distributions.CategoricalDistribution(["ce", "dice", "focal"])
    for name, value in [("ce", 0.3710525161487952), ("dice", 0.35), ("focal", 0.2)]:
        study.add_trial(
            optuna.trial.create_trial(
                params={"loss": name},
                distributions={"loss": loss},
                value=value,
                user_attrs={
                    "val_boundary_f1": 0.123456789,
                    attrs.LATENCY_MS: 46.0187565,
                    attrs.MIOU_CI: [value - 0.03, value + 0.03],
                },
            )
        )

    def row(name, miou, latency, size, compiled=False):
        return {"name": name, "miou": miou, "latency_ms": latency, "size_bytes": size,
                "compiled": compiled}  # fmt: skip

    attrs.set_record(
        study,
        attrs.QUANTIZATION,
        {
            "chosen": "int8_static",
            "fp32": row("fp32", 0.3711, 46.0, 5_000_000),
            "baselines": [row("fp32", 0.3711, 46.0, 5_000_000)],
            "candidates": [row("int8_static", 0.3740, 36.0, 1_450_000)],
            "reason": "the fastest within the tolerance",
            "extras": {"trial": 0},
        },
    )
    return study, storage


def test_study_note_reads_as_a_decision(tuner_home, tmp_path):
    from tuner.report._note import study_note

    study, _ = small_study(tmp_path)
    note = study_note(study, [("note-report.html", "/artifacts/1/abc")])
    assert "**Best: #0**: val mIoU **0.3711** (one seed)" in note
    assert "**Verdict:** #0 is ranked first; no per-image counts" in note
    assert "| 0 | COMPLETE | 0.3711 |" in note  # the leaderboard, at 4 decimals
    assert not re.search(r"\d\.\d{5,}", note)  # no raw float anywhere
    assert "mIoU 0.3740 vs FP32 0.3711, +0.29 points of mIoU (gain)" in note
    assert "1.28x the FP32 speed" in note and "29% of the FP32 size" in note
    assert "inside the FP32 run's 95 % interval [0.3411, 0.4011]: the gain is within" in note
    assert "```yaml\nstudy: note\nparams:\n  loss: {type: categorical}\n```" in note
    assert "- [note-report.html](/artifacts/1/abc)" in note
    assert "{" not in note.replace("{type: categorical}", "")  # no JSON


def test_pareto_front_in_the_note(tuner_home, tmp_path):
    import optuna

    from tuner.report._note import study_note

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val_miou", "latency_ms"])
    for values in ([0.30, 10.0], [0.35, 20.0], [0.25, 30.0]):
        study.add_trial(optuna.trial.create_trial(values=values))
    note = study_note(study)
    assert "2 trials form the Pareto front" in note
    assert "| #0 | 0.3000 | 10.0000 |" in note and "| #1 | 0.3500 | 20.0000 |" in note


def test_attached_study_has_a_note_and_typed_uniquely_named_artifacts(tuner_home, tmp_path):
    from optuna_dashboard import save_plotly_graph_object

    from tuner.report.dashboard import attach_to_dashboard, wsgi_app
    from tuner.search.study import open_artifact_store, upload
    from tuner.search.study.artifacts import replace_study_artifact

    study, storage = small_study(tmp_path)
    store = open_artifact_store(tmp_path / "artifacts")
    save_plotly_graph_object(study, go.Figure(), graph_object_id="old")  # as before
    files = {
        "best.pt": "application/octet-stream",
        "model.safetensors": "application/octet-stream",
        "note-trial0.tar.gz": "application/gzip",
        "comparison.json": "application/json",
        "space.yaml": "application/yaml",
    }
    for name in files:
        (tmp_path / name).write_bytes(b"x" * 10)
    trial = study.ask()  # as a run uploads its checkpoint
    trial_ids = {upload(trial, store, tmp_path / "best.pt"): "best.pt"}
    study.tell(trial, 0.1)
    study_ids = {upload(study, store, tmp_path / n): n for n in list(files)[1:]}
    # Uploaded twice under a name that says what it holds: one stays.
    for _ in range(2):
        renamed = replace_study_artifact(
            study, store, tmp_path / "note-trial0.tar.gz", name="note-trial0-int8-static.tar.gz"
        )
    study_ids[renamed] = "note-trial0.tar.gz"
    section = report_module.Section("history", "History", figure=go.Figure())
    assert attach_to_dashboard(study, [section]) == 1
    attach_to_dashboard(study, [section])  # again: still one report

    app = wsgi_app(storage, str(tmp_path / "artifacts"))
    code, body = call_wsgi(app, f"/api/studies/{study._study_id}?after=0")
    detail = json.loads(body)
    assert code.startswith("200") and detail["plotly_graph_objects"] == []
    assert "**Best: #0**" in detail["note"]["body"]
    names = [a["filename"] for a in detail["artifacts"]]
    assert len(names) == len(set(names)) and "note-report.html" in names
    assert "note-trial0-int8-static.tar.gz" in names
    for artifact in detail["artifacts"]:
        code, headers, _ = request(app, f"/artifacts/{study._study_id}/{artifact['artifact_id']}")
        expected = "text/html" if artifact["filename"].endswith(".html") else None
        expected = expected or files[study_ids[artifact["artifact_id"]]]
        assert code.startswith("200") and headers["Content-Type"] == expected, artifact
    (artifact_id,) = trial_ids
    path = f"/artifacts/{study._study_id}/{trial._trial_id}/{artifact_id}"
    code, headers, _ = request(app, path)
    assert code.startswith("200") and headers["Content-Type"] == "application/octet-stream"
