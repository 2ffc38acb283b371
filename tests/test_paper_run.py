"""The paper profile, executed: `dvc repro` over the whole DAG with params/paper.yaml itself, changed only in sizes.

What stands in for what a workstation has (tests/standins/):
- the Hugging Face Hub: a local cache (HF_HOME in a temporary folder, HF_HUB_OFFLINE=1) holding tiny random-init
  models of the paper's architectures under the paper's own ids, and the Hub datasets the profile reads (SODA,
  PersonaChat, the PANDORA subset) as files in the layout and columns of the real repos, so the code calls
  `from_pretrained("<hub id>")` and `hf_hub_download` exactly as it will there;
- Reddit: a local HTTP server answering PullPush's submission search; the teacher endpoint: tests/fake_teacher.py;
- the GPU: a recording unsloth and a sitecustomize that sends lib.models down its CUDA-only branches (Unsloth, NF4)
  and fails if an argument is not a named parameter of the pinned unsloth source or of BitsAndBytesConfig.
What it cannot prove: the quality of the real models, the real CUDA kernels, a real endpoint's latency.
"""
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lib import config
from tests.checkout import copy_checkout
from tests.fake_teacher import FakeTeacherServer, scripted_dialogue_reply
from tests.standins import hub_cache

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SECRET = "sk-paper-" + "5e1d9c3b7a2f4e6d8c0a"
SALT = "test-salt-" + "c0ffee"
pytestmark = pytest.mark.e2e

# Keys the overlay may change: sizes, and the endpoints the stand-ins serve.
SIZE_KEY = re.compile(r"^(max_\w+|n_\w+|k_max|batch_size|loglik_batch_size|per_device_train_batch_size|"
                      r"num_train_epochs|texts_per_expert|heldout_texts|text_words|journal_words|sweep_scenarios|"
                      r"control_contexts|scenarios_per_cell|heldout_min_windows)$")
ENDPOINT_KEYS = {"base_url", "pullpush_url"}
# Harness tasks the paper profile reads from the Hub as the harness defines them: GPQA is gated, and the stand-in
# cache holds no copy of it (no one may redistribute it), so the paper run leaves it out and says so here.
GATED_KEYS = {"hub_tasks"}
SERVED_ADAPTERS = ("sft", "dpo")  # the names 11_generate_big5chat's vllm backend requests its adapters by
SERVED_PERSLLM = ("persllm-base", "persllm-sft", "persllm-dpo")  # 11_generate_persllm's (lib/persllm/serve.py)
MODEL_KINDS = {"meta-llama/Meta-Llama-3-8B-Instruct": "causal", "microsoft/deberta-large": "encoder",
               "google-bert/bert-base-uncased": "bert", "facebook/bart-base": "seq2seq",
               "sentence-transformers/all-MiniLM-L6-v2": "sentence",
               "sentence-transformers/gtr-t5-base": "sentence_t5"}  # PersLLM's retriever (label.persllm.encoder)


def _teacher_blocks(params: dict) -> list[dict]:
    """The params blocks that call a teacher endpoint (backend openai)."""
    return [node for keys, node in _nodes(params) if isinstance(node, dict) and node.get("backend") == "openai"]


def _key_env(block: dict) -> str:
    return block.get("api_key_env", "TEACHER_API_KEY")


def _nodes(node, keys: tuple = ()):
    yield keys, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _nodes(value, keys + (key,))


def test_the_paper_profile_names_real_teacher_endpoints():
    """No teacher stage points at a placeholder: the GPT-4 stages at a hosted API, JIC's 70B at its own vLLM server
    (README: Teachers); each names the variable that holds its key."""
    blocks = _teacher_blocks(yaml.safe_load((ROOT / "params/paper.yaml").read_text()))
    assert len(blocks) == 5
    for b in blocks:
        hosted = b["model"].startswith("gpt-")
        assert b["base_url"] == ("https://api.openai.com/v1" if hosted else "http://localhost:8001/v1"), b
        assert _key_env(b) == ("OPENAI_API_KEY" if hosted else "VLLM_API_KEY"), b


def _leaves(node: dict, keys: tuple = ()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, keys + (key,))
        else:
            yield keys + (key,), value


def _merge(base: dict, overlay: dict, keys: tuple = ()) -> dict:
    out = dict(base)
    for key, value in overlay.items():
        where = ".".join(keys + (key,))
        if key not in base and not (keys and keys[-1] == "args"):  # trainer args may gain a size key (max_steps)
            raise KeyError(f"overlay key {where} is not in params/paper.yaml")
        out[key] = _merge(base[key], value, keys + (key,)) if isinstance(value, dict) else value
    return out


def paper_params(teacher_url: str, pullpush_url: str) -> dict:
    """params/paper.yaml with tests/paper_overlay.yaml on top, the endpoints pointed at the stand-ins."""
    cfg = _merge(yaml.safe_load((ROOT / "params/paper.yaml").read_text()),
                 yaml.safe_load((ROOT / "tests/paper_overlay.yaml").read_text()))
    for section, paper in config.teacher_sections():
        cfg[section][paper]["base_url"] = teacher_url
    for paper in ("big5chat", "persllm"):  # the vLLM servers of the students' adapters
        cfg["generate"][paper]["served"]["base_url"] = teacher_url
    cfg["scrape"]["jic"]["pullpush_url"] = pullpush_url
    return cfg


def test_the_overlay_changes_only_sizes():
    overlay = yaml.safe_load((ROOT / "tests/paper_overlay.yaml").read_text())
    bad = [".".join(k) for k, _ in _leaves(overlay) if not SIZE_KEY.match(k[-1]) and k[-1] not in GATED_KEYS]
    assert bad == [], f"tests/paper_overlay.yaml may change sizes only, not {bad}"
    cfg = paper_params("http://teacher/v1", "http://pullpush")
    changed = {k for k, v in _leaves(cfg) if v != dict(_leaves(yaml.safe_load(
        (ROOT / "params/paper.yaml").read_text()))).get(k)}
    assert all(SIZE_KEY.match(k[-1]) or k[-1] in ENDPOINT_KEYS | GATED_KEYS for k in changed), changed


def test_every_paper_model_has_a_stand_in():
    """A new Hub id in the paper profile must get a tiny model of its architecture here, or the run would miss it."""
    cfg = config.load("paper", check_files=False)
    ids = set(config.model_specs(cfg).values())
    assert ids <= set(MODEL_KINDS), f"no stand-in for {sorted(ids - set(MODEL_KINDS))}"


# --- the stand-ins ---------------------------------------------------------------------------------------------

def _journal_posts() -> list[dict]:
    """Reddit r/Journaling submissions as PullPush returns them: twelve authors, real English text (Essays)."""
    essays = pd.read_csv(SHARED / "essays" / "essays.csv", encoding="latin-1").head(36)
    posts = []
    for i, text in enumerate(essays["TEXT"]):
        posts.append({"id": f"p{i}", "author": f"writer_{i % 12}", "title": f"Day {i}", "selftext": text,
                      "created_utc": 1_650_000_000 + 3600 * i, "subreddit": "Journaling"})
    posts.append({"id": "bot", "author": "AutoModerator", "title": "Weekly thread", "selftext": "Post here.",
                  "created_utc": 1_650_000_000 + 3600 * 40, "subreddit": "Journaling"})
    return posts


class FakePullPush(http.server.ThreadingHTTPServer):
    """/reddit/search/submission/?before=&after=&size= over a fixed list of posts, newest first."""

    def __init__(self, posts: list[dict]):
        self.posts = sorted(posts, key=lambda p: -p["created_utc"])
        self.requests = 0
        super().__init__(("127.0.0.1", 0), self._Handler)

    class _Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
            self.server.requests += 1
            if url.path.rstrip("/") != "/reddit/search/submission":
                self.send_error(404)
                return
            page = [p for p in self.server.posts if int(q["after"]) < p["created_utc"] < int(q["before"])]
            body = json.dumps({"data": page[:int(q.get("size", 100))]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _hub_datasets(files: Path) -> dict[str, Path]:
    """{repo id: folder} of the Hub datasets the paper profile reads, built from the mirror in their real layouts."""
    # allenai/soda: train/valid/test.parquet, the dialogue and speakers as lists
    soda = pd.read_json(SHARED / "soda" / "soda_20.jsonl", lines=True)
    from lib.big5chat import data as big5data

    for col in ("dialogue", "speakers"):
        soda[col] = [big5data._string_list(v, col) for v in soda[col]]
    (files / "soda").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        soda.to_parquet(files / "soda" / f"{split}.parquet")
    # PersonaChat (ConvAI2) as AlekseyKorshuk/persona-chat: personality + utterances[{candidates, history}], each
    # conversation twice, once from each side (the partner's persona here: the next dialogue's)
    (files / "personachat" / "data").mkdir(parents=True)
    for split, source in (("train", "xpersona_en_valid.json"), ("validation", "xpersona_en_test.json")):
        items = json.loads((SHARED / "personachat" / source).read_text())[:12]
        rows = []
        for i, item in enumerate(items):
            order = [(who, text) for user, reply in item["dialogue"] for who, text in (("A", user), ("B", reply))
                     if text != "__SILENCE__"]
            for me, persona in (("B", item["persona"]), ("A", items[(i + 1) % len(items)]["persona"])):
                lines = (["__ SILENCE __"] if order[0][0] == me else []) + [text for _, text in order]
                utterances = [{"candidates": ["a distractor reply .", lines[k]], "history": lines[:k]}
                              for k in range(1, len(lines), 2)]
                rows.append({"personality": persona, "utterances": utterances})
        pd.DataFrame(rows).to_parquet(files / "personachat" / "data" / f"{split}-00000-of-00001.parquet")
    # The PANDORA subset: CSVs with a comment and 0-100 trait scores (Essays text, labels mapped to scores)
    pandora = files / "pandora" / "Personality Datasets - Reddit"
    pandora.mkdir(parents=True)
    essays = pd.read_csv(SHARED / "essays" / "essays.csv", encoding="latin-1")
    names = {"cOPN": "openness", "cCON": "conscientiousness", "cEXT": "extraversion", "cAGR": "agreeableness",
             "cNEU": "neuroticism"}
    for name, part in (("train_set", essays.iloc[:40]), ("val_set", essays.iloc[40:50]),
                       ("eval_set", essays.iloc[50:70])):
        frame = pd.DataFrame({"body": part["TEXT"].str.slice(0, 600)})
        for src, dst in names.items():
            frame[dst] = part[src].astype(int) * 50 + 20
        frame.to_csv(pandora / f"{name}.csv", index=False)
    # wenkai-li/big5_chat: one CSV (trait, level, train_input, train_output). The 200 prompted replies with their own
    # prompts, then 250 more per trait x level, each under one of its trait's scenarios with the row's own level
    # description written in (so a trait's high and low rows share scenarios and DPO can pair them)
    from lib.big5chat import released
    from lib.traits import LEVELS, NAMES, TRAITS

    prompted = released.load_prompted(SHARED / "big5chat" / "big5_chat_sampled.csv")
    replies, _ = released.load_replies(SHARED / "big5chat" / "human_eval_big5_chat.csv")
    held = {p["reply"] for p in prompted}
    describe = {(p["trait"], p["level"]): re.search(r"'s big five personality description: (.*?)(?=\n```)",
                                                    p["prompt"], re.DOTALL).group(1) for p in prompted}
    rows = [{"trait": NAMES[p["trait"]], "level": p["level"], "train_input": p["prompt"], "train_output": p["reply"]}
            for p in prompted]
    for trait in TRAITS:
        scenes = [p for p in prompted if p["trait"] == trait]
        for level in LEVELS:
            chosen = [r for r in replies if (r["trait"], r["level"]) == (trait, level) and r["reply"] not in held][:250]
            for k, r in enumerate(chosen):  # 125 scenarios per trait (a tag makes each of the 40 distinct), 2 replies
                scene = scenes[k % len(scenes)]
                prompt = scene["prompt"].replace(describe[(trait, scene["level"])], describe[(trait, level)])
                prompt = prompt.replace("Scenario: ", f"Scenario: [{k % 125}] ", 1)
                rows.append({"trait": NAMES[trait], "level": level, "train_input": prompt, "train_output": r["reply"]})
    (files / "big5chat").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(files / "big5chat" / "big5_chat_dataset.csv", index=False)
    # HuggingFaceH4/ultrachat_200k: data/train_sft-0000i-of-00003-<hash>.parquet with prompt (the first user turn),
    # prompt_id (its sha256 hex) and messages (list of {content, role}, user first, alternating, ending with the
    # assistant). PersLLM's general instruction data (sft.persllm.general.dataset): SODA dialogues as the chats
    import hashlib

    chats = []
    for turns in soda["dialogue"].head(12):
        turns = list(turns)[:len(turns) // 2 * 2]
        chats.append({"prompt": turns[0], "prompt_id": hashlib.sha256(turns[0].encode()).hexdigest(),
                      "messages": [{"content": t, "role": ("user", "assistant")[k % 2]} for k, t in enumerate(turns)]})
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("prompt", pa.string()), ("prompt_id", pa.string()),
                        ("messages", pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())])))])
    (files / "ultrachat" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(chats, schema=schema),
                   files / "ultrachat" / "data" / "train_sft-00000-of-00003-a3ecf92756993583.parquet")
    return {"allenai/soda": files / "soda", "AlekseyKorshuk/persona-chat": files / "personachat",
            "Fatima0923/Automated-Personality-Prediction": files / "pandora", "wenkai-li/big5_chat": files / "big5chat",
            "HuggingFaceH4/ultrachat_200k": files / "ultrachat"}


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("paper")
    repo = copy_checkout(base)

    hf_home = base / "hf"
    cache = hf_home / "hub"
    hub_cache.build_models(cache, base / "built", MODEL_KINDS)
    for repo_id, folder in _hub_datasets(base / "files").items():
        hub_cache.put_dataset(cache, repo_id, folder)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHONPATH"))}
    log = base / "gpu_standin.jsonl"
    env |= {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1", "PSEUDONYM_SALT": SALT, "GPU_STANDIN_LOG": str(log),
            "PYTHONPATH": str(repo / "tests" / "standins" / "gpu")}
    # every key variable the profile names (a hosted API's, the vLLM servers'), all one secret
    env |= {node["api_key_env"]: SECRET for _, node in _nodes(yaml.safe_load((ROOT / "params/paper.yaml").read_text()))
            if isinstance(node, dict) and node.get("api_key_env")} | {"TEACHER_API_KEY": SECRET}
    # As `vllm serve` and a hosted API would: the one fake endpoint holds the teachers' models, the student's base
    # and the adapter names the served generation stages request, and answers 404 for any other name.
    params = yaml.safe_load((ROOT / "params/paper.yaml").read_text())
    served = sorted({b["model"] for b in _teacher_blocks(params)} | {params["models"]["student"], *SERVED_ADAPTERS,
                                                                *SERVED_PERSLLM})
    with FakeTeacherServer(scripted_dialogue_reply, required_key=SECRET, served_models=served) as teacher, \
            FakePullPush(_journal_posts()) as pullpush:
        (repo / "params.yaml").write_text(re.sub(r"(?m)^profile: \w+", "profile: paper",
                                                 (repo / "params.yaml").read_text()))
        (repo / "params/paper.yaml").write_text(yaml.safe_dump(paper_params(teacher.base_url, pullpush.url),
                                                               sort_keys=False))
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=env, capture_output=True,
                              text=True, check=False)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise AssertionError(f"paper run failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}")
        yield {"repo": repo, "env": env, "proc": proc, "seconds": seconds, "pullpush": pullpush.requests,
               "requests": [{k: p.get(k) for k in ("model", "seed", "temperature", "messages")}
                            for p in teacher.payloads],
               "calls": [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []}


def test_the_paper_dag_runs_end_to_end(paper_run):
    repo, proc = paper_run["repo"], paper_run["proc"]
    ran = set(re.findall(r"Running stage '([^']+)'", proc.stdout))
    listed = json.loads(subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=repo,
                                       env=paper_run["env"], capture_output=True, text=True, check=True).stdout)
    assert listed == {}  # nothing left stale
    assert len(ran) == 37 and {"07_dexperts_big5chat", "09_dpo_big5chat", "12_reasoning_big5chat", "12_eval_jic",
                               "05_label_dpg", "08_sft_dpg", "10_hypernet_dpg", "11_generate_dpg", "12_eval_dpg",
                               "05_label_persllm", "09_dpo_persllm", "12_eval_persllm", "12_eval_pchat"} <= ran
    dpg_eval = json.loads((repo / "reports/metrics/12_eval_dpg.json").read_text())
    assert dpg_eval["assessor"] == "openai" and set(dpg_eval["psdc"]) == {"base", "prompt", "lora_sft", "dpg"}
    assert paper_run["pullpush"] >= 1
    raw = (repo / "data/raw/pullpush_Journaling.jsonl").read_text()
    assert raw and "writer_" not in raw and "AutoModerator" not in raw  # salted pseudonyms only, the bot dropped
    ev = json.loads((repo / "reports/metrics/12_eval_jic.json").read_text())
    assert set(ev["overlap"]) == {"base", "lora", "raft"}
    # JIC's BERTScore (bert-base-uncased, layer 9) really ran on the stand-in: a number wherever a pair was scored
    assert ev["availability"]["bertscore"]["available"] is True, ev["availability"]["bertscore"]
    scored = {s: row for s, row in ev["overlap"].items() if row["scored"] > 0}
    assert scored, "no system produced a non-blank response, so JIC's metrics scored nothing"
    assert all(isinstance(row["bertscore_f1"], float) and -1 <= row["bertscore_f1"] <= 1 for row in scored.values()), \
        {s: row["bertscore_f1"] for s, row in ev["overlap"].items()}
    scrape = json.loads((repo / "reports/metrics/01_scrape_pchat.json").read_text())
    assert scrape  # PersonaChat from the Hub copy, both sides joined into persona pairs
    print(f"paper DAG with stand-ins: {paper_run['seconds']:.0f} s")


def test_models_resolve_from_the_hub_cache_by_their_ids(paper_run):
    base = paper_run["repo"] / "models" / "base"
    recorded = {(d / "HUB_ID.txt").read_text().strip() for d in base.iterdir() if (d / "HUB_ID.txt").is_file()}
    assert recorded == set(MODEL_KINDS)  # 00_models prepares every model the profile names


def test_gpu_branches_call_unsloth_and_nf4_as_the_pinned_sources_accept(paper_run):
    calls = paper_run["calls"]
    apis = [c["api"] for c in calls]
    loads = [c for c in calls if c["api"] == "FastLanguageModel.from_pretrained"]
    # 07's ten experts, 08 (JIC LoRA, RAFt; BIG5-CHAT; DPG's LoRA-SFT; PersLLM), 09 (BIG5-CHAT, PersLLM): every
    # causal training loads through
    # unsloth (DPG's hypernetwork trains its own per-sample LoRA on the plain base: no unsloth there)
    assert len(loads) == 17 and apis.count("FastLanguageModel.get_peft_model") == 17
    assert sum(c["kwargs"]["load_in_4bit"] == "True" for c in loads) == 2  # JIC's QLoRA (sft.jic.load_in_4bit)
    # the stand-in swaps the id for Unsloth's mirror, absent offline, unless told to load exactly the named repo
    assert all(c["kwargs"]["use_exact_model_name"] == "True" for c in loads)
    assert apis.count("PatchDPOTrainer") == 2
    renders = [c for c in calls if c["api"] == "render_rows"]
    assert renders and all(c["kwargs"]["all_strings"] == "True" for c in renders)
    # 11_generate_jic evaluates the NF4-trained adapters on the NF4 base, through a checked BitsAndBytesConfig
    assert apis.count("from_pretrained (4-bit)") == 3 and "BitsAndBytesConfig" in apis
    for trained in ("jic_lora", "dpg", "persllm"):
        metrics = json.loads((paper_run["repo"] / "models/sft" / trained / "train_metrics.json").read_text())
        assert metrics["backend"] == "unsloth", trained
    # Llama 3's tokenizer prepends a BOS to the rendered rows Unsloth's trainers get: each must hold one, not two
    trained = {str(p.relative_to(paper_run["repo"])): json.loads(p.read_text())
               for p in (paper_run["repo"] / "models").glob("*/*/train_metrics.json")}
    bos = {path: m.get("leading_bos") for path, m in trained.items() if m.get("backend") == "unsloth"}
    assert len(bos) == 17 and set(bos.values()) == {1}, bos  # every Unsloth training of the run


def test_dpo_under_the_stand_in_keeps_one_adapter(paper_run):
    """trl's "ref" adapter is deleted (the base is the reference): the saved adapter is the policy's only, and the
    finished stage left no checkpoint behind (they exist only to resume; DVC would cache each one)."""
    dpo = paper_run["repo"] / "models" / "dpo" / "big5chat"
    assert (dpo / "adapter" / "adapter_model.safetensors").is_file() and not (dpo / "adapter" / "ref").exists()
    assert (dpo / "COMPLETE").is_file() and not (dpo / "checkpoints").exists()
    assert not list((paper_run["repo"] / "models").rglob("checkpoint-*"))
    assert json.loads((dpo / "train_metrics.json").read_text())["backend"] == "unsloth"


def test_the_reddit_source_refuses_to_run_without_a_salt(paper_run):
    env = {k: v for k, v in paper_run["env"].items() if k != "PSEUDONYM_SALT"}
    proc = subprocess.run([sys.executable, "-m", "lib.run_notebook", "notebooks/01_scrape_jic.ipynb"],
                          cwd=paper_run["repo"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "needs a secret pseudonym salt in $PSEUDONYM_SALT" in proc.stdout + proc.stderr


def test_stand_in_tokenizers_really_tokenize(tmp_path):
    """transformers 5 renamed the tokenizer file arguments (vocab, merges): a wrong name builds an empty vocabulary
    that turns every text into special tokens, and the paper run would train on nothing."""
    from transformers import AutoTokenizer

    for kind in ("encoder", "bert", "seq2seq"):
        tok = AutoTokenizer.from_pretrained(hub_cache.BUILDERS[kind](tmp_path / kind))
        assert len(tok) > 100 and len(tok.tokenize("I wrote in my journal")) >= 5, kind
        assert tok.unk_token not in tok.tokenize("I wrote in my journal"), kind
    bert = AutoTokenizer.from_pretrained(tmp_path / "bert", use_fast=False)  # as bert_score loads it
    assert bert.tokenize("I wrote in my JOURNALING") == ["i", "wrote", "in", "my", "journal", "##ing"]  # uncased
    assert bert.model_max_length == 512


def test_big5chat_released_data_and_reasoning_on_the_paper_path(paper_run):
    """08/09 train on the Hub's released replies (a scenario's two levels paired), and 12_reasoning runs the real
    harness on the Llama-3 stand-in: its chat template, the persona as the system turn, one BOS."""
    repo = paper_run["repo"]
    dpo = json.loads((repo / "reports/metrics/09_dpo_big5chat.json").read_text())
    assert dpo["source"] == "released" and dpo["pair_stats"]["train"]["groups_used"] >= 10
    assert dpo["eval_pairs"] > 0 and dpo["heldout"]["groups"] > 0
    scrape = json.loads((repo / "reports/metrics/01_scrape_big5chat.json").read_text())["released"]
    assert scrape["prompted_found"] == 200
    rsn = json.loads((repo / "reports/metrics/12_reasoning_big5chat.json").read_text())
    assert rsn["conditions"] == 31 and set(rsn["items_per_task"].values()) == {1}
    rows = [json.loads(line) for line in
            (repo / "data/big5chat/12_reasoning/results/sft-C-high.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"gsm8k", "mathqa", "truthfulqa_mc1", "truthfulqa_mc2", "commonsense_qa",
                                         "piqa", "social_iqa", "mmlu"}
    head = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant with the "
            "following Big Five personality traits: Conscientiousness - high")
    assert all(r["prompt"].count("<|begin_of_text|>") == 1 for r in rows)
    for r in rows:  # the harness appends a task's description (MMLU's subject line) to the system turn
        assert r["prompt"].startswith(head), r["prompt"][:300]
        rest = r["prompt"][len(head):]
        if r["task"] == "mmlu":
            assert rest.startswith("\n\nThe following are multiple choice questions (with answers) about "), rest[:200]
            assert rest.index("<|eot_id|>") < rest.index("<|start_header_id|>user")
        else:
            assert rest.startswith("<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n"), rest[:200]


def test_persllm_generation_goes_through_the_served_models(paper_run):
    """generate.persllm.backend = vllm: the personified base and the two stacked adapters are prepared on disk and
    every request names one of them, each with its own seed (the two samples of an input must differ)."""
    m = json.loads((paper_run["repo"] / "reports/metrics/11_generate_persllm.json").read_text())
    assert m["backend"] == "vllm" and m["requests_per_model"] > 0
    served = paper_run["repo"] / "models/served/persllm"
    assert (served / "prepared.json").is_file()
    ranks = {d: json.loads((served / d / "adapter_config.json").read_text())["r"] for d in ("sft", "dpo")}
    assert ranks["dpo"] > ranks["sft"]  # SFT and DPO stacked into one adapter
    by_model = {}
    for r in paper_run["requests"]:
        by_model.setdefault(r["model"], []).append(r)
    for name in ("persllm-base", "persllm-sft", "persllm-dpo"):
        reqs = by_model.get(name, [])
        assert len(reqs) == m["requests_per_model"], (name, len(reqs))
        assert len({r["seed"] for r in reqs}) == len(reqs), f"{name}: requests share a seed"
        assert all(r["messages"][-1]["content"].startswith("<TIME-") for r in reqs)


def test_big5chat_generation_goes_through_the_served_adapters(paper_run):
    """generate.big5chat.backend = vllm: questionnaires by generation and the replies are requests naming the base
    model or an adapter (the server's 404 for an unknown name would have stopped the run), each with its seed."""
    m = json.loads((paper_run["repo"] / "reports/metrics/11_generate_big5chat.json").read_text())
    assert m["backend"] == "vllm" and m["generation_replies"] > 0 and m["replies"] > 0
    student = yaml.safe_load((ROOT / "params/paper.yaml").read_text())["models"]["student"]
    by_model = {}
    for r in paper_run["requests"]:
        by_model.setdefault(r["model"], []).append(r)
    assert {"sft", "dpo", student} <= set(by_model)
    assert all(r["seed"] is not None for name in ("sft", "dpo", student) for r in by_model[name])
    seed = yaml.safe_load((ROOT / "params/paper.yaml").read_text())["generate"]["big5chat"]["seed"]
    assert {r["seed"] for r in by_model["dpo"]} == {seed, seed + 1}  # the overlay's two questionnaire runs
