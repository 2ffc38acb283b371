"""A copy of this checkout as a fresh clone would have it, for the tests that run `dvc repro` in a temporary folder."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def working_tree_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (work in progress counts; build outputs do not)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def copy_checkout(base: Path) -> Path:
    """base/repo: the working tree's files in a new git repository, with ../shared (the data mirror) beside it."""
    repo = base / "repo"
    for rel in working_tree_files():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, repo / rel)
    (base / "shared").symlink_to((ROOT.parent / "shared").resolve())
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo
