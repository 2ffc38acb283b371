"""One name per thing (README: Conventions): a retired name that comes back into code, params or a notebook fails."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# retired name -> what replaced it; matched as a whole word in lib/, notebooks/, benchmarks/*.py and params/
RETIRED = {
    "n_boot": "n_resamples",
    "heldout_rows": "eval_rows",
    "test_rows": "eval_rows",
    "TEACHER_STAGES": "lib.config.teacher_sections()",
    "assessor_teacher": "lib.teacher.from_params",
    "DEFAULT_TEMPLATE": "the prompt file under params/prompts/",
}
NOTEBOOK_ONLY = {  # fine inside lib/, but a notebook must use the one entry
    r"make_teacher\(": "lib.teacher.from_params(section)",
    r"sys\.path": "config.setup (lib/ is on the path already)",
    r"def weights\(": "lib.models.active_adapter",
    r"SPEED_KEYS = ": "lib.teacher.content_params",
    r"config\.model_dir\(": "lib.models.model_path(cfg, key)",
}


def _files():
    yield from (ROOT / "lib").rglob("*.py")
    yield from (ROOT / "notebooks").glob("*.ipynb")
    yield from (ROOT / "benchmarks").glob("*.py")
    yield from (ROOT / "params").rglob("*.yaml")


@pytest.mark.parametrize("name", sorted(RETIRED))
def test_retired_names_stay_retired(name):
    pattern = re.compile(rf"\b{name}\b")
    found = [str(p.relative_to(ROOT)) for p in _files() if pattern.search(p.read_text(encoding="utf-8"))]
    assert not found, f"retired name {name!r} (now {RETIRED[name]}) is back in {found}"


@pytest.mark.parametrize("pattern", sorted(NOTEBOOK_ONLY))
def test_notebooks_use_the_one_entry(pattern):
    found = [p.name for p in (ROOT / "notebooks").glob("*.ipynb") if re.search(pattern, p.read_text(encoding="utf-8"))]
    assert not found, f"{found}: {pattern!r} — use {NOTEBOOK_ONLY[pattern]}"


def test_the_check_can_fail(tmp_path):
    """The word match the test relies on sees a retired name in notebook JSON (escaped quotes around it)."""
    text = '    "ci = mean_ci(x, n_boot=p[\\"n_boot\\"])\\n",'
    assert re.search(r"\bn_boot\b", text) and not re.search(r"\bn_boot\b", text.replace("n_boot", "n_resamples"))
