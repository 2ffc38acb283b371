"""What every notebook does at its start and end: print versions, write metrics and figures.

Metrics are small JSON files under reports/metrics/ and figures PNGs under figures/, both tracked by
git and declared to DVC with `cache: false`, so a diff of a PR shows how the numbers moved. Both go under
`config.current_output_root()`: the repository root under `dvc repro`, scratch/ when a notebook is run by hand.
"""
from __future__ import annotations

import glob
import json
import math
import platform
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lib import config


def versions() -> dict:
    """Library versions and the compute device, printed by each notebook's version cell."""
    import importlib.metadata as md

    import torch

    info = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "sentence-transformers", "scikit-learn"):
        try:
            info[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            info[pkg] = "not installed"
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({_cores()} cores)"
    return info


def write_metrics(name: str, metrics: dict, root: Path | None = None) -> Path:
    """Write reports/metrics/<name>.json (under `root`, default the output root) with rounded floats, sorted keys."""
    folder = (root or config.current_output_root()) / "reports" / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(_clean(metrics), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def save_figure(fig: Any, name: str, root: Path | None = None) -> Path:
    """Save a matplotlib figure to figures/<name>.png (under `root`, default the output root)."""
    folder = (root or config.current_output_root()) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def markdown_table(header: Sequence, rows: Iterable[Sequence]) -> list[str]:
    """A GitHub markdown table as lines (the header, its rule, one line per row; cells as str()), for the tables a
    stage writes under reports/tables/: `"\n".join(markdown_table(["method", "O"], [["SFT", "+0.10"]]))`."""
    return ["| " + " | ".join(map(str, header)) + " |", "|---" * len(header) + "|",
            *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def resumable_dir(path: str | Path, fingerprint: str) -> Path:
    """A DVC `persist: true` output directory that keeps work across a killed run.

    Only an unfinished run is resumed. If the params fingerprint recorded in it differs from `fingerprint`,
    or the earlier run finished (`mark_complete`: DVC re-runs a finished stage only because something it
    depends on changed, code included), its contents are moved aside to `<path>.stale-<time>` and the run starts
    fresh. Unfinished work set aside is never deleted; of the finished runs set aside (DVC's cache holds their
    outputs too) only the newest is kept, so repeated re-runs do not fill the disk.
    """
    path = Path(path)
    stamp = path / "FINGERPRINT"
    made_elsewise = not stamp.exists() or stamp.read_text().strip() != fingerprint
    if path.exists() and any(path.iterdir()) and (made_elsewise or (path / "COMPLETE").exists()):
        aside = path.with_name(f"{path.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        if aside.exists():  # set aside twice within a second (tests): keep both
            aside = aside.with_name(f"{aside.name}-{time.perf_counter_ns()}")
        shutil.move(str(path), aside)
        print(f"earlier run finished or its params changed: moved {path.name} aside to {aside.name}")
        set_aside = path.parent.glob(f"{glob.escape(path.name)}.stale-*")
        finished = sorted((p for p in set_aside if (p / "COMPLETE").exists()), key=lambda p: p.stat().st_mtime)
        for old in finished[:-1]:
            shutil.rmtree(old)
            print(f"removed {old.name}: an older finished run (the newest finished one set aside is kept)")
    path.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint + "\n")
    return path


def mark_complete(path: str | Path) -> None:
    """Record that the work in a `resumable_dir` finished, so a later run starts afresh instead of resuming, and
    delete its `checkpoints/` folders: they exist only to resume, and DVC would otherwise cache every one."""
    path = Path(path)
    for ckpt in sorted(p for p in path.rglob("checkpoints") if p.is_dir()):
        shutil.rmtree(ckpt)
    (path / "COMPLETE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S") + "\n")


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy scalars
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 4)
    return obj


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
