"""`tuner quantize`: INT8 through Intel Neural Compressor, gated on accuracy."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from tuner.cli import main
from tuner.core.checkpoint import load_segmenter
from tuner.core.config import TrainConfig
from tuner.core.environment import cpu_info
from tuner.core.errors import CheckpointError
from tuner.core.model import build_segmenter
from tuner.core.model.adapters import merge_adapters
from tuner.deploy.quantize import QuantizeOptions, load_quantized
from tuner.deploy.quantize._inc import quantize_model
from tuner.deploy.quantize._store import load_quantized_staging, save_quantized
from tuner.deploy.trials import quantize_trial
from tuner.search import attrs
from tuner.search.study import fetch_checkpoint, load_existing_study, open_storage

pytestmark = pytest.mark.slow
FAST = QuantizeOptions(compile=False, calib=4, latency_images=1, latency_repeats=1)


@pytest.fixture(scope="module")
def study_home(tmp_path_factory):
    """A two-trial study trained on the tiny synthetic set, as `tuner run` leaves it."""
    home = tmp_path_factory.mktemp("qhome")
    space = {
        "study": "q",
        "sampler": {"name": "grid"},
        "pruner": {"name": "none"},
        "fixed": {
            "model": "sam_tiny",
            "head": "conv",
            "epochs": 3,
            "batch_size": 2,
            "image_size": [64, 128],
            "encoder_lr_mult": 1.0,
            "lr": 3e-3,
        },
        "params": {"loss": {"type": "categorical", "choices": ["ce"]}},
        "synthetic": {"train": 8, "val": 4, "height": 128, "width": 256},
    }
    path = home / "q.yaml"
    path.write_text(yaml.safe_dump(space))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        result = CliRunner().invoke(
            main, ["run", "--study", "q", "--space", str(path), "--no-report"]
        )
        assert result.exit_code == 0, result.output
        yield home


def quantize_cli(home: Path, *args: str):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(home))
        return CliRunner().invoke(main, ["quantize", *args, "--no-compile", "--calib", "4"])


@pytest.mark.parametrize("method", ["static", "dynamic"])
def test_static_and_dynamic_stay_within_the_default_tolerance(study_home, method, tmp_path):
    out = tmp_path / method
    result = quantize_cli(study_home, "best", "--study", "q", "--method", method, "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"int8 {method} (chosen)" in result.output
    report = json.loads((out / "comparison.json").read_text())
    chosen = report["candidates"][0]
    assert (report["fp32"]["miou"] - chosen["miou"]) * 100 <= 1.0  # default tolerance
    assert chosen["latency_ms"] > 0 and chosen["size_bytes"] > 0
    assert report["cpu"]["isa"] == cpu_info()["isa"]  # the instruction sets ride along
    # Stored on the study: the comparison as a user attr, the model folder as an artifact.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        study = load_existing_study("q", open_storage(None))
    stored = attrs.record(study, attrs.QUANTIZATION)
    assert stored["chosen"] == f"int8 {method}"
    artifact = Path(study.user_attrs["artifact_store"]) / stored["output_artifact_id"]
    assert artifact.is_file() and artifact.stat().st_size > 1000
    assert stored["source_artifact_id"] == study.best_trial.user_attrs["checkpoint_artifact_id"]
    assert stored["output_artifact_id"] != stored["source_artifact_id"]
    assert "artifact_id" not in stored["extras"]

    # The saved model runs through `tuner predict --model`.
    image = next((study_home / "data").rglob("*_leftImg8bit.png"))
    predicted = CliRunner().invoke(
        main, ["predict", "--model", str(out), str(image), "--out", str(tmp_path / "pred")]
    )
    assert predicted.exit_code == 0, predicted.output
    assert (tmp_path / "pred" / f"{image.stem}_overlay.png").is_file()


@pytest.mark.parametrize("method", ["static", "dynamic", "weight_only"])
def test_save_and_reload_give_equal_outputs(method, tmp_path):
    torch.manual_seed(0)
    config = TrainConfig(image_size=(64, 128), head="conv")
    model = build_segmenter(config).eval()
    with torch.no_grad():  # move off the zero-initialised tables so every part matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    windows = [torch.randn(3, 64, 128) for _ in range(4)]
    quantized, example = quantize_model(method, model, (64, 128), windows)
    save_quantized(quantized, method, example, tmp_path)
    reloaded, _ = load_quantized_staging(tmp_path, method, config)
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        before, after, reference = quantized(x), reloaded(x), model(x)
    assert torch.equal(before, after)
    agreement = (before.argmax(1) == reference.argmax(1)).float().mean()
    assert agreement > 0.9  # INT8 stays close to FP32


def test_tolerance_failure_exits_non_zero_and_overwrites_nothing(study_home, tmp_path, monkeypatch):
    from tuner.deploy.quantize import _pipeline

    def ruined(name, *args, **kwargs):  # every INT8 model scores 0 mIoU
        metrics = real_evaluate(name, *args, **kwargs)
        return {**metrics, "miou": 0.0} if name.startswith("int8") else metrics

    real_evaluate = _pipeline._evaluate
    monkeypatch.setattr(_pipeline, "_evaluate", ruined)
    out = tmp_path / "kept"
    out.mkdir()
    (out / "previous.txt").write_text("an earlier, accepted model")
    args = ["best", "--study", "q", "--method", "dynamic", "--out"]
    result = quantize_cli(study_home, *args, str(out))
    assert result.exit_code == 2
    assert "no INT8 method stays within 1.00 mIoU points" in result.output
    assert "Nothing was written" in result.output
    assert [p.name for p in out.iterdir()] == ["previous.txt"]


def test_a_candidate_over_the_tolerance_falls_back_layer_by_layer(
    study_home, tmp_path, monkeypatch
):
    """The first two quantizations miss the tolerance (forced): the head, then the neck, stay
    in FP32, and the third is accepted and says so."""
    from tuner.deploy.quantize import _pipeline

    calls = {"n": 0}
    real_evaluate = _pipeline._evaluate

    def gate(name, *args, **kwargs):
        metrics = real_evaluate(name, *args, **kwargs)
        if not name.startswith("int8"):
            return metrics
        calls["n"] += 1
        return {**metrics, "miou": 0.0} if calls["n"] <= 2 else metrics

    monkeypatch.setattr(_pipeline, "_evaluate", gate)
    out = tmp_path / "fallback"
    args = ["best", "--study", "q", "--method", "static", "--out", str(out)]
    result = quantize_cli(study_home, *args)
    assert result.exit_code == 0, result.output
    assert "falling back" in result.output and "head, encoder.neck" in result.output
    report = json.loads((out / "comparison.json").read_text())
    assert report["candidates"][0]["kept_fp32"] == ["head", "encoder.neck"]
    # The saved graph quantizes fewer tensors than a full quantization of the same model.
    kept, _ = load_quantized(out)
    monkeypatch.setattr(_pipeline, "_evaluate", real_evaluate)
    full_out = tmp_path / "full"
    assert quantize_cli(study_home, *args[:-1], str(full_out)).exit_code == 0
    full, _ = load_quantized(full_out)

    def quantize_ops(model):
        return sum("quantize_per" in str(node.target) for node in model.graph.nodes)

    assert 0 < quantize_ops(kept) < quantize_ops(full)


def test_pt2e_files_hold_int8_weights_not_fp32_copies(tmp_path):
    import gzip
    import io

    from tuner.deploy.quantize._store import EXPORTED_FILE, MODEL_DIR

    torch.manual_seed(0)
    config = TrainConfig(image_size=(64, 128), head="linear")
    model = build_segmenter(config).eval()
    windows = [torch.randn(3, 64, 128) for _ in range(4)]
    quantized, example = quantize_model("static", model, (64, 128), windows)
    save_quantized(quantized, "static", example, tmp_path)
    data = gzip.decompress((tmp_path / MODEL_DIR / EXPORTED_FILE).read_bytes())
    program = torch.export.load(io.BytesIO(data))
    tensors = [*program.state_dict.values(), *program.constants.values()]
    int8 = sum(t.numel() for t in tensors if t.dtype == torch.int8)
    floats = sum(t.numel() * t.element_size() for t in tensors if t.is_floating_point())
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert int8 >= linear  # every Linear weight is stored as int8 ...
    assert floats < int8  # ... and not again in fp32 (that would be 4 bytes per int8 one)
    fp32_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert (tmp_path / MODEL_DIR / EXPORTED_FILE).stat().st_size < 0.35 * fp32_bytes


def test_a_tampered_archive_is_refused_before_torch_unpickles_it(tmp_path):
    import zipfile

    from tuner.core.errors import CheckpointError
    from tuner.deploy.quantize._store import check_archive

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = io_bytes(lambda f: torch.save({"x": Payload()}, f))
    plain = io_bytes(lambda f: torch.save((torch.zeros(1),), f))
    for name, payload, refused in (
        ("m/data/sample_inputs/model.pt", evil, True),
        ("m/data/sample_inputs/model.pt", plain, False),
        ("m/data/constants/custom_objs/obj0", b"x", True),
    ):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, payload)
        if refused:
            with pytest.raises(CheckpointError, match="refused for safety"):
                check_archive(buffer.getvalue(), tmp_path / "model.pt2.gz")
        else:
            check_archive(buffer.getvalue(), tmp_path / "model.pt2.gz")


def io_bytes(write) -> bytes:
    buffer = io.BytesIO()
    write(buffer)
    return buffer.getvalue()


def test_auto_keeps_the_fastest_passing_candidate_no_larger_than_fp32():
    from tuner.deploy.quantize import Measurement
    from tuner.deploy.quantize._measure import choose

    def row(name, miou, latency, size, passed=True):
        return Measurement(name, miou, 0, 0, [], latency, size, True, passed)

    fp32 = row("fp32", 0.40, 10.0, 100)
    fast_big = row("int8 a", 0.40, 5.0, 150)  # faster, but a larger file: never shipped
    fast = row("int8 b", 0.40, 7.0, 30)
    faster_failing = row("int8 c", 0.30, 4.0, 25, passed=False)
    small_slow = row("int8 d", 0.40, 12.0, 20)
    assert choose(fp32, [fast_big, fast, faster_failing, small_slow], 1.0)[0] is fast
    chosen, reason = choose(fp32, [small_slow, row("int8 e", 0.4, 11.0, 40)], 1.0)
    assert chosen is small_slow and "by size" in reason  # none faster: the smallest
    chosen, reason = choose(fp32, [faster_failing], 1.0)
    assert not chosen.passed and "no INT8 method stays within" in reason
    # Within 10 % of the fastest is the same speed (noise): the smaller file is shipped.
    nearly_as_fast_small = row("int8 f", 0.40, 7.5, 29)
    chosen, reason = choose(fp32, [fast, nearly_as_fast_small, row("int8 g", 0.4, 6.9, 43)], 1.0)
    assert chosen is nearly_as_fast_small and "smallest of the fastest" in reason
    assert "int8 g" in reason  # names the faster one it passed over
    clearly_slower_small = row("int8 h", 0.40, 8.0, 20)  # 14 % slower than int8 b: not a tie
    assert choose(fp32, [fast, clearly_slower_small], 1.0)[0] is fast
    # Sizes within 2 % are one size: the faster of two same-size models is shipped.
    static, dynamic = row("int8 static", 0.4, 7.0, 30), row("int8 dynamic", 0.4, 7.3, 29.8)
    assert choose(fp32, [static, dynamic], 1.0)[0] is static


def test_missing_study_trial_and_artifact_are_named(study_home):
    missing = quantize_cli(study_home, "best", "--study", "nope")
    assert missing.exit_code == 2 and "no study named 'nope'" in missing.output
    no_trial = quantize_cli(study_home, "trial", "7", "--study", "q")
    assert no_trial.exit_code == 2 and "study 'q' has no trial 7" in no_trial.output
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        study = load_existing_study("q", open_storage(None))
        trial = study.best_trial
        artifact = (
            Path(study.user_attrs["artifact_store"]) / trial.user_attrs["checkpoint_artifact_id"]
        )
        hidden = artifact.with_name("hidden")
        artifact.rename(hidden)
        try:
            with pytest.raises(CheckpointError, match="checkpoint artifact .* is missing"):
                quantize_trial("q", trial.number, FAST)
        finally:
            hidden.rename(artifact)


def test_quantize_a_checkpoint_file_directly(study_home, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        study = load_existing_study("q", open_storage(None))
        checkpoint = fetch_checkpoint(study, study.best_trial, tmp_path / "best.pt")
    (data,) = (p for p in (study_home / "data").iterdir() if p.is_dir())
    out = tmp_path / "woq"
    args = ["--checkpoint", str(checkpoint), "--data", str(data), "--method", "weight_only"]
    result = quantize_cli(study_home, *args, "--out", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "comparison.json").read_text())
    assert report["chosen"] == "int8 weight_only"
    assert report["candidates"][0]["size_bytes"] < report["fp32"]["size_bytes"]


VNNI = {"avx2": True, "avx512_vnni": True, "amx_int8": False}
AVX2_ONLY = {"avx2": True, "avx512_vnni": False, "amx_int8": False}


def test_auto_defers_the_methods_the_cpu_isa_rules_out_and_a_name_forces_one():
    from tuner.core.errors import UserError
    from tuner.deploy.quantize import METHODS, plan_methods

    first, deferred = plan_methods("auto", VNNI)
    assert first == ["static"]
    assert set(deferred) == {"dynamic", "weight_only"}
    assert "VNNI" in deferred["weight_only"] and "static" in deferred["dynamic"]
    first, deferred = plan_methods("auto", AVX2_ONLY)  # W8A8 gains little: size decides
    assert first == ["static", "weight_only"] and set(deferred) == {"dynamic"}
    assert plan_methods("dynamic", VNNI) == (["dynamic"], {})  # named: forced
    assert plan_methods("weight_only,dynamic", VNNI) == (["weight_only", "dynamic"], {})
    assert plan_methods("all", VNNI) == (list(METHODS), {})
    with pytest.raises(UserError, match="nope"):
        plan_methods("nope", VNNI)


def fake_cpu(isa):
    return {"model": "test CPU", "cores": 2, "isa": isa, "torch_cpu_capability": "AVX512"}


def int8_faster(model, *args, **kwargs):
    """FP32 takes 10 ms, every INT8 graph 5 ms: the ISA's promise, without timing noise."""
    return 5.0 if isinstance(model, torch.fx.GraphModule) else 10.0


def test_comparison_names_its_classes_models_sources_and_counts(study_home, tmp_path, monkeypatch):
    """comparison.json and quantization.json say what every number is: class names, one name per
    baseline, the source and output artifacts, when, with what, on how many images, sizes
    counted alike, measured latencies, and which methods were skipped and why."""
    import datetime
    import os
    import stat

    from tuner.core.data.labels import CLASS_NAMES
    from tuner.deploy.quantize import _pipeline

    monkeypatch.setattr(_pipeline, "cpu_info", lambda: fake_cpu(VNNI))
    monkeypatch.setattr(_pipeline, "median_latency_ms", int8_faster)
    out = tmp_path / "named"
    old_mask = os.umask(0o022)
    try:
        result = quantize_cli(study_home, "best", "--study", "q", "--out", str(out))
    finally:
        os.umask(old_mask)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0700
    assert stat.S_IMODE((out / "comparison.json").stat().st_mode) == 0o644
    report = json.loads((out / "comparison.json").read_text())
    meta = json.loads((out / "quantization.json").read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        study = load_existing_study("q", open_storage(None))
    for stored in (report, meta["report"], attrs.record(study, attrs.QUANTIZATION)):
        assert list(stored["fp32"]["per_class_iou"]) == list(CLASS_NAMES)
        assert [b["name"] for b in stored["baselines"]] == ["fp32 eager"]  # --no-compile
        assert stored["output_dir"] == str(out)  # the final folder, not a deleted staging one
        assert stored["source_artifact_id"] == study.best_trial.user_attrs["checkpoint_artifact_id"]
        created = datetime.datetime.fromisoformat(stored["created_utc"])
        assert created.utcoffset() == datetime.timedelta(0)
        assert abs(datetime.datetime.now(datetime.UTC) - created).total_seconds() < 3600
        assert {"python", "torch", "optuna", "sam-tuner", "neural-compressor-pt"} <= set(
            stored["versions"]
        )
        assert stored["val_images"] == 4 and stored["calibration_images"] == 4
        assert stored["calibration_windows"] >= 4
        assert "uncompressed" in stored["size_basis"]
        # Only static ran: on a VNNI CPU the others are dominated once static ships.
        assert [c["name"] for c in stored["candidates"]] == ["int8 static"]
        assert [s["name"] for s in stored["skipped"]] == ["int8 dynamic", "int8 weight_only"]
        assert all(s["reason"] for s in stored["skipped"])
        for row in [stored["fp32"], *stored["candidates"]]:
            assert row["latency_basis"].startswith("measured: ")
            assert row["archive_bytes"] > 0
    assert (
        report["output_artifact_id"]
        == attrs.record(study, attrs.QUANTIZATION)["output_artifact_id"]
    )
    assert report["output_artifact_id"] not in (None, report["source_artifact_id"])
    # Like for like: the int8 tensors are about a quarter of the fp32 ones, gzip or not.
    fp32, int8 = report["fp32"], report["candidates"][0]
    assert 0.2 < int8["size_bytes"] / fp32["size_bytes"] < 0.45
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNER_HOME", str(study_home))
        checkpoint = fetch_checkpoint(study, study.best_trial, tmp_path / "best.pt")
    model, _ = load_segmenter(checkpoint, "cpu")
    merge_adapters(model)
    assert fp32["size_bytes"] == sum(
        t.numel() * t.element_size() for t in model.state_dict().values()
    )
    assert int8["archive_bytes"] == (out / "model" / "model.pt2.gz").stat().st_size
    assert "skipped int8 dynamic" in result.output


def test_auto_runs_the_deferred_methods_when_the_first_ship_nothing(
    study_home, tmp_path, monkeypatch
):
    from tuner.deploy.quantize import _pipeline

    real_evaluate = _pipeline._evaluate

    def static_fails(name, *args, **kwargs):
        metrics = real_evaluate(name, *args, **kwargs)
        return {**metrics, "miou": 0.0} if name == "int8 static" else metrics

    monkeypatch.setattr(_pipeline, "cpu_info", lambda: fake_cpu(VNNI))
    monkeypatch.setattr(_pipeline, "median_latency_ms", int8_faster)
    monkeypatch.setattr(_pipeline, "_evaluate", static_fails)
    out = tmp_path / "deferred"
    args = ["best", "--study", "q", "--out", str(out), "--calib", "4"]
    result = quantize_cli(study_home, *args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "comparison.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert names == ["int8 static", "int8 dynamic", "int8 weight_only"]
    assert report["skipped"] == []
    assert report["chosen"] == "int8 dynamic"


def test_staging_folders_follow_the_umask(tmp_path):
    import os
    import stat

    from tuner.core.fsutil import current_umask, staging_dir

    for mask, mode in ((0o022, 0o755), (0o027, 0o750), (0o077, 0o700)):
        old = os.umask(mask)
        try:
            assert current_umask() == mask
            folder = staging_dir(tmp_path / f"out{mask:o}")
        finally:
            os.umask(old)
        assert stat.S_IMODE(folder.stat().st_mode) == mode
