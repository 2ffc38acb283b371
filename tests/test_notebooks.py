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
    # NN_stage.ipynb, or NN_stage_<paper>.ipynb where a paper's stage differs from the shared one
    assert re.fullmatch(r"\d\d_[a-z]+(_[a-z0-9]+)?\.ipynb", path.name)
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


def _resolve(value, key, item):
    """Substitute DVC's ${key}, ${item} and ${item.field} in a stage body (enough for this dvc.yaml)."""
    if isinstance(value, dict):
        return {_resolve(k, key, item): _resolve(v, key, item) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, key, item) for v in value]
    if not isinstance(value, str):
        return value
    value = value.replace("${key}", str(key))
    if isinstance(item, dict):
        return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), value)
    return value.replace("${item}", str(item))


def _stages():
    """Every stage with its foreach items expanded: {"name@key": body}."""
    for name, stage in DVC["stages"].items():
        if "foreach" not in stage:
            yield name, stage
            continue
        items = stage["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((i, i) for i in items)
        for key, item in pairs:
            yield f"{name}@{key}", _resolve(stage["do"], key, item)


def _stage_for(nb_name):
    for name, body in _stages():
        if f"notebooks/{nb_name} " in body["cmd"] + " ":
            return name, body
    return None, None


def _lib_imports(code: str) -> set[str]:
    """lib modules a piece of code imports (`from lib import a, b`, `from lib.x import y`)."""
    used = set(re.findall(r"from lib import ([\w, ]+)", code))
    modules = {m.strip().split(" as ")[0] for group in used for m in group.split(",")}
    return modules | set(re.findall(r"from lib\.(\w+) import", code))


def _closure(modules: set[str]) -> set[str]:
    """The modules and everything they import from lib, transitively."""
    seen, todo = set(), list(modules)
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo += _lib_imports((ROOT / "lib" / f"{mod}.py").read_text())
    return seen


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stage_declares_exactly_the_lib_modules_it_imports(path):
    """Every lib module the notebook runs is a dep (else an edit would not re-run it), and no other is (else an
    edit to one paper's module would re-run another paper's stages)."""
    name, stage = _stage_for(path.name)
    assert stage, f"{path.name} is run by no stage in dvc.yaml"
    deps = set(stage["deps"])
    assert f"notebooks/{path.name}" in deps
    code = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    needed = {f"lib/{m}.py" for m in _closure(_lib_imports(code) | {"run_notebook"})}
    declared = {d for d in deps if d.startswith("lib/")}
    assert not needed - declared, f"stage {name} imports but does not declare {sorted(needed - declared)}"
    assert not declared - needed, f"stage {name} declares lib modules it never imports: {sorted(declared - needed)}"


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
