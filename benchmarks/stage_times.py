"""Wall time of the last `dvc repro`, per stage and per paper, read from the executed notebooks' papermill metadata.

    .venv/bin/python benchmarks/stage_times.py            # after `make main`

A stage's paper is the suffix of its executed notebook (`08_sft_pchat_pt` belongs to pchat); `03_classifier` is
shared (JIC's filter and eval, BIG5-CHAT's α sweep) and counted once in the total. Goal on the cpu profile, on a
2-core machine: the three papers' DAG in <= 60 min cold, and each newer paper's path (DPG, PersLLM) in <= 15 min on
its own (NEWER; their stages are budgeted separately and not counted in the three-paper total). Each stage has a budget (below) that sums to the goal; a
stage over its budget is flagged. 00_models is not a notebook: its time (the GGUF conversion, about 30 s, once) is
`make main`'s own clock and sits in the budget as a constant.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result  # after the sys.path line above

GOAL_S = 60 * 60
PAPERS = ("jic", "big5chat", "pchat")
DPG_GOAL_S = 15 * 60  # the DPG cpu path alone (issue: "<= 15 minutes on this machine")
# DPG's six stages: the 2026-12-06 quiet run (notebooks 877 s) with what is left of the 15 minutes spread over them;
# 00_models and 03_classifier, which DPG shares with the other papers, are counted in the three-paper total.
DPG_BUDGET_S = {"01_scrape_dpg": 10, "05_label_dpg": 345, "08_sft_dpg": 95, "10_hypernet_dpg": 95,
                "11_generate_dpg": 65, "12_eval_dpg": 290}
PERSLLM_GOAL_S = 15 * 60  # the PersLLM cpu path alone (issue: "<= 15 minutes on this machine")
# PersLLM's six stages: the 2026-12-06 cold, quiet run (notebooks 755 s) with what is left of the 15 minutes spread over them.
PERSLLM_BUDGET_S = {"01_scrape_persllm": 10, "05_label_persllm": 280, "08_sft_persllm": 90, "09_dpo_persllm": 250,
                    "11_generate_persllm": 230, "12_eval_persllm": 40}
NEWER = {"dpg": (DPG_GOAL_S, DPG_BUDGET_S), "persllm": (PERSLLM_GOAL_S, PERSLLM_BUDGET_S)}  # each timed on its own
SHARED = {"03_classifier": ("jic", "big5chat")}
MODELS_S = 30  # 00_models, not a notebook
# Seconds per stage (executed notebook stem) that together fit the goal: the 2026-12-02 cold run (2,909 s) plus
# 10-40 % headroom per stage.
BUDGET_S = {
    "01_scrape_jic": 20, "02_cluster_jic": 60, "03_classifier": 30, "04_filter_jic": 20,
    "06_synthesize_jic": 300, "08_sft_jic_lora": 120, "08_sft_jic_raft": 130, "11_generate_jic": 40,
    "12_eval_jic": 20,
    "01_scrape_big5chat": 20, "07_dexperts_big5chat": 960, "08_sft_big5chat": 110, "09_dpo_big5chat": 400,
    "11_generate_big5chat": 300, "12_eval_big5chat": 20,
    "01_scrape_pchat": 20, "05_label_pchat": 150, "06_synthesize_pchat": 240, "08_sft_pchat_p": 100,
    "08_sft_pchat_ppt": 110, "08_sft_pchat_pt": 120, "11_generate_pchat": 260, "12_eval_pchat": 20,
}


def paper_of(stage: str) -> tuple[str, ...]:
    """The papers a stage's time counts towards."""
    if stage in SHARED:
        return SHARED[stage]
    return tuple(p for p in PAPERS if f"_{p}" in stage)


def stage_rows(notebooks: Path) -> list[dict]:
    """One row per executed notebook: its wall time, profile, papers and budget."""
    rows = []
    for nb in sorted(notebooks.glob("*.ipynb")):
        meta = json.loads(nb.read_text())["metadata"].get("papermill", {})
        if meta.get("start_time") and meta.get("end_time"):
            start, end = (datetime.fromisoformat(meta[k]) for k in ("start_time", "end_time"))
            seconds = round((end - start).total_seconds(), 1)
            budget = BUDGET_S.get(nb.stem, DPG_BUDGET_S.get(nb.stem, PERSLLM_BUDGET_S.get(nb.stem)))
            rows.append({"stage": nb.stem, "seconds": seconds, "budget_s": budget,
                         "over_budget": budget is not None and seconds > budget, "started": meta["start_time"],
                         "profile": meta.get("parameters", {}).get("profile"), "papers": list(paper_of(nb.stem))})
    return rows


def main() -> None:
    rows = stage_rows(ROOT / "reports" / "notebooks")
    per_paper = {p: round(sum(r["seconds"] for r in rows if p in r["papers"]), 1) for p in PAPERS}
    newer = tuple(f"_{p}" for p in NEWER)
    total = round(MODELS_S + sum(r["seconds"] for r in rows if not r["stage"].endswith(newer)), 1)
    newer_totals = {p: round(sum(r["seconds"] for r in rows if r["stage"].endswith(f"_{p}")), 1) for p in NEWER}
    missing = sorted(set(BUDGET_S) - {r["stage"] for r in rows})
    for r in rows:
        flag = "  OVER" if r["over_budget"] else ""
        print(f"| {r['stage']} | {r['seconds']:.0f} | {r['budget_s']} |{flag}", file=sys.stderr)
    save_result({"stages": rows, "per_paper_s": per_paper, "models_s": MODELS_S, "total_s": total,
                 "budget_total_s": MODELS_S + sum(BUDGET_S.values()), "goal_s": GOAL_S,
                 "ratio_to_goal": round(total / GOAL_S, 3), "not_run": missing,
                 **{p: {"total_s": newer_totals[p], "goal_s": goal, "ratio_to_goal": round(newer_totals[p] / goal, 3),
                        "budget_s": budget} for p, (goal, budget) in NEWER.items()}},
                ROOT / "benchmarks" / "results" / "stage_times.json")


if __name__ == "__main__":
    main()
