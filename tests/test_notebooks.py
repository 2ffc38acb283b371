"""Notebook hygiene: sources are stripped, follow the skeleton, and every stage declares what it imports."""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib import config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _cells(path):
    return json.loads(path.read_text())["cells"]


def test_notebooks_and_lib_pass_the_linter():
    """ruff over notebooks/ as well as the code: an undefined or unused name in a notebook fails here, not mid-DAG."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "notebooks", "lib", "tests",
                           "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stripped_and_named(path):
    # NN_stage_<paper>.ipynb, or NN_stage.ipynb for a stage every paper shares
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


LIB = ROOT / "lib"
PAPERS = sorted(p.name for p in LIB.iterdir() if (p / "__init__.py").is_file())  # lib/<paper>/ packages
SHARED = {"00_models", "03_classifier"}  # the only stages (and notebooks) without a paper suffix


def _module_file(mod: str) -> Path:
    """lib/config.py for "config", lib/jic/__init__.py for "jic", lib/jic/cluster.py for "jic.cluster"."""
    path = LIB.joinpath(*mod.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _lib_imports(code: str) -> set[str]:
    """lib modules a piece of code imports (`from lib import a, b`, `from lib.x import y`, `from lib.x import (...)`),
    as dotted names below lib; a name imported from a package is a module when the package has a file of that name."""
    found = set()
    for m in re.finditer(r"from lib((?:\.\w+)*) import (?:\(([^)]*)\)|([\w, ]+))", code):
        base = m.group(1).lstrip(".")
        if base:
            found.add(base)
        for name in (m.group(2) or m.group(3)).replace("\n", " ").split(","):
            sub = ".".join(filter(None, (base, name.strip().split(" as ")[0])))
            if name.strip() and _module_file(sub).is_file():
                found.add(sub)
    return found


def _closure(modules: set[str]) -> set[str]:
    """The modules, the packages they sit in, and everything they import from lib, transitively."""
    seen, todo = set(), list(modules)
    while todo:
        parts = todo.pop().split(".")
        for i in range(1, len(parts) + 1):  # importing lib.jic.cluster runs lib/jic/__init__.py first
            mod = ".".join(parts[:i])
            if mod not in seen:
                seen.add(mod)
                todo += _lib_imports(_module_file(mod).read_text())
    return seen


def _code_deps(modules: set[str]) -> set[str]:
    """What a stage running `modules` declares: lib/<paper> for a paper's package, lib/<name>.py for a shared one."""
    return {f"lib/{m.split('.')[0]}" if _module_file(m).parent != LIB else f"lib/{m}.py" for m in _closure(modules)}


def _package_files(modules: set[str]) -> dict[str, set[str]]:
    """Per paper package the stage runs, the files of it that run: lib/<paper>/__init__.py and each module imported."""
    out: dict[str, set[str]] = {}
    for m in _closure(modules):
        path = _module_file(m)
        if path.parent != LIB:
            out.setdefault(f"lib/{m.split('.')[0]}", set()).add(str(path.relative_to(ROOT)))
    return out


def test_import_graph_reader_sees_every_kind_of_import():
    code = "from lib import config, report\nfrom lib.jic import cluster, journals_by_author\n" \
           "from lib.pchat.seq2seq import (\n    chat_to_seq2seq,\n)\nfrom lib.traits import TRAITS\n"
    assert _lib_imports(code) == {"config", "report", "jic", "jic.cluster", "pchat.seq2seq", "traits"}
    deps = _code_deps({"pchat.seq2seq"})
    assert {"lib/pchat", "lib/train.py", "lib/models.py"} <= deps and not any(d.endswith("/seq2seq.py") for d in deps)


def test_shared_modules_import_no_paper_and_papers_import_no_other_paper():
    for path in LIB.rglob("*.py"):
        rel = path.relative_to(LIB)
        own = rel.parts[0] if len(rel.parts) > 1 else None
        for mod in _lib_imports(path.read_text()):
            top = mod.split(".")[0]
            if top in PAPERS:
                assert own == top, f"lib/{rel} imports lib.{mod}: shared code and other papers stay out of a paper"


def test_no_import_of_another_module_private_names():
    for path in list(LIB.rglob("*.py")) + sorted((ROOT / "notebooks").glob("*.ipynb")):
        for names in re.findall(r"from lib[.\w]* import \(?([^)\n]*)", path.read_text()):
            private = [n.strip() for n in names.split(",") if n.strip().startswith("_")]
            assert not private, f"{path.relative_to(ROOT)} imports private names {private}"


def test_stage_and_notebook_names_say_which_paper():
    for name, body in _stages():
        stage = name.split("@")[0]
        if stage in SHARED:
            continue
        paper = stage.rsplit("_", 1)[-1]
        assert paper in PAPERS, f"stage {name}: a paper's stage ends in _<paper> ({PAPERS}), or is one of {SHARED}"
        assert f"notebooks/{stage}.ipynb" in body["cmd"], f"stage {name} runs a notebook of another name"
    for path in NOTEBOOKS:
        assert path.stem in SHARED or path.stem.rsplit("_", 1)[-1] in PAPERS, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stage_declares_exactly_the_lib_modules_it_imports(path):
    """Every lib module the notebook runs is a dep (else an edit would not re-run it), and no other is (else an
    edit to one paper's module would re-run another paper's stages). A paper's package is one directory dep, or
    exactly the files of it that the stage runs (07_dexperts_big5chat: a day-long stage on the paper profile that an
    edit to BIG5-CHAT's reasoning or released-data modules must not re-run)."""
    name, stage = _stage_for(path.name)
    assert stage, f"{path.name} is run by no stage in dvc.yaml"
    deps = set(stage["deps"])
    assert f"notebooks/{path.name}" in deps
    code = "\n".join("".join(c["source"]) for c in _cells(path) if c["cell_type"] == "code")
    modules = _lib_imports(code) | {"run_notebook"}
    needed = _code_deps(modules)
    declared = {d for d in deps if d.startswith("lib/")}
    for package, files in _package_files(modules).items():
        if package not in declared and declared & files:  # declared file by file: exactly the files it runs
            needed = (needed - {package}) | files
    assert not needed - declared, f"stage {name} imports but does not declare {sorted(needed - declared)}"
    assert not declared - needed, f"stage {name} declares lib modules it never imports: {sorted(declared - needed)}"


def test_models_stage_declares_exactly_what_it_runs():
    declared = {d for d in DVC["stages"]["00_models"]["deps"] if d.startswith("lib/")}
    assert declared == _code_deps({"prepare"})


def test_models_stage_tracks_exactly_the_params_that_decide_its_models():
    """00_models re-runs when a model key changes, and only then: its params are the schema's model and teacher keys
    (lib.config.model_keys). A new model key in the schema without a line here fails."""
    (listed,) = [entry["params/${profile}.yaml"] for entry in DVC["stages"]["00_models"]["params"]
                 if isinstance(entry, dict)]
    keys = config.model_keys()
    uncovered = [k for k in keys if not any(k == e or k.startswith(e + ".") for e in listed)]
    idle = [e for e in listed if not any(k == e or k.startswith(e + ".") for k in keys)]
    assert not uncovered, f"dvc.yaml's 00_models does not track {uncovered}"
    assert not idle, f"dvc.yaml's 00_models tracks keys that decide no model: {idle}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lab_safe(path):
    """Opened in JupyterLab, a notebook takes the profile from params.yaml and writes under scratch/: its parameters
    default to profile = None and outputs = "scratch", its setup sets the output root, and no cell writes under the
    repository root directly (reads do: the pipeline's outputs are a notebook's inputs)."""
    cells = _cells(path)
    params = next("".join(c["source"]) for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    assert re.search(r"^profile = None\b", params, re.MULTILINE) and re.search(r'^outputs = "scratch"', params, re.MULTILINE)
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    assert "profile, OUT = config.setup(profile, outputs)" in code
    assert "sys.path" not in code, "lib/ is on the path already (lib.run_notebook, make setup): no sys.path edits"
    writes = re.findall(r'(?m)^\s*(?:out_dir|experts_root) = (?:report\.resumable_dir\()?ROOT\b|\(ROOT / "(?:reports|figures)"', code)
    assert not writes, f"{path.name} writes under ROOT: {writes}"


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
