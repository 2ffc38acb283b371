"""The whole DAG on the `tiny` profile through `dvc repro`, in a temporary copy of the repository.

The teacher is tests/fake_teacher.py behind a real HTTP endpoint, so the OpenAI-compatible backend, the
API-key handling and the record-by-record resumption are exercised exactly as a workstation runs them.
These tests take a few minutes: they are the proof that a fresh clone's pipeline runs.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests import outputs
from tests.checkout import copy_checkout
from tests.fake_teacher import FakeTeacherServer, scripted_dialogue_reply

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-test-" + "9f3c1a7e5b2d4c6e8a0b"  # must never be written anywhere by the pipeline
pytestmark = pytest.mark.e2e


def _env(tmp_repo: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["TEACHER_API_KEY"] = SECRET
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def _dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=_env(repo), capture_output=True,
                          text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _with_params(path: Path, changes: dict) -> str:
    """The text of a params file with `changes` ({"dotted.key": value}) made; every key must exist."""
    cfg = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        if last not in node:
            raise KeyError(f"{dotted} is not in {path.name}")
        node[last] = value
    return yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True, width=120)


@pytest.fixture(scope="module")
def teacher():
    with FakeTeacherServer(scripted_dialogue_reply, required_key=SECRET) as server:
        yield server


def _tiny_copy(tmp_path_factory, teacher) -> Path:
    """A copy of the working tree (what a fresh clone has), ../shared beside it, the tiny profile switched on."""
    repo = copy_checkout(tmp_path_factory.mktemp("clone"))
    (repo / "params.yaml").write_text(re.sub(r"(?m)^profile: \w+", "profile: tiny", (repo / "params.yaml").read_text()))
    tiny = repo / "params" / "tiny.yaml"
    tiny.write_text(tiny.read_text().replace("http://127.0.0.1:8765/v1", teacher.base_url))
    return repo


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, teacher):
    return _tiny_copy(tmp_path_factory, teacher)


@pytest.fixture(scope="module")
def tiny_run(tiny_repo):
    t0 = time.perf_counter()
    proc = _dvc(tiny_repo, "repro")
    return tiny_repo, proc, time.perf_counter() - t0


@pytest.fixture(scope="module")
def tiny_manifest(tiny_run):
    """The first run's outputs, taken before any later test edits or re-runs a stage."""
    return outputs.manifest(tiny_run[0])


def test_tiny_dag_runs_end_to_end(tiny_run, teacher):
    repo, proc, seconds = tiny_run
    ran = re.findall(r"Running stage '([^']+)'", proc.stdout)
    assert set(ran) == {"00_models", "01_scrape_jic", "02_cluster_jic", "03_classifier", "04_filter_jic",
                        "06_synthesize_jic", "08_sft_jic@lora", "08_sft_jic@raft", "11_generate_jic", "12_eval_jic",
                        "01_scrape_big5chat", "07_dexperts_big5chat", "08_sft_big5chat", "09_dpo_big5chat",
                        "11_generate_big5chat", "12_eval_big5chat", "12_reasoning_big5chat", "01_scrape_pchat",
                        "05_label_pchat",
                        "06_synthesize_pchat", "08_sft_pchat@p", "08_sft_pchat@pt", "08_sft_pchat@ppt",
                        "11_generate_pchat", "12_eval_pchat", "01_scrape_dpg", "05_label_dpg", "08_sft_dpg",
                        "10_hypernet_dpg", "11_generate_dpg", "12_eval_dpg", "01_scrape_persllm",
                        "05_label_persllm", "08_sft_persllm", "09_dpo_persllm", "11_generate_persllm",
                        "12_eval_persllm"}
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}  # nothing left stale
    gen = json.loads((repo / "reports/metrics/11_generate_dpg.json").read_text())
    assert gen["new_units"] == 2 and gen["units"] == gen["character_units"] + 2 and gen["character_units"] > 0
    dpg_eval = json.loads((repo / "reports/metrics/12_eval_dpg.json").read_text())
    assert set(dpg_eval["psdc"]) == {"base", "prompt", "lora_sft", "dpg"}
    assert all(set(v) == {"character", "new"} for v in dpg_eval["psdc"].values())
    label = json.loads((repo / "reports/metrics/05_label_persllm.json").read_text())
    assert label["inputs_accepted"] > 0 and label["answers_accepted"] > 0 and label["test_items"] > 0
    dpo = json.loads((repo / "reports/metrics/09_dpo_persllm.json").read_text())
    assert dpo["pairs_by_kind"]["train"]["character"] > 0 and dpo["pairs_by_kind"]["train"]["stage"] > 0
    pers = json.loads((repo / "reports/metrics/12_eval_persllm.json").read_text())
    assert set(pers["distinction"]) == {"base", "sft", "dpo"}
    assert all(set(v) == {"intra", "stage", "inter"} for v in pers["distinction"].values())
    synth = json.loads((repo / "reports/metrics/06_synthesize_jic.json").read_text())
    assert synth["dialogues"] == synth["pairs"] > 0 and synth["acceptance_rate"] == 1.0
    assert teacher.auth_headers and set(teacher.auth_headers) == {f"Bearer {SECRET}"}
    ev = json.loads((repo / "reports/metrics/12_eval_jic.json").read_text())
    assert set(ev["overlap"]) == {"base", "lora", "raft"}
    assert set(ev["trait_capture"]) == {"base", "lora", "raft", "reference (teacher)"}
    for name in ("02_cluster_jic", "03_classifier", "04_filter_jic", "12_eval_jic"):
        assert (repo / "figures" / f"{name}.png").stat().st_size > 1000
    assert (repo / "reports/tables/12_eval_jic.md").read_text().startswith("# 12_eval · jic (tiny profile)")
    print(f"tiny DAG: {seconds:.0f} s")


def test_two_runs_from_scratch_are_byte_identical(tiny_manifest, tmp_path_factory, teacher):
    """Same seed, same inputs: every data, model, metrics, table and figure file of a second `dvc repro` from scratch,
    in another folder, equals the first's byte for byte. Excepted (tests/outputs.py, VOLATILE and TIMING_KEYS): the
    executed notebooks, completion stamps, the teacher cache and trainer state, which record when or how fast
    something ran, and the timing keys inside metrics files."""
    assert len(tiny_manifest) > 100 and any(p.startswith("models/sft/") for p in tiny_manifest)
    again = _tiny_copy(tmp_path_factory, teacher)
    _dvc(again, "repro")
    assert outputs.differences(tiny_manifest, outputs.manifest(again)) == []


def test_a_notebook_run_by_hand_leaves_the_pipeline_as_it_was(tiny_run, tiny_manifest, monkeypatch):
    """As in JupyterLab (`make lab`, which puts the checkout on PYTHONPATH): executed from notebooks/ with no
    parameters injected. It reads the profile from params.yaml (tiny here), writes under scratch/, and leaves every
    DVC output untouched and `dvc status` clean."""
    import papermill as pm

    repo, _, _ = tiny_run
    monkeypatch.setenv("PYTHONPATH", str(repo))
    stage = "02_cluster_jic"
    (repo / "scratch").mkdir(exist_ok=True)  # where the executed copy goes: anywhere but reports/notebooks/
    pm.execute_notebook(str(repo / "notebooks" / f"{stage}.ipynb"), str(repo / "scratch" / f"{stage}.ipynb"),
                        kernel_name="python3", cwd=str(repo / "notebooks"), progress_bar=False)
    # Same profile (tiny, from params.yaml), same inputs: the same metrics, data and figure (its title names the
    # profile), but under scratch/.
    for rel in (f"reports/metrics/{stage}.json", f"figures/{stage}.png", "data/jic/02_cluster/entries.jsonl"):
        assert (repo / "scratch" / rel).read_bytes() == (repo / rel).read_bytes(), rel
    assert json.loads(_dvc(repo, "status", "--json").stdout) == {}
    now = outputs.manifest(repo)
    assert {p: d for p, d in now.items() if "02_cluster" in p} == {p: d for p, d in tiny_manifest.items()
                                                                     if "02_cluster" in p}


def test_tiny_big5chat_path(tiny_run):
    repo, _, _ = tiny_run
    dex = json.loads((repo / "reports/metrics/07_dexperts_big5chat.json").read_text())
    assert len(dex["experts"]) == 10 and dex["replies"] == dex["units"] * 10
    assert all((repo / "models/dexperts" / name / "adapter" / "adapter_config.json").is_file() for name in dex["experts"])
    answers = (repo / "data/big5chat/11_generate/answers_loglik.jsonl").read_text().splitlines()
    assert len(answers) == 41 * (44 + 120)  # base + 4 methods x 10 personas, BFI-44 + IPIP-NEO-120
    ev = json.loads((repo / "reports/metrics/12_eval_big5chat.json").read_text())
    assert set(ev["gaps"]["loglik/ipip120"]) == {"base", "instruct", "demo", "sft", "dpo"}
    assert all(v == 0 for v in ev["gaps"]["loglik/ipip120"]["base"].values())  # the base is never induced
    for name in ("07_dexperts_big5chat", "12_eval_big5chat", "12_eval_big5chat_replies", "12_reasoning_big5chat"):
        assert (repo / "figures" / f"{name}.png").stat().st_size > 1000
    # the released-data path: 08/09 trained on BIG5-CHAT's own replies, the held-out scenarios never among them
    sft = json.loads((repo / "reports/metrics/08_sft_big5chat.json").read_text())
    dpo = json.loads((repo / "reports/metrics/09_dpo_big5chat.json").read_text())
    assert sft["source"] == dpo["source"] == "released" and sft["train_rows"] == 20  # 2 per trait x level
    assert dpo["train_pairs"] == 20 and dpo["pair_stats"]["train"]["groups_used"] == 10
    scrape = json.loads((repo / "reports/metrics/01_scrape_big5chat.json").read_text())["released"]
    assert scrape["prompted_found"] == 200 and scrape["by_split"]["scenario"] >= 200
    replies = ev["replies"]
    assert replies["scenarios"] == 10 and replies["replies"] == 10 * 9  # base once, 4 methods x 2 levels
    assert all(0.85 < v["mean"] <= 1 for v in replies["judge_heldout_accuracy"].values())  # the real replies' judge
    assert {r["trained"] for r in replies["training_vs_prompting"]} == {"sft", "dpo"}
    # reasoning: a real lm_eval run per model x persona on 2 items of each task
    rsn = json.loads((repo / "reports/metrics/12_reasoning_big5chat.json").read_text())
    assert rsn["conditions"] == 1 + 3 * 2 * 2  # base; prompt, sft, dpo x traits O, E x two levels
    assert set(rsn["items_per_task"]) == {"gsm8k", "mathqa", "truthfulqa_mc1", "truthfulqa_mc2", "commonsense_qa",
                                          "piqa", "social_iqa", "mmlu"}
    assert all(n == 2 for n in rsn["items_per_task"].values())
    assert {k.split("/")[0] for k in rsn["high_minus_low"]} == {"prompt", "sft", "dpo"}


def test_tiny_pchat_path(tiny_run):
    repo, _, _ = tiny_run
    metrics = {name: json.loads((repo / "reports/metrics" / f"{name}.json").read_text())
               for name in ("01_scrape_pchat", "05_label_pchat", "06_synthesize_pchat", "11_generate_pchat",
                            "12_eval_pchat")}
    assert metrics["05_label_pchat"]["acceptance_rate"] == 1.0  # the fake teacher labels validly
    assert metrics["05_label_pchat"]["label_counts"]["C"]["high"] == metrics["05_label_pchat"]["personas"]
    synth = metrics["06_synthesize_pchat"]
    assert synth["dialogues"] == synth["pairs"] == metrics["01_scrape_pchat"]["train_dialogues"] + \
        metrics["01_scrape_pchat"]["test_dialogues"]
    for recipe in ("p", "pt", "ppt"):
        sft = json.loads((repo / "reports/metrics" / f"08_sft_pchat_{recipe}.json").read_text())
        assert sft["steps"] == 2 and (repo / "models/sft" / f"pchat_{recipe}" / "adapter" / "adapter_config.json").is_file()
    generations = [json.loads(line) for line in (repo / "data/pchat/11_generate/generations.jsonl").read_text().splitlines()]
    assert {g["model"] for g in generations} == {"base", "P", "PT", "P+PT"}
    assert {g["test_set"] for g in generations} == {"P", "PT", "human"}
    # PT and P+PT x 2 contexts x 5 traits x 2 levels x 2 sampling seeds
    assert metrics["11_generate_pchat"]["probe_replies"] == 2 * 2 * 10 * 2
    ev = metrics["12_eval_pchat"]
    assert set(ev["datasets"]) == {"P", "PT", "human"} and ev["datasets"]["P"]["dialogues"] == synth["pairs"]
    assert set(ev["responses"]) == {f"{m}/{t}" for m in ("base", "P", "PT", "P+PT") for t in ("P", "PT", "human")}
    assert (repo / "figures/12_eval_pchat.png").stat().st_size > 1000
    assert (repo / "reports/tables/12_eval_pchat.md").read_text().startswith("# 12_eval · pchat (tiny profile)")


def test_api_key_never_written(tiny_run):
    repo, proc, _ = tiny_run
    assert SECRET not in proc.stdout + proc.stderr
    leaks = []
    for path in repo.rglob("*"):
        readable = path.is_file() and ".git" not in path.parts and path.stat().st_size < 50_000_000
        if readable and SECRET.encode() in path.read_bytes():
            leaks.append(str(path.relative_to(repo)))
    assert leaks == []


def test_editing_one_eval_param_reruns_eval_alone(tiny_run):
    repo, _, _ = tiny_run
    tiny = repo / "params" / "tiny.yaml"
    original = tiny.read_text()
    tiny.write_text(_with_params(tiny, {"eval.jic.bertscore_layers": 5}))
    try:
        status = _dvc(repo, "status", "--json").stdout
        assert set(json.loads(status)) == {"12_eval_jic"}
        ran = re.findall(r"Running stage '([^']+)'", _dvc(repo, "repro").stdout)
        assert ran == ["12_eval_jic"]
    finally:
        tiny.write_text(original)
        _dvc(repo, "repro")


def test_sigkill_mid_synthesis_then_rerun_keeps_every_record_once(tiny_run, teacher):
    repo, _, _ = tiny_run
    out = repo / "data/jic/06_synthesize/dialogues.jsonl"
    pairs = [json.loads(line) for line in (repo / "data/jic/04_filter/pairs.jsonl").read_text().splitlines()]
    tiny = repo / "params" / "tiny.yaml"
    original = tiny.read_text()
    # A new prompt wording (so nothing is cached) served slowly, one pair per batch.
    (repo / "params/prompts/jic_system.txt").write_text("You write short, casual conversations.\n")
    tiny.write_text(_with_params(tiny, {"synthesize.jic.batch_size": 1}))
    teacher.delay_s = 1.0
    try:
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "06_synthesize_jic"], cwd=repo,
                                env=_env(repo), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            lines = out.read_text().splitlines() if out.exists() else []
            if 1 <= len(lines) < len(pairs):
                break
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = out.read_text().splitlines()
        assert 1 <= len(partial) < len(pairs), "the kill did not land mid-run"
        teacher.delay_s = 0.0
        _dvc(repo, "repro", "06_synthesize_jic")
        ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
        assert sorted(ids) == sorted(p["id"] for p in pairs)  # every pair exactly once
        assert len(ids) == len(set(ids))
    finally:
        teacher.delay_s = 0.0
        tiny.write_text(original)


def test_a_failed_sweep_keeps_the_experts_and_replies_of_07(tiny_run):
    """07_dexperts fails after generating (the sweep's judge cannot be read); the rerun trains no expert again and
    regenerates no reply: both were kept (persist) and only a finished run starts afresh."""
    repo, _, _ = tiny_run
    meta = repo / "models/classifier/meta.json"
    original = meta.read_text()
    stage = "07_dexperts_big5chat"
    try:
        meta.write_text("{not json")
        failed = _dvc(repo, "repro", "-s", "-f", stage, check=False)
        assert failed.returncode != 0
        gen = repo / "data/big5chat/07_dexperts/generations.jsonl"
        experts = sorted((repo / "models/dexperts").glob("*/train_metrics.json"))
        assert gen.exists() and len(experts) == 10
        before = {p: p.stat().st_mtime_ns for p in [gen, *experts]}
        assert not (repo / "models/dexperts/COMPLETE").exists()
        meta.write_text(original)
        _dvc(repo, "repro", "-s", stage)
        assert {p: p.stat().st_mtime_ns for p in before} == before  # neither retrained nor regenerated
        assert "kept the" in (repo / "reports/notebooks/07_dexperts_big5chat.ipynb").read_text()
        assert (repo / "models/dexperts/COMPLETE").exists() and (repo / "data/big5chat/07_dexperts/COMPLETE").exists()
    finally:
        meta.write_text(original)
        _dvc(repo, "repro")


def test_sigkill_mid_questionnaires_then_rerun_keeps_the_finished_answer_sheets(tiny_run):
    """11_generate_big5chat writes one answer sheet per condition x instrument as it goes; after a kill -9 the rerun
    reads the finished sheets back (untouched) and administers only the rest."""
    repo, _, _ = tiny_run
    stage = "11_generate_big5chat"
    sheets = repo / "data/big5chat/11_generate/sheets"
    final = json.loads((repo / f"reports/metrics/{stage}.json").read_text())
    def fresh_sheets(since: int) -> dict:  # sheets this run finished (the finished run's are moved aside first)
        return {p: p.stat().st_mtime_ns for p in sheets.glob("*.jsonl")
                if p.with_suffix(".json").exists() and p.stat().st_mtime_ns > since}

    try:
        t0 = time.time_ns()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", "-f", stage], cwd=repo, env=_env(repo),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and len(fresh_sheets(t0)) < 3:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = fresh_sheets(t0)
        total = final["conditions"] * 3  # tiny: two instruments by log-likelihood, one by generation
        assert 3 <= len(finished) < total, "the kill did not land mid-run"
        _dvc(repo, "repro", "-s", stage)
        assert {p: p.stat().st_mtime_ns for p in finished} == finished  # read back, not administered again
        assert len(list(sheets.glob("*.json"))) == total
        again = json.loads((repo / f"reports/metrics/{stage}.json").read_text())
        assert again["loglik_answers"] == final["loglik_answers"]
        assert again["generation_replies"] == final["generation_replies"]
    finally:
        _dvc(repo, "repro")


def test_big5chat_trains_on_the_released_dialogues_when_switched(tiny_run, tmp_path):
    """dexperts.source = released: 07 trains no expert and generates nothing; with sft.big5chat.source = generated,
    08/09 train on what 07 wrote, i.e. the paper's CSV."""
    repo, _, _ = tiny_run
    csv = tmp_path / "big5_chat_dataset.csv"
    prompts = [f"Imagine you are Sam, talking with Alex about plan {i}." for i in range(6)]
    rows = [{"trait": trait, "level": level, "train_input": prompt, "train_output": f"A {level} {trait} reply {i}."}
            for i, prompt in enumerate(prompts) for trait in ("openness", "extraversion") for level in ("high", "low")]
    pd.DataFrame(rows).to_csv(csv, index=False)
    tiny = repo / "params" / "tiny.yaml"
    original = tiny.read_text()
    # 08/09 read 07's output
    tiny.write_text(_with_params(tiny, {"dexperts.source": "released", "dexperts.released_path": str(csv),
                                        "sft.big5chat.source": "generated"}))
    try:
        proc = _dvc(repo, "repro", "08_sft_big5chat", "09_dpo_big5chat")  # 09 trains from the base, not 08
        assert {"07_dexperts_big5chat", "08_sft_big5chat", "09_dpo_big5chat"} <= set(
            re.findall(r"Running stage '([^']+)'", proc.stdout)), proc.stdout[-3000:]
        m07 = json.loads((repo / "reports/metrics/07_dexperts_big5chat.json").read_text())
        assert m07["source"] == "released" and m07["experts"] == {}
        traits = yaml.safe_load(tiny.read_text())["dexperts"]["traits"]
        assert m07["replies"] == sum(1 for r in rows if r["trait"][0].upper() in traits)
        gens = [json.loads(line) for line in
                (repo / "data/big5chat/07_dexperts/generations.jsonl").read_text().splitlines()]
        assert {g["reply"] for g in gens} <= {r["train_output"] for r in rows}
        assert json.loads((repo / "models/dpo/big5chat/train_metrics.json").read_text())["train_pairs_kept"] > 0
        assert json.loads((repo / "reports/metrics/08_sft_big5chat.json").read_text())["source"] == "generated"
    finally:
        tiny.write_text(original)
        _dvc(repo, "repro")


def test_jic_trains_and_evaluates_on_the_released_dialogues_when_switched(tiny_run, teacher, tmp_path):
    """synthesize.jic.source = released: 06 calls no teacher and writes the paper's dialogues (their own train/test
    split) and journals; 08 trains on the train side, RAFt and 11 retrieve from the released journals, 12 profiles
    the released authors."""
    import zipfile

    repo, _, _ = tiny_run

    def records(split: str, n: int) -> list[dict]:  # the layout of chocokiddo/jic (lib/jic/released.py)
        return [{"author_fullname1": f"t2_{split}{i}a", "author_fullname2": f"t2_{split}{i}b", "id1": f"{split}{i}a",
                 "id2": f"{split}{i}b", "journal_entry1": f"I spent the morning {i} painting and felt calm. " * 6,
                 "journal_entry2": f"Work was loud again on day {i}; I argued and then went running. " * 6,
                 "dialogue": [f"{split} dialogue {i}, utterance {t}: how was the week?" for t in range(10)]}
                for i in range(n)]

    paths = {}
    for split, n in (("train", 6), ("test", 3)):
        paths[split] = tmp_path / f"{split}.json.zip"
        with zipfile.ZipFile(paths[split], "w") as z:
            z.writestr(f"{split}.json", json.dumps(records(split, n)))
    tiny = repo / "params" / "tiny.yaml"
    original = tiny.read_text()
    tiny.write_text(_with_params(tiny, {"synthesize.jic.source": "released",
                                        "synthesize.jic.released_path": str(paths["train"]),
                                        "synthesize.jic.released_test_path": str(paths["test"])}))
    try:
        asked = teacher.requests
        proc = _dvc(repo, "repro", "12_eval_jic")
        ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
        assert {"06_synthesize_jic", "08_sft_jic@lora", "08_sft_jic@raft", "11_generate_jic",
                "12_eval_jic"} <= ran, proc.stdout[-3000:]
        assert teacher.requests == asked  # no teacher call
        m06 = json.loads((repo / "reports/metrics/06_synthesize_jic.json").read_text())
        assert m06["source"] == "released" and m06["splits"] == {"train": 6, "test": 3} and m06["pairs"] == 0
        out = repo / "data/jic/06_synthesize"
        assert len((out / "journals.jsonl").read_text().splitlines()) == 18
        assert json.loads((repo / "reports/metrics/08_sft_jic_raft.json").read_text())["train_dialogues"] == 6
        gens = [json.loads(line) for line in (repo / "data/jic/11_generate/generations.jsonl").read_text().splitlines()]
        assert {g["dialogue_id"] for g in gens} == {f"test-test{i}a__test{i}b" for i in range(3)}
        assert any("I spent the morning" in g["context"] or "Work was loud" in g["context"]
                   for g in gens if g["system"] == "raft")  # RAFt retrieved from the released journals
        m12 = json.loads((repo / "reports/metrics/12_eval_jic.json").read_text())
        assert m12["dialogues"] == 3 and set(m12["trait_capture"]) >= {"base", "lora", "raft"}
    finally:
        tiny.write_text(original)
        _dvc(repo, "repro")


def test_sigkill_mid_generation_then_rerun_keeps_the_experts_and_finished_chunks_of_07(tiny_run):
    """kill -9 after 07 wrote its first chunk of replies: the rerun trains no expert again, keeps that chunk and
    generates only the rest, each unit's replies once."""
    repo, _, _ = tiny_run
    stage = "07_dexperts_big5chat"
    out = repo / "data/big5chat/07_dexperts"
    before_run = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    units = sorted({g["unit_id"] for g in before_run})
    assert len(units) >= 2, "tiny must generate more than one chunk (dexperts.chunk_units)"

    def chunks_since(t0: int) -> dict:  # by this run (the finished run's outputs are moved aside first)
        return {p: p.stat().st_mtime_ns for p in (out / "chunks").glob("chunk-*.jsonl") if p.stat().st_mtime_ns > t0}

    try:
        t0 = time.time_ns()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", "-f", stage], cwd=repo, env=_env(repo),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not chunks_since(t0):
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = chunks_since(t0)
        assert 1 <= len(kept) < len(units) and not (out / "generations.jsonl").exists(), "the kill missed the run"
        experts = sorted((repo / "models/dexperts").glob("*/train_metrics.json"))
        assert len(experts) == 10
        before = {p: p.stat().st_mtime_ns for p in [*kept, *experts]}
        _dvc(repo, "repro", "-s", stage)
        assert {p: p.stat().st_mtime_ns for p in before} == before  # neither retrained nor regenerated
        assert "kept the" in (repo / "reports/notebooks/07_dexperts_big5chat.ipynb").read_text()
        after = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
        per_unit = Counter(g["unit_id"] for g in after)
        assert sorted(per_unit) == units and set(per_unit.values()) == {len(before_run) // len(units)}
        assert (out / "COMPLETE").exists()
    finally:
        _dvc(repo, "repro")


# Every long paper-profile stage resumes after kill -9 (issue: the paper profile at scale). Each is killed on tiny
# once it has written part of its output, then re-run: what it had written stays (a file written whole is untouched,
# an appended one keeps its lines in front), and the finished output holds what the uninterrupted run wrote, each
# record once. The teacher stages are slowed and their reply cache cleared first, so the kill lands mid-run.
KILLED_STAGES = {  # stage: (output folder, teacher stage?)
    "05_label_dpg": ("data/dpg/05_label", False),  # tiny reads by log-likelihood: one file per sample set, whole
    "05_label_persllm": ("data/persllm/05_label", True),
    "06_synthesize_pchat": ("data/pchat/06_synthesize", True),
    "11_generate_persllm": ("data/persllm/11_generate", False),
    "12_reasoning_big5chat": ("data/big5chat/12_reasoning", False),
}


def _records(folder: Path) -> dict:
    """Every JSONL file under folder (not set-aside copies): relative path -> its lines."""
    out = {}
    try:  # a running stage moves its output folder aside and recreates it: the listing can lose its footing
        paths = sorted(folder.rglob("*.jsonl"))
    except FileNotFoundError:
        return out
    for p in paths:
        if ".stale-" in str(p) or p.name.startswith("."):
            continue
        try:  # a running stage may replace a file between the listing and the read
            out[str(p.relative_to(folder))] = p.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
    return out


def _stage_outputs(repo: Path, stage: str) -> list[Path]:
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][stage]
    entries = [e for key in ("outs", "metrics", "plots") for e in spec.get(key, [])]
    return [repo / (e if isinstance(e, str) else next(iter(e))) for e in entries]


@pytest.mark.parametrize("stage", list(KILLED_STAGES))
def test_sigkill_mid_stage_then_rerun_keeps_what_was_written(tiny_run, teacher, stage, tmp_path):
    repo, _, _ = tiny_run
    folder, slow = KILLED_STAGES[stage]
    out = repo / folder
    finished = _records(out)
    assert finished and (out / "COMPLETE").exists()
    cache = repo / "data/cache/teacher.sqlite"
    # The stage's outputs, the lock and the reply cache as the first run left them, put back at the end: a resumed
    # teacher stage appends in the order replies arrive, which would change its output's hash and re-run everything
    # downstream in the tests that follow.
    saved = tmp_path / "saved"
    keep = [p for p in [*_stage_outputs(repo, stage), repo / "dvc.lock", cache] if p.exists()]
    for i, p in enumerate(keep):
        (shutil.copytree if p.is_dir() else shutil.copy2)(p, saved / str(i))

    def written_since(t0: int) -> dict:
        found = {}
        for rel, lines in _records(out).items():
            try:
                if lines and (out / rel).stat().st_mtime_ns > t0:
                    found[rel] = lines
            except FileNotFoundError:  # replaced by the running stage meanwhile
                continue
        return found

    proc = None
    try:
        if slow:
            cache.unlink(missing_ok=True)
            teacher.delay_s = 0.3
        t0 = time.time_ns()
        proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-s", "-f", stage], cwd=repo, env=_env(repo),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        while time.time() < deadline and not written_since(t0) and proc.poll() is None:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kept = written_since(t0)
        assert kept and not (out / "COMPLETE").exists(), f"the kill missed the run of {stage}"
        assert sum(map(len, kept.values())) < sum(map(len, finished.values())), "the kill did not land mid-run"
        teacher.delay_s = 0.0
        _dvc(repo, "repro", "-s", stage)
        after = _records(out)
        for rel, lines in kept.items():
            assert after[rel][:len(lines)] == lines, f"{stage}: {rel} lost what the killed run wrote"
        assert {rel: sorted(lines) for rel, lines in after.items()} == \
            {rel: sorted(lines) for rel, lines in finished.items()}, f"{stage}: the resumed run wrote other records"
        assert (out / "COMPLETE").exists()
    finally:
        teacher.delay_s = 0.0
        if proc is not None and proc.poll() is None:  # the test failed before its kill: end the run first
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for i, p in enumerate(keep):
            if p.is_dir():
                shutil.rmtree(p)
            (shutil.copytree if (saved / str(i)).is_dir() else shutil.copy2)(saved / str(i), p)
        for stale in out.parent.glob(out.name + ".stale-*"):
            shutil.rmtree(stale, ignore_errors=True)
        assert _dvc(repo, "status", stage).stdout.strip().endswith("up to date."), "the stage was not put back"
