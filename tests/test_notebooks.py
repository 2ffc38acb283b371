"""Notebook hygiene: sources are stripped, follow the skeleton, and every stage declares what it imports."""
import ast
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stripped_and_named(path):
    assert re.fullmatch(r"\d\d_[a-z]+\.ipynb", path.name)
    raw = path.read_text()
    assert "\r\n" not in raw
    nb = json.loads(raw)
    assert "widgets" not in nb["metadata"]
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name}: outputs committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_of_literals(path):
    cells = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    tree = ast.parse("".join(cells[0]["source"]))
    for node in tree.body:
        assert isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant), \
            f"{path.name}: the parameters cell holds literal assignments only"
    names = {t.id for node in tree.body for t in node.targets}
    assert "profile" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_skeleton(path):
    cells = _cells(path)
    src = ["".join(c["source"]) for c in cells]
    assert cells[0]["cell_type"] == "markdown" and re.match(rf"# {path.name[:2]} · ", src[0]), "title cell"
    assert any("report.versions()" in s for s in src), "version cell"
    assert sum(bool(re.match(r"## \d+\. ", s)) for c, s in zip(cells, src) if c["cell_type"] == "markdown") >= 3
    assert cells[-1]["cell_type"] == "markdown" and "Files written" in src[-1], "closing cell"


def _stage_for(nb_name):
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        if f"notebooks/{nb_name}" in body["cmd"]:
            return name, body
    return None, None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stage_declares_notebook_and_the_lib_modules_it_imports(path):
    name, stage = _stage_for(path.name)
    assert stage, f"{path.name} is run by no stage in dvc.yaml"
    deps = set(stage["deps"])
    assert f"notebooks/{path.name}" in deps
    code = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    used = set(re.findall(r"from lib import ([\w, ]+)", code))
    modules = {m.strip().split(" as ")[0] for group in used for m in group.split(",")}
    modules |= set(re.findall(r"from lib\.(\w+) import", code))
    # follow lib's own imports one level (lib.jic -> lib.retrieval, ...)
    for mod in list(modules):
        text = (ROOT / "lib" / f"{mod}.py").read_text()
        modules |= set(re.findall(r"from lib\.(\w+) import", text)) | set(re.findall(r"from lib import (\w+)", text))
    missing = sorted(f"lib/{m}.py" for m in modules if f"lib/{m}.py" not in deps)
    assert not missing, f"stage {name} imports but does not declare {missing}"


def test_every_stage_writes_metrics_uncached():
    for name, stage in DVC["stages"].items():
        body = stage.get("do", stage)
        if "run_notebook" not in body["cmd"]:
            continue
        metrics = body.get("metrics", [])
        assert metrics, f"{name} declares no metrics"
        for entry in metrics + body.get("plots", []):
            (path, opts), = entry.items()
            assert opts.get("cache") is False, f"{name}: {path} must be cache: false (git-tracked)"
