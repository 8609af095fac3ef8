"""`tuner report`: every section, offline, drawn in a real browser, and inside the dashboard."""

from __future__ import annotations

import base64
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
from wsgi_client import call_wsgi

from tuner import report as report_module
from tuner.cli import main
from tuner.deploy.quantize import QuantizeOptions
from tuner.deploy.trials import quantize_trial
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
        assert "figures attached to the study" in run.output
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


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.scripts, self.divs, self.links = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
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
        "history",
        "learning-curves",
        "latency-front",
        "comparison",
        "class-iou",
        "quantization",
        "predictions",
    ]
    assert page.sections == expected
    figures = {f"fig-{k}" for k in expected if k not in ("decision", "predictions")}
    assert set(page.divs) == figures
    assert page.scripts and all(src is None for src in page.scripts)  # plotly.js is inline
    # Nothing is fetched: no external scripts, stylesheets or images.
    assert page.links == [] and all(src.startswith("data:image/jpeg") for src in page.images)
    decision = text[text.index('<section id="decision">') : text.index('<section id="history">')]
    assert "Best: #" in decision and "95 % interval" in decision and "Verdict:" in decision
    assert "INT8:" in decision  # the study was quantized
    assert "int8 weight_only" in text  # the FP32-vs-INT8 table
    assert "Losses compared" in text
    for name in ("ce", "dice", "boundary_ce"):
        assert f"loss={name}" in text  # curves and points named by their params
    assert '"text":"val mIoU"' in text  # axes named by metric, not Optuna's "Objective Value"
    (uri,) = page.images
    grid = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    # 4 val images x (photo, truth, prediction, errors), a header row and a class legend.
    assert grid.size[0] == 4 * 256 and grid.size[1] > 4 * 128


def test_figures_are_attached_for_the_dashboard(report_home):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(report_home))
        from tuner.report.dashboard import wsgi_app

        app = wsgi_app()
        _, listing = call_wsgi(app, "/api/studies")
        study_id = json.loads(listing)["study_summaries"][0]["study_id"]
        code, body = call_wsgi(app, f"/api/studies/{study_id}")
    assert code.startswith("200")
    graphs = json.loads(body)["plotly_graph_objects"]
    ids = {g["id"] for g in graphs}
    assert {"history", "comparison", "class-iou", "quantization", "predictions"} <= ids
    assert {"learning-curves", "latency-front"} <= ids
    # Light enough to poll, and titled inside the figure (the cards show no heading).
    assert sum(len(json.dumps(g)) for g in graphs) < 500_000
    for graph in graphs:
        figure = json.loads(graph["graph_object"])
        assert figure["layout"]["title"]["text"], graph["id"]


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
    assert drawn >= 6, drawn
    initialised = re.findall(r'<div[^>]*class="[^"]*js-plotly-plot', dom)
    assert len(initialised) == 6  # every figure div was turned into a plot by plotly.js


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
    sections = report_module.build_sections(study, predictions=False)[:3]  # decision: no figure
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
    assert study.user_attrs["quantization"]["extras"]["trial"] == winner["trial"]
    front = report_module.build_sections(study, predictions=False)
    latency = next(s for s in front if s.key == "latency-front")
    assert any(trace.name == "INT8 copies" for trace in latency.figure.data)
