"""Wall time of the last `dvc repro`, per stage, read from the executed notebooks' papermill metadata.

    .venv/bin/python benchmarks/stage_times.py            # after `make main`

Goal for the JIC path on the cpu profile, on a 2-core machine: <= 15 min end to end. 00_models is not a
notebook; its time is the GGUF conversion (about 30 s, once) and is measured by `make main`'s own clock.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 15 * 60


def main() -> None:
    rows = []
    for nb in sorted((ROOT / "reports" / "notebooks").glob("*.ipynb")):
        meta = json.loads(nb.read_text())["metadata"].get("papermill", {})
        if meta.get("start_time") and meta.get("end_time"):
            start, end = (datetime.fromisoformat(meta[k]) for k in ("start_time", "end_time"))
            rows.append({"stage": nb.stem, "seconds": round((end - start).total_seconds(), 1),
                         "profile": meta.get("parameters", {}).get("profile")})
    total = sum(r["seconds"] for r in rows)
    result = {"stages": rows, "notebooks_total_s": round(total, 1), "goal_s": GOAL_S,
              "ratio_to_goal": round(total / GOAL_S, 2)}
    out = ROOT / "benchmarks" / "results" / "stage_times.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['stage']:<28} {r['seconds']:>8.1f} s")
    print(f"{'total':<28} {total:>8.1f} s  ({total / GOAL_S:.2f} of the 15-min goal)")


if __name__ == "__main__":
    main()
