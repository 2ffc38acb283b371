"""Wall time of the last `dvc repro`, per stage and per paper, read from the executed notebooks' papermill metadata.

    .venv/bin/python benchmarks/stage_times.py            # after `make main`

A stage's paper is the suffix of its executed notebook (`08_sft_pchat_pt` belongs to pchat); `03_classifier` is
shared and counted with every paper that uses it (JIC's filter and eval, BIG5-CHAT's α sweep). Goal for the JIC path
on the cpu profile, on a 2-core machine: <= 15 min end to end. 00_models is not a notebook; its time is the GGUF
conversion (about 30 s, once) and is measured by `make main`'s own clock.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result  # after the sys.path line above

GOAL_S = 15 * 60
PAPERS = ("jic", "big5chat", "pchat")
SHARED = {"03_classifier": ("jic", "big5chat")}


def paper_of(stage: str) -> tuple[str, ...]:
    """The papers a stage's time counts towards."""
    if stage in SHARED:
        return SHARED[stage]
    return tuple(p for p in PAPERS if f"_{p}" in stage)


def main() -> None:
    rows = []
    for nb in sorted((ROOT / "reports" / "notebooks").glob("*.ipynb")):
        meta = json.loads(nb.read_text())["metadata"].get("papermill", {})
        if meta.get("start_time") and meta.get("end_time"):
            start, end = (datetime.fromisoformat(meta[k]) for k in ("start_time", "end_time"))
            rows.append({"stage": nb.stem, "seconds": round((end - start).total_seconds(), 1),
                         "profile": meta.get("parameters", {}).get("profile"), "papers": list(paper_of(nb.stem))})
    per_paper = {p: round(sum(r["seconds"] for r in rows if p in r["papers"]), 1) for p in PAPERS}
    total = round(sum(r["seconds"] for r in rows), 1)
    save_result({"stages": rows, "per_paper_s": per_paper, "notebooks_total_s": total, "jic_goal_s": GOAL_S,
                 "jic_ratio_to_goal": round(per_paper["jic"] / GOAL_S, 2)},
                ROOT / "benchmarks" / "results" / "stage_times.json")


if __name__ == "__main__":
    main()
