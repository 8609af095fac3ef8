"""The house: arrows point one way (core <- search <- deploy <- report <- cli), no circles, a core
free of Optuna and INC, and extension points that are one definition plus one decorator."""

from __future__ import annotations

import ast
import doctest
import importlib
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent / "tuner"
LAYERS = ["core", "search", "deploy", "report", "cli"]  # each may import only those before it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every `tuner` module a file imports, at the top or inside a function."""
    found = set()
    package = module_name(path).split(".") if path.name == "__init__.py" else None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                here = package or module_name(path).split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "tuner" or name.startswith("tuner.")}


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        targets = set()
        for imported in imports_of(path):
            while imported and imported not in modules:  # `from x import name` of a non-module
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                targets.add(imported)
        edges[name] = targets
    return edges


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        return len(LAYERS)  # tuner, tuner.__main__: above everything
    return LAYERS.index(parts[1])


def test_every_module_belongs_to_a_layer():
    strays = [
        m for m in graph() if layer(m) == len(LAYERS) and m not in ("tuner", "tuner.__main__")
    ]
    assert strays == []


def test_no_import_points_up_a_layer():
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_no_import_cycles():
    edges, cycles = graph(), []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_core_knows_nothing_of_optuna_or_inc_and_config_no_implementation():
    heavy = ("optuna", "optuna_dashboard", "neural_compressor", "intel_extension_for_pytorch")
    for path in (ROOT / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not [n for n in names if n.split(".")[0] in heavy], path
    # The vocabulary asks registries; it imports no loss, head or model code.
    assert graph()["tuner.core.config"] == {"tuner.core.errors", "tuner.core.registry"}


def test_the_arrow_test_catches_an_upward_import(tmp_path, monkeypatch):
    """The test above can fail: a core module importing the search layer is caught."""
    fake = tmp_path / "tuner"
    (fake / "core").mkdir(parents=True)
    (fake / "search").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "core" / "__init__.py").write_text("")
    (fake / "search" / "__init__.py").write_text("")
    (fake / "search" / "space.py").write_text("from tuner.core import config\n")
    (fake / "core" / "config.py").write_text("def f():\n    from tuner.search import space\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    upward = {(s, t) for s, ts in graph().items() for t in ts if layer(t) > layer(s)}
    assert upward == {
        ("tuner.core.config", "tuner.search"),
        ("tuner.core.config", "tuner.search.space"),
    }


@pytest.mark.parametrize(
    "module",
    [
        "tuner.core.registry",
        "tuner.core.losses",
        "tuner.core.model.heads",
        "tuner.core.model.adapters",
        "tuner.search.samplers",
        "tuner.deploy.quantize._inc",
        "tuner.core.cache._codec",
        "tuner.core.cache._simulate",
        "tuner.core.cost",
        "tuner.core.environment",
        "tuner.core.model.base_weights",
    ],
)
def test_extension_point_examples_run(module):
    """Each extension point's docstring carries an example that runs (and cleans up)."""
    result = doctest.testmod(
        importlib.import_module(module), optionflags=doctest.ELLIPSIS, raise_on_error=False
    )
    assert result.attempted > 0 and result.failed == 0


def test_a_new_loss_is_one_function_and_one_decorator(tmp_path, tiny_data, tuner_home):
    import torch.nn.functional as F

    from tuner.cli import main
    from tuner.core.registry import LOSSES
    from tuner.search.space import load_space

    @LOSSES.register("newcomer")
    def newcomer(logits, target):
        return F.cross_entropy(logits, target, ignore_index=255)

    try:
        help_text = CliRunner().invoke(main, ["train", "--help"]).output
        assert "newcomer" in help_text
        for choices in (["ce", "newcomer"], "all"):
            space = {
                "study": "new",
                "params": {"loss": {"type": "categorical", "choices": choices}},
            }
            path = tmp_path / "new.yaml"
            path.write_text(yaml.safe_dump(space))
            assert "newcomer" in load_space(path).params[0].choices
        args = ["train", "--loss", "newcomer", "--data", str(tiny_data), "--epochs", "1"]
        args += ["--image-size", "64", "128", "--batch-size", "2", "--head", "linear"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "loss=newcomer" in result.output
    finally:
        del LOSSES["newcomer"]
