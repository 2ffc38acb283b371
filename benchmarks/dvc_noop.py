"""A no-op `dvc repro` must be quick, and editing one 12_eval param must make 12_eval alone stale.

Run after the main job (`make main`), in the repository:

    .venv/bin/python benchmarks/dvc_noop.py

(a) times `dvc repro` with nothing to do (goal <= 5 s; reported as a ratio to the goal);
(b) edits `eval.jic.bertscore_layers` in the active profile, asks `dvc status` what is stale (goal: only
    12_eval_jic), and restores the file. tests/test_pipeline.py makes the same check on the tiny profile and
    re-runs the stage to show nothing else runs.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 5.0


def dvc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ROOT, capture_output=True, text=True, check=True)


def main() -> None:
    profile = re.search(r"(?m)^profile: (\w+)", (ROOT / "params.yaml").read_text()).group(1)
    stale = json.loads(dvc("status", "--json").stdout)
    if stale:
        sys.exit(f"the pipeline is not up to date ({sorted(stale)}): run `make main` first")
    t0 = time.perf_counter()
    out = dvc("repro").stdout
    noop_s = time.perf_counter() - t0
    assert "Running stage" not in out, out

    params = ROOT / "params" / f"{profile}.yaml"
    original = params.read_text()
    edited = re.sub(r"(?m)^(    bertscore_layers: )(\d+)", lambda m: f"{m.group(1)}{int(m.group(2)) + 1}", original)
    try:
        params.write_text(edited)
        stale_after_edit = sorted(json.loads(dvc("status", "--json").stdout))
    finally:
        params.write_text(original)

    result = {"profile": profile, "noop_repro_s": round(noop_s, 2), "goal_s": GOAL_S,
              "ratio_to_goal": round(noop_s / GOAL_S, 2), "stale_after_editing_eval_param": stale_after_edit,
              "only_12_eval_stale": stale_after_edit == ["12_eval_jic"]}
    out_path = ROOT / "benchmarks" / "results" / "dvc_noop.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
