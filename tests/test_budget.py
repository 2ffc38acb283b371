"""benchmarks/budget.py: the paper profile's workstation budget is current, covers every stage, scales with its sizes.

No model is loaded: the estimator reads params/paper.yaml, dvc.yaml and the data mirror (a few seconds of CPU).
"""
import copy

import pytest

from benchmarks import budget
from lib import config


@pytest.fixture(scope="module")
def cfg() -> dict:
    return config.load("paper", check_files=False)


@pytest.fixture(scope="module")
def facts(cfg) -> dict:
    return budget.mirror_facts(cfg)


@pytest.fixture(scope="module")
def result(cfg, facts) -> dict:
    return budget.budget(cfg, facts)


def changed(cfg: dict, keys: str, value) -> dict:
    """A copy of the params with one dotted key set."""
    out = copy.deepcopy(cfg)
    *path, last = keys.split(".")
    node = out
    for k in path:
        node = node[k]
    node[last] = value
    return out


def part(row: dict, starts: str) -> dict:
    (found,) = [p for p in row["parts"] if p["what"].startswith(starts)]
    return found


def test_committed_budget_is_current():
    assert budget.main(["--check"]) == 0, "benchmarks/BUDGET.md is stale: run python benchmarks/budget.py"


def test_check_fails_on_a_stale_table(tmp_path, monkeypatch):
    stale = tmp_path / "BUDGET.md"
    stale.write_text(budget.OUT_MD.read_text().replace("| 09_dpo_big5chat |", "| 09_dpo_big5chat (old) |"))
    monkeypatch.setattr(budget, "OUT_MD", stale)
    assert budget.main(["--check"]) == 1


def test_check_fails_on_a_stale_readme_table_and_names_missing_markers(tmp_path, monkeypatch, result):
    readme = tmp_path / "README.md"
    text = budget.README.read_text()
    readme.write_text(text.replace("| big5chat | ", "| big5chat (old) | ", 1))
    monkeypatch.setattr(budget, "README", readme)
    assert budget.main(["--check"]) == 1
    assert budget.with_readme_table(readme.read_text(), result) == text  # rewritten between the markers only
    with pytest.raises(ValueError, match="needs the budget markers once each"):
        budget.with_readme_table(text.replace(budget.MARKERS[1], ""), result)


def test_every_dvc_stage_has_a_row(result):
    stages = budget.dvc_stages()
    assert {"08_sft_jic@lora", "08_sft_jic@raft", "08_sft_pchat@ppt", "12_reasoning_big5chat"} <= set(stages)
    assert [r["stage"] for r in result["stages"]] == list(stages)
    table = budget.OUT_MD.read_text()
    for name in stages:
        assert f"| {name} |" in table, f"{name} has no row in BUDGET.md"


def test_a_stage_without_an_estimator_is_an_error(cfg, facts, tmp_path):
    dvc = tmp_path / "dvc.yaml"
    dvc.write_text("stages:\n  13_new_jic:\n    cmd: echo\n    deps: [models/base]\n")
    with pytest.raises(KeyError, match="13_new_jic"):
        budget.budget(cfg, facts, dvc)


def test_shared_stages_count_for_the_papers_that_read_them(result):
    papers = {r["stage"]: r["papers"] for r in result["stages"]}
    assert papers["00_models"] == list(budget.PAPERS)
    assert papers["03_classifier"] == ["jic", "big5chat", "dpg"]  # 04/12 JIC, 07/12 BIG5-CHAT, 12 DPG
    assert papers["08_sft_pchat@pt"] == ["pchat"]


def test_totals_are_the_sums_of_the_rows(result):
    for paper in budget.PAPERS:
        rows = [r for r in result["stages"] if paper in r["papers"]]
        t = result["per_paper"][paper]
        assert t["stages"] == len(rows)
        for where in ("gpu", "endpoint", "cpu", "network"):
            assert t["hours"][where] == pytest.approx(sum(r["hours"][where] for r in rows), abs=0.01)
        assert t["disk_gb"] == pytest.approx(sum(r["disk_gb"] for r in rows), abs=0.01)
        assert t["peak_gpu_gb"] == max(r["gpu_gb"] for r in rows)
        assert t["tokens"] == sum(r["tokens"] for r in rows)
        assert t["teacher"]["requests"] == sum(r["teacher"]["requests"] for r in rows if r["teacher"])
    everything = result["all"]
    assert everything["stages"] == len(result["stages"])  # shared stages once
    assert everything["hours"]["gpu"] == pytest.approx(sum(r["hours"]["gpu"] for r in result["stages"]), abs=0.01)
    for row in result["stages"]:
        assert row["hours"]["gpu"] == pytest.approx(sum(p["seconds"] for p in row["parts"]
                                                        if p["where"] == "gpu") / 3600, abs=1e-3)


def test_stated_paper_scale_counts(cfg, facts):
    """The issue's figures, recomputed from the params and the mirror rather than copied."""
    from lib.big5chat import data as big5data

    scenarios = big5data.load_soda(config.data_path(cfg, "soda/soda_20.jsonl"))
    assert len(big5data.reply_units(scenarios)) / len(scenarios) == pytest.approx(3.15)  # 63 agent turns in 20
    replies = cfg["scrape"]["big5chat"]["max_scenarios"] * facts["units_per_scenario"] * 2 * len(
        cfg["dexperts"]["traits"])  # every agent turn (max_units_per_scenario null): 10,000 x 3.15 x 10 = 315,000
    assert f"{replies:,.0f} replies" in budget.est_dexperts(cfg, facts)["work"]
    g = cfg["generate"]["big5chat"]["generation"]
    assert facts["items"] == {"bfi44": 44, "ipip120": 120}
    requests = 41 * sum(facts["items"][n] for n in g["instruments"]) * g["n_runs"]  # 41 x 164 x 5 = 33,620
    assert f"= {requests:,} x <= {g['max_new_tokens']} new tok" in budget.est_generate_big5chat(cfg, facts)["work"]
    s, n = cfg["scrape"]["persllm"], cfg["generate"]["persllm"]["n_samples"]
    per_input = n + len(s["stages"]) - 1 + len(s["characters"]) - 1  # own samples, other stage, other characters
    assert facts["persllm_requests_per_model"] == facts["persllm_test_inputs"] * per_input  # ~11,900 per model
    a = cfg["hypernet"]["dpg"]["args"]
    work = budget.est_hypernet_dpg(cfg, facts)["work"]
    assert f"{a['max_steps']:,} steps" in work and f"{a['max_steps'] // a['save_steps']} saves (2 kept)" in work


def index_of(row: dict, what: str) -> int:
    """Position of the part whose description starts with `what` (or that runs at `what`: endpoint)."""
    (i,) = [i for i, p in enumerate(row["parts"]) if p["what"].startswith(what) or p["where"] == what]
    return i


@pytest.mark.parametrize("stage, key, what", [
    ("07_dexperts_big5chat", "scrape.big5chat.max_scenarios", "DExperts"),
    ("09_dpo_big5chat", "dpo.big5chat.args.num_train_epochs", "DPO"),
    ("10_hypernet_dpg", "hypernet.dpg.args.max_steps", "hypernetwork"),
    ("08_sft_jic@lora", "filter.jic.n_pairs", "lora"),
    ("06_synthesize_jic", "filter.jic.n_pairs", "endpoint"),
    ("11_generate_persllm", "generate.persllm.max_new_tokens", "sft"),
])
def test_doubling_a_size_doubles_its_work(cfg, facts, stage, key, what):
    node = cfg
    for k in key.split("."):
        node = node[k]
    base = budget.ESTIMATORS[stage](cfg, facts)
    twice = budget.ESTIMATORS[stage](changed(cfg, key, 2 * node), facts)
    i = index_of(base, what)
    before, after = base["parts"][i], twice["parts"][i]
    assert after["seconds"] == pytest.approx(2 * before["seconds"], rel=0.02)
    if what != "sft":  # generation: prompts stay, new tokens double
        assert after["tokens"] == pytest.approx(2 * before["tokens"], rel=1e-3)
    assert budget.finish(stage, twice, [])["hours"][after["where"]] > budget.finish(stage, base, [])["hours"][
        before["where"]]


def test_dpo_max_steps_overrides_epochs(cfg, facts):
    one = budget.est_dpo_big5chat(changed(cfg, "dpo.big5chat.args.max_steps", 1000), facts)
    two = budget.est_dpo_big5chat(changed(cfg, "dpo.big5chat.args.max_steps", 2000), facts)
    assert 2 * part(one, "DPO: 1,000 steps")["seconds"] == pytest.approx(part(two, "DPO: 2,000 steps")["seconds"],
                                                                          abs=0.2)


def test_memory_and_disk_follow_the_params(cfg, facts, result):
    assert budget.lora_params(8, ["q_proj", "k_proj", "v_proj", "o_proj"]) == 8 * (8192 + 5120 + 5120 + 8192) * 32
    r = cfg["sft"]["big5chat"]["lora"]["r"]
    lora = budget.est_sft_big5chat(cfg, facts)
    wide = budget.est_sft_big5chat(changed(cfg, "sft.big5chat.lora.r", 2 * r), facts)
    assert wide["disk_gb"] == pytest.approx(2 * lora["disk_gb"], rel=0.01)  # the adapter is linear in r
    nf4 = budget.est_sft_jic("lora")(changed(cfg, "sft.jic.load_in_4bit", True), facts)
    bf16 = budget.est_sft_jic("lora")(changed(cfg, "sft.jic.load_in_4bit", False), facts)
    assert bf16["gpu_gb"] - nf4["gpu_gb"] == pytest.approx(budget.W16_GB - budget.NF4_GB, abs=0.2)
    for row in result["stages"]:  # HF stages fit one 80 GB H100; a local vLLM server reserves its share on top
        reserved = budget.K["vllm_gpu_share"] * 80 if (row["rate"] or "").startswith("vllm") else 0
        assert row["gpu_gb"] - reserved <= 80, f"{row['stage']} does not fit one 80 GB H100"
    teacher_only = budget.est_synthesize_pchat(cfg, facts)
    assert teacher_only["gpu_gb"] == 0 and teacher_only["teacher"]["requests"] > 0
