"""Workstation budget of `dvc exp run -S profile=paper` on one 80 GB H100: per stage, hours, GPU memory and disk.

    python benchmarks/budget.py           # writes benchmarks/results/budget.json and benchmarks/BUDGET.md
    python benchmarks/budget.py --check   # exit 1 when BUDGET.md is not what the script would write now

Every number is an ESTIMATE (no GPU here): the work a stage does, counted from params/paper.yaml, dvc.yaml and the
data the paper profile reads where the ../shared/data mirror holds it (SIZES: stated sizes where it does not),
divided by a throughput in ASSUMED (assumed, not measured). A stage's parts say which is which. A paper's total
counts its own stages and the shared ones its stages depend on (00_models: models/base; 03_classifier:
models/classifier, read from dvc.yaml), each once.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path
from statistics import mean

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result  # after the sys.path line above
from lib import config

OUT_JSON = ROOT / "benchmarks" / "results" / "budget.json"
OUT_MD = ROOT / "benchmarks" / "BUDGET.md"
PAPERS = ("jic", "big5chat", "pchat", "dpg", "persllm")
SHARED = {"00_models": "models/base", "03_classifier": "models/classifier"}  # shared stage: the output others read

# name: (value, one-line justification). Assumed, not measured: no GPU was available to time any of them.
ASSUMED = {
    "chars_per_token": (4.0, "Llama 3's 128k-token vocabulary averages about 4 characters per token of English"),
    "tokens_per_word": (1.33, "the same tokenizer: about 0.75 English words per token"),
    "train_tok_s": (6000, ("Llama-3-8B LoRA SFT with Unsloth on one H100, bf16 base, gradient checkpointing: "
                           "~48 GFLOP/token at ~35 % of 989 TFLOPS")),
    "qlora_tok_s": (4500, "the same on the NF4 (4-bit) base: dequantising every matmul costs ~25 %"),
    "dpo_tok_s": (4500, ("DPO with Unsloth: policy forward+backward plus the reference forward (adapter off), "
                         "per token of chosen and rejected: ~3/4 of SFT's rate")),
    "hf_train_tok_s": (3000, ("plain transformers training, no Unsloth kernels, no checkpointing: the DPG "
                              "hypernetwork's backward through the frozen 8B")),
    "prefill_tok_s": (10000, ("HF forward without gradient (prompt prefill, log-likelihood scoring) of the 8B in "
                              "bf16, padded batches")),
    "decode_step_s": (0.03, ("HF `generate` on the 8B in bf16, KV-cached: ~30 ms per decoding step whatever the "
                             "batch (kernel launches, Python)")),
    "decode_row_s": (0.00015, ("plus ~0.15 ms per row in the batch: 16 GFLOP per token at ~100 TFLOPS in eager "
                               "PyTorch")),
    "vllm_stream_tok_s": (40, ("one request stream of `vllm serve` holding the 8B on the H100, continuous batching "
                               "at the stage's max_concurrency streams")),
    "vllm_gpu_share": (0.9, ("vLLM's default --gpu-memory-utilization: the server reserves 90 % of the GPU for "
                             "weights and KV cache")),
    "dexperts_forwards": (2, "a DExperts step runs the base rows and the expert rows: two forwards per step"),
    "hypernet_decode": (0.77, ("per-sample generated LoRAs decode at 0.77x the base (benchmarks/RESULTS.md row g, "
                               "cpu)")),
    "pad_overhead": (1.25, "trl/HF pad each batch to its longest row: ~25 % more tokens computed than counted"),
    "small_step_s": (0.05, "one bart-base LoRA training step at batch 4 on an H100: overhead-bound"),
    "small_decode_step_s": (0.015, "one bart-base `generate` step (6 decoder layers)"),
    "encoder_train_tok_s": (15000, "deberta-large full fine-tune in fp32/TF32 (the classifier sets no bf16)"),
    "encoder_tok_s": (50000, ("encoder inference: deberta-large, bert-base, MiniLM (embeddings, classifier, "
                              "BERTScore)")),
    "teacher_stream_tok_s": (30, ("one request stream of a hosted GPT-4-class model or a vLLM Llama-3-70B endpoint; "
                                  "the stage keeps max_concurrency streams busy")),
    "model_load_s": (60, ("loading the 8B (16 GB of safetensors) from the local cache onto the GPU, Unsloth patching "
                          "included; counted per load")),
    "download_mb_s": (100, "Hugging Face Hub download"),
    "pullpush_s_per_page": (2.0, "PullPush: one page of 100 submissions, with its rate limit"),
    "act_mb_gc": (1.0, ("training activations per token with gradient checkpointing: layer inputs 0.25 MB, one "
                        "recomputed layer, fp32 logits and their gradient")),
    "act_mb_nogc": (6.5, "the same without checkpointing: every layer's activations (~0.17 MB x 32) and logits"),
    "enc_act_mb": (4.0, "deberta-large fp32 fine-tune activations per token (24 layers, disentangled attention)"),
    "cuda_overhead_gb": (1.5, "CUDA context and allocator fragmentation"),
    "optimizer_bytes": (16, "per trained parameter: fp32 weight, gradient and AdamW's two moments"),
    "ckpt_bytes": (10, "per trained parameter in a checkpoint: bf16 weights + AdamW's two fp32 moments"),
    "json_overhead": (1.3, "JSONL keys, ids and escaping around the text"),
}
K = {name: value for name, (value, _) in ASSUMED.items()}

# Measured here (on a CPU), not assumed: name: (value, how). 07's DExperts step is host-bound at the paper's batch:
# a skeleton of the 8B (its 32 layers at width 64, ten r-8 experts, 256 rows) spends this long per step in Python,
# peft's per-adapter loop and op dispatch, which a GPU cannot run ahead of. Measured while other jobs shared the
# CPU (an upper estimate for a workstation's host); benchmarks/RESULTS.md row l.
_HOST = json.loads((ROOT / "benchmarks/results/dexperts_host_overhead.json").read_text())
MEASURED = {
    "dexperts_host_step_s": (_HOST["batched/after"]["step_ms"] / 1e3,
                             (f"benchmarks/dexperts_host_overhead.py ({_HOST['when'][:10]}): host time per batched "
                              f"DExperts step at {_HOST['rows']} rows, {_HOST['n_adapters']} experts, "
                              f"{_HOST['layers']} layers")),
}
M = {name: value for name, (value, _) in MEASURED.items()}

# Sizes of what the paper profile reads from the Hub or PullPush and the mirror does not hold: name: (value, source).
SIZES = {
    "soda_parquet_mb": (688.8, "allenai/soda train.parquet (Hub LFS pointer)"),
    "big5chat_rows": (100_000, "wenkai-li/big5_chat big5_chat_dataset.csv (params comment; lib/big5chat)"),
    "big5chat_csv_mb": (88.6, "the same file (Hub listing)"),
    "personachat_train_rows": (17_878, ("AlekseyKorshuk/persona-chat dataset_infos.json; each conversation once "
                                        "per side (ConvAI2), so 8,939 dialogues")),
    "personachat_valid_rows": (1_000, "the same; 500 dialogues"),
    "personachat_parquet_mb": (102.3, "train 97.5 + validation 4.82 MB (Hub listing)"),
    "personas": (1_055, "assumed: PersonaChat's 1,155 personas less its 100 test ones"),
    "pandora_train_mb": (4.63, "Fatima0923/Automated-Personality-Prediction train_set.csv (Hub listing)"),
    "pandora_test_mb": (0.663, "the same, eval_set.csv"),
    "journaling_posts": (100_000, "assumed: r/Journaling 2021-2023 is not sized anywhere (scrape.jic.max_items null)"),
    "journal_entry_tokens": (300, "assumed tokens per r/Journaling entry"),
    "persllm_input_words": (30, "assumed words of a teacher-written PersLLM input (input_min/max_words 4-60)"),
    "ultrachat_shard_mb": (244, "UltraChat-200k's first train_sft shard, sft.persllm.general.dataset (README)"),
    "general_row_tokens": (620, ("assumed tokens of one general instruction exchange (sft.persllm.general): two "
                                 "utterances at UltraChat's reported ~309 tokens each")),
}
S = {name: value for name, (value, _) in SIZES.items()}

# Llama-3-8B-Instruct: dims from its config.json; parameters as published.
LLAMA = {"params": 8.03e9, "layers": 32, "vocab": 128_256, "kv_bytes_per_token": 2 * 32 * 1024 * 2}
LLAMA_MODULES = {"q_proj": (4096, 4096), "k_proj": (4096, 1024), "v_proj": (4096, 1024), "o_proj": (4096, 4096),
                 "gate_proj": (4096, 14336), "up_proj": (4096, 14336), "down_proj": (14336, 4096)}
BART_MODULES = {"q_proj": (768, 768), "v_proj": (768, 768), "k_proj": (768, 768), "out_proj": (768, 768)}
BART_ATTENTION_BLOCKS = 18  # 6 encoder self-attention, 6 decoder self-attention, 6 decoder cross-attention
W16_GB = LLAMA["params"] * 2 / 1e9  # bf16 weights
NF4_GB = 5.5  # 4-bit linear layers, bf16 embeddings and head
# Hub downloads: (parameters, bytes per parameter of the published weights).
DOWNLOADS = {"meta-llama/Meta-Llama-3-8B-Instruct": (8.03e9, 2), "microsoft/deberta-large": (406e6, 4),
             "facebook/bart-base": (139e6, 4), "sentence-transformers/all-MiniLM-L6-v2": (22.7e6, 4),
             "google-bert/bert-base-uncased": (110e6, 4), "sentence-transformers/gtr-t5-base": (110e6, 2)}
# 12_reasoning_big5chat: items from ../shared/data/reasoning/README.md (GPQA: the harness's 448); forwards per item as
# lm-eval scores them (a one-token continuation shares its context's forward); prompt tokens assumed.
REASONING = {"gsm8k": (1319, 1, 900), "mathqa": (2985, 5, 70), "truthfulqa_mc1": (817, 5, 350),
             "truthfulqa_mc2": (817, 8, 350), "commonsense_qa": (1221, 5, 60), "piqa": (1838, 2, 70),
             "social_iqa": (1954, 3, 70), "mmlu": (14042, 1, 150), "gpqa_main_zeroshot": (448, 4, 250)}
CHAT_OVERHEAD = 30  # tokens of Llama 3's chat template per conversation (headers, eot), assumed


# --------------------------------------------------------------------------------------------------------- helpers
def tok(chars: float) -> float:
    return chars / K["chars_per_token"]


def words_tok(words: float) -> float:
    return words * K["tokens_per_word"]


def words_chars(words: float) -> float:
    return words_tok(words) * K["chars_per_token"]


def lora_params(r: int, targets: list[str], modules: dict = LLAMA_MODULES, copies: int = LLAMA["layers"]) -> int:
    """Trainable parameters of a LoRA: r x (in + out) per targeted module, per layer (or attention block)."""
    return r * sum(sum(modules[t]) for t in targets) * copies


def part(what: str, where: str, tokens: float, seconds: float, rate: str, tok_s: float | None = None) -> dict:
    """One piece of a stage's work. where: gpu (the local H100), endpoint (a teacher), cpu or network; rate: the
    constant it runs at, tok_s: that throughput (new tokens/s when decoding or at an endpoint)."""
    return {"what": what, "where": where, "tokens": round(tokens), "seconds": round(seconds, 1), "rate": rate,
            "tok_s": None if tok_s is None else round(tok_s)}


def generate(what: str, requests: float, prompt_tok: float, new_tok: int, batch: int, calls: int = 1,
             forwards: int = 1, slowdown: float = 1.0, step_s: float | None = None) -> dict:
    """HF generate: prefill every prompt, then new_tok steps per batch (upper bound: a batch runs to its longest).
    A step is `forwards` forwards of `batch` rows (decode_step_s + batch x decode_row_s each) / slowdown, or step_s."""
    step_s = step_s or forwards * (K["decode_step_s"] + batch * K["decode_row_s"]) / slowdown
    batches = calls * math.ceil(requests / calls / batch)
    seconds = batches * new_tok * step_s + requests * prompt_tok / K["prefill_tok_s"]
    return part(what, "gpu", requests * (prompt_tok + new_tok), seconds,
                f"decode, {batch} rows x {step_s * 1e3:.0f} ms", batch / step_s)


def served(what: str, requests: float, prompt_tok: float, new_tok: int, streams: int) -> dict:
    """Generation by a local `vllm serve` of the student: at most new_tok per request at `streams` x the stream rate."""
    tok_s = streams * K["vllm_stream_tok_s"]
    return part(what, "gpu", requests * (prompt_tok + new_tok), requests * new_tok / tok_s,
                f"vllm, {streams} streams", tok_s)


def train(what: str, rows: float, row_tok: float, args: dict, rate_key: str = "train_tok_s") -> dict:
    """Trainer steps x batch x accumulation x tokens per row (capped at max_seq_length by the caller)."""
    batch, accum = args["per_device_train_batch_size"], args.get("gradient_accumulation_steps", 1)
    steps = args.get("max_steps") or math.ceil(rows / (batch * accum)) * args.get("num_train_epochs", 1)
    tokens = steps * batch * accum * row_tok
    return part(f"{what}: {steps:,} steps x {batch * accum} rows x {row_tok:.0f} tok", "gpu", tokens,
                tokens * K["pad_overhead"] / K[rate_key], rate_key, K[rate_key])


def score(what: str, tokens: float, rate_key: str = "prefill_tok_s") -> dict:
    return part(what, "gpu", tokens, tokens * K["pad_overhead"] / K[rate_key], rate_key, K[rate_key])


def teacher(what: str, requests: float, prompt_tok: float, max_new: int, p: dict) -> tuple[dict, dict]:
    """(part, bill) of a teacher stage: prompt and at most max_new completion tokens per request; wall time at
    max_concurrency streams. Repairs (at most max_repairs rounds, rejects only) are not counted."""
    completion = requests * max_new
    seconds = completion / (p["max_concurrency"] * K["teacher_stream_tok_s"])
    bill = {"endpoint": f"{p['model']} at {p['base_url']}", "requests": int(requests),
            "prompt_tokens": int(requests * prompt_tok), "completion_tokens_max": int(completion)}
    return part(what, "endpoint", requests * prompt_tok + completion, seconds,
                f"endpoint, {p['max_concurrency']} streams", completion / seconds), bill


def infer_gb(rows: float, seq: float, weights: float = W16_GB, logit_tokens: float = 0) -> float:
    """Weights + KV cache of rows x seq tokens + fp32 logits of the scored tokens + overhead."""
    return (weights + rows * seq * LLAMA["kv_bytes_per_token"] / 1e9 + logit_tokens * LLAMA["vocab"] * 4 / 1e9
            + K["cuda_overhead_gb"])


def train_gb(weights: float, trained: float, micro_tokens: float, gc: bool) -> float:
    """Frozen weights + optimiser state of the trained parameters + activations of one micro-batch + overhead."""
    act = K["act_mb_gc"] if gc else K["act_mb_nogc"]
    return weights + trained * K["optimizer_bytes"] / 1e9 + micro_tokens * act / 1e3 + K["cuda_overhead_gb"]


def jsonl_gb(rows: float, chars: float) -> float:
    return rows * chars * K["json_overhead"] / 1e9


def ckpt_gb(trained: float) -> float:
    """Two checkpoints at peak (lib.train keeps 2 and deletes them when the stage completes)."""
    return 2 * trained * K["ckpt_bytes"] / 1e9


def lora_train(what: str, rows: float, row_tok: float, p: dict, rate_key: str | None = None) -> dict:
    """A LoRA SFT/DPO stage of the 8B: its training part, GPU memory and disk (adapter; checkpoints at peak)."""
    a, dpo = p["args"], rate_key == "dpo_tok_s"
    nf4 = p.get("load_in_4bit", False)
    rate_key = rate_key or ("qlora_tok_s" if nf4 else "train_tok_s")
    seq_tok = min(row_tok, p["max_seq_length"])
    trained = lora_params(p["lora"]["r"], p["lora"]["target_modules"])
    micro = a["per_device_train_batch_size"] * p["max_seq_length"] * (2 if dpo else 1)
    return {"part": train(what, rows, seq_tok * (2 if dpo else 1), a, rate_key),
            "gpu_gb": train_gb(NF4_GB if nf4 else W16_GB, trained, micro, a.get("gradient_checkpointing", False)),
            "disk_gb": trained * 2 / 1e9, "peak_gb": ckpt_gb(trained), "trained": trained}


def stage(parts: list[dict], gpu_gb: float, disk_gb: float, work: str, method: str, peak_gb: float = 0.0,
          bill: dict | None = None, loads: int = 0) -> dict:
    """A stage row. disk_gb: left behind; peak_gb: transient on top of it (checkpoints, working copies); loads: how
    many times the stage loads the 8B."""
    if loads:
        parts = [part(f"load the 8B x {loads}", "gpu", 0, loads * K["model_load_s"], "model_load_s"), *parts]
    return {"parts": parts, "gpu_gb": round(gpu_gb, 1), "disk_gb": round(disk_gb, 4),
            "peak_extra_gb": round(peak_gb, 4), "work": work, "method": method, "teacher": bill}


# --------------------------------------------------------------------------------------------------- mirror facts
def _mean_chars(rows: list[dict], keys: tuple = ("prompt", "completion")) -> float:
    """Mean characters of the messages of conversational rows."""
    return round(mean(sum(len(m["content"]) for k in keys for m in r[k]) for r in rows)) if rows else 0


def big5chat_facts(cfg: dict, root: Path) -> dict:
    """SODA agent turns and their dialogue prompt (the mirror's 20 scenarios), Essays expert texts, the released
    replies and the 200 prompts (the mirror's samples), the questionnaires."""
    from lib import big5chat, corpora, psychometrics
    from lib.big5chat import data as big5data
    from lib.big5chat import released
    from lib.traits import LEVELS, TRAITS

    s = cfg["scrape"]["big5chat"]
    scenarios = big5data.load_soda(root / "soda" / "soda_20.jsonl")
    units = big5data.reply_units(scenarios, cfg["dexperts"]["max_units_per_scenario"])
    template = config.read_text(cfg["dexperts"]["template"])
    essays = corpora.load_essays(root / s["essays_path"], s["expert_folds"])
    texts = {f"{t}_{lvl}": [min(len(x.split()), s["text_words"]) for x in big5data.split_by_trait_level(
        essays, t, lvl).text][:s["texts_per_expert"]] for t in TRAITS for lvl in LEVELS}
    replies, _ = released.load_replies(root / "big5chat" / "human_eval_big5_chat.csv")
    prompted = released.load_prompted(root / s["released"]["prompted_path"])
    persona = [{"role": "system", "content": big5chat.persona_instruction("E", "high")}]
    return {"soda_scenarios_in_mirror": len(scenarios), "units_per_scenario": round(len(units) / len(scenarios), 3),
            "soda_row_chars": round(mean(len(json.dumps(sc)) for sc in scenarios)),
            "dialogue_prompt_chars": round(mean(len(big5chat.dialogue_messages(u, template)[0]["content"])
                                                for u in units)),
            "expert_texts": {k: len(v) for k, v in texts.items()},
            "expert_words": round(mean(w for v in texts.values() for w in v), 1),
            "reply_chars": round(mean(len(r["reply"]) for r in replies)), "prompted": len(prompted),
            "neutral_prompt_chars": round(mean(len(released.neutral_prompt(p["prompt"])) for p in prompted)),
            "items": {n: len(psychometrics.load_instrument(n, root)) for n in ("bfi44", "ipip120")},
            "item_prompt_chars": round(mean(sum(len(m["content"]) for m in psychometrics.item_prompt(
                t, persona=persona)) for t in psychometrics.load_instrument("ipip120", root).text))}


def pchat_facts(cfg: dict, root: Path) -> dict:
    """The dialogue shape of PersonaChat from the mirror's human test set (XPersona valid) and the teachers' prompts
    built on its personas."""
    from lib.pchat import data, label, rows, synthesize
    from lib.traits import LEVELS, TRAITS

    human, _ = data.load_personachat(root / cfg["scrape"]["pchat"]["human_test_path"])
    human_rows, _ = rows.sft_rows(human)
    personas = [d["personas"]["B"] or d["personas"]["A"] for d in human]
    sp, label_tpl = cfg["synthesize"]["pchat"], config.read_text(cfg["label"]["pchat"]["template"])
    levels = dict(zip(TRAITS, LEVELS * 3))
    synth = [synthesize.dialogue_messages({"A": a, "B": b}, {"A": levels, "B": levels}, sp["min_turns"],
                                          sp["n_turns"], ("Alex", "Sam"),
                                          template=config.read_text(sp["whole_template"]),
                                          system_prompt=config.read_text(sp["system_prompt"]))
             for a, b in itertools.pairwise(personas)]
    return {"pchat_human_dialogues": len(human), "pchat_human_contexts": len(human_rows),
            "pchat_turns_per_dialogue": round(mean(len(d["turns"]) for d in human), 2),
            "pchat_row_chars": _mean_chars(human_rows),
            "pchat_label_prompt_chars": round(mean(len(label.label_messages(x, label_tpl)[-1]["content"])
                                                   for x in personas)),
            "pchat_synth_prompt_chars": round(mean(sum(len(m["content"]) for m in chat) for chat in synth))}


def dpg_facts(cfg: dict, root: Path) -> dict:
    """The film windows, reply rows, generation units and assessment prompts as 01/05/08/11 build them (every window
    kept, vectors all 0)."""
    from lib import corpora
    from lib.dpg import data, evaluate, label
    from lib.dpg.rows import reply_rows
    from lib.traits import TRAITS

    p, lab, sft = cfg["scrape"]["dpg"], cfg["label"]["dpg"], cfg["sft"]["dpg"]
    windows, _ = data.hp_windows(data.load_hp_lines(root / p["hp_dir"]), p["characters"], min_lines=p["min_lines"],
                                 context_turns=p["context_turns"])
    hp = data.select_windows(windows, p["max_characters"], p["max_windows_per_character"], seed=p["seed"])
    held = set(data.heldout_characters(hp, p["heldout_characters"], seed=p["seed"],
                                       min_windows=p["heldout_min_windows"]))
    friends, _ = data.friends_windows(corpora.load_friends_persona(root / p["friends_path"]),
                                      min_lines=p["friends_min_lines"])
    friends = friends[:p["max_friends_scenes"]] if p["max_friends_scenes"] is not None else friends
    knowledge = label.load_knowledge(ROOT / lab["knowledge"])
    kt, vt = config.read_text(lab["knowledge_template"]), config.read_text(lab["vanilla_template"])

    def chars(w: dict, template: str, know) -> int:
        return len(label.assessment_chats(w, "E", template, know, lab["max_words"])[0]["content"])

    zero = {w["sample_id"]: dict.fromkeys(TRAITS, 0.0) for w in hp}
    persona = config.read_text(sft["persona_template"])
    f = {"dpg_windows": len(hp), "dpg_friends": len(friends),
         "dpg_assess_chars": round(mean(chars(w, kt, knowledge) for w in hp)),
         "dpg_friends_assess_chars": round(mean(chars(w, kt, knowledge) + chars(w, vt, None) for w in friends) / 2)}
    for split, part_ in (("train", [w for w in hp if w["character"] not in held]),
                         ("heldout", [w for w in hp if w["character"] in held])):
        rows, _ = reply_rows(part_, zero, persona, context_turns=sft["context_turns"])
        f[f"dpg_{split}_rows"], f[f"dpg_{split}_row_chars"] = len(rows), _mean_chars(rows)
    units, _ = evaluate.generation_units([w for w in hp if w["character"] in held], zero,
                                         cfg["generate"]["dpg"]["n_replies"], sft["context_turns"])
    return {**f, "dpg_units": len(units), "dpg_unit_contexts": sum(len(u["contexts"]) for u in units)}


def persllm_facts(cfg: dict, root: Path) -> dict:
    """Sources, inputs, answers, the split and the generation requests as 01/05/11 build them (every teacher reply
    accepted, none deduplicated), and how much retrieved material an answer prompt holds."""
    from lib.persllm import data, evaluate, label

    p, lp = cfg["scrape"]["persllm"], cfg["label"]["persllm"]
    stages = data.check_stages(p["stages"])
    lines = data.load_material(root / p["hp_dir"], dict(p["characters"]), stages)
    sources, _ = data.character_sources(data.segments(lines[lines["stage"] != ""], turns=p["segment_turns"]),
                                        dict(p["characters"]), stages, p["max_sources_per_stage"],
                                        min_own_turns=p["min_own_turns"], seed=p["seed"])
    inputs, own = label.input_records(sources), data.speeches(lines)
    available: dict[str, set] = {}
    for src in sources:
        available.setdefault(src["character"], set()).add(src["stage"])
    words = " ".join(["word"] * S["persllm_input_words"])
    answers = label.answer_records([{**i, "text": words} for i in inputs], available, lp["answer_other_stage"])
    split = data.split_inputs([i["id"] for i in inputs], lp["test_fraction"], lp["split_seed"])
    test = [{**i, "input": words} for i in inputs if split[i["id"]] == "test"]
    names = {src["character"]: src["name"] for src in sources}
    reqs = evaluate.requests(test, names, available, stages, cfg["generate"]["persllm"]["n_samples"])
    f = {"persllm_sources": len(sources), "persllm_inputs": len(inputs), "persllm_answers": len(answers),
         "persllm_answers_per_input": round(len(answers) / len(inputs), 3),
         "persllm_source_chars": round(mean(len(src["text"]) for src in sources)),
         "persllm_train_inputs": sum(v == "train" for v in split.values()), "persllm_test_inputs": len(test),
         "persllm_requests_per_model": len(reqs),
         "persllm_system_chars": len(config.read_text(cfg["sft"]["persllm"]["system_template"]))}
    for kind, texts, k, cap in (("sources", sources, lp.get("retrieve_k"), lp.get("knowledge_words")),
                                ("lines", own, lp.get("style_k"), lp.get("style_words"))):
        cell: dict[tuple, int] = {}
        for x in texts:
            cell[(x["character"], x["stage"])] = cell.get((x["character"], x["stage"]), 0) + len(x["text"].split())
        per_text = mean(len(x["text"].split()) for x in texts)
        f[f"persllm_answer_{kind}_words"] = round(mean(min(
            cell.get((a["character"], a["stage"]), 0), math.inf if k is None else k * per_text,
            math.inf if cap is None else cap) for a in answers))
    return f


def mirror_facts(cfg: dict) -> dict:
    """What the paper profile's data look like, counted on the ../shared/data mirror with the repository's own
    loaders and prompt builders (CPU only, a few seconds)."""
    root = config.data_path(cfg, ".")
    friends = config.data_path(cfg, cfg["classifier"]["external_path"])
    from lib import corpora

    return {**big5chat_facts(cfg, root), **pchat_facts(cfg, root), **dpg_facts(cfg, root), **persllm_facts(cfg, root),
            "friends_chars": int(corpora.load_friends_persona(friends).text.str.len().sum())}


# --------------------------------------------------------------------------------------------------- stage estimators
def est_models(cfg: dict, f: dict) -> dict:
    specs = sorted(set(config.model_specs(cfg).values()) | {cfg["label"]["persllm"]["encoder"]})
    gb = sum(n * b / 1e9 for m, (n, b) in DOWNLOADS.items() if m in specs)
    return stage([part(f"download {len(specs)} models into the HF cache", "network", 0, gb * 1e3 / K["download_mb_s"],
                       "download_mb_s")], 0, gb, f"{', '.join(specs)}",
                 "00_models only records the ids; the weights land in the HF cache on first use (parameters x bytes "
                 "of the published weights)")


def est_classifier(cfg: dict, f: dict) -> dict:
    p = cfg["classifier"]
    train_tok, test_tok = (tok(S[k] * 1e6) for k in ("pandora_train_mb", "pandora_test_mb"))
    params = DOWNLOADS[cfg["models"]["classifier_encoder"]][0]
    parts = [part(f"fine-tune {p['num_train_epochs']} epochs", "gpu", train_tok * p["num_train_epochs"],
                  train_tok * p["num_train_epochs"] * K["pad_overhead"] / K["encoder_train_tok_s"],
                  "encoder_train_tok_s", K["encoder_train_tok_s"]),
             score("score PANDORA test + FriendsPersona", test_tok + tok(f["friends_chars"]), "encoder_tok_s")]
    gpu = params * K["optimizer_bytes"] / 1e9 + p["per_device_train_batch_size"] * p["max_seq_length"] * K[
        "enc_act_mb"] / 1e3 + K["cuda_overhead_gb"]
    return stage(parts, gpu, params * 4 / 1e9, f"PANDORA train CSV ({S['pandora_train_mb']} MB) x "
                 f"{p['num_train_epochs']} epochs, batch {p['per_device_train_batch_size']} x {p['max_seq_length']}",
                 "tokens = CSV bytes / chars_per_token (Hub size, not mirrored); memory: full fp32 fine-tune "
                 "(optimizer_bytes/param) + batch x max_seq_length x enc_act_mb; disk: the fine-tuned encoder, fp32")


def est_scrape_jic(cfg: dict, f: dict) -> dict:
    posts, tokens = S["journaling_posts"], S["journaling_posts"] * S["journal_entry_tokens"]
    return stage([part(f"PullPush pages of 100, {posts:,} posts", "network", 0,
                       posts / 100 * K["pullpush_s_per_page"], "pullpush_s_per_page")], 0,
                 2 * jsonl_gb(posts, tokens / posts * K["chars_per_token"]), f"{posts:,} r/Journaling posts (assumed)",
                 "size not in params (max_items null) nor in the mirror: journaling_posts assumed; raw + cleaned JSONL")


def est_cluster_jic(cfg: dict, f: dict) -> dict:
    p, posts = cfg["cluster"]["jic"], S["journaling_posts"]
    tokens = posts * min(S["journal_entry_tokens"], p["max_seq_length"])
    return stage([score(f"embed {posts:,} entries ({cfg['models']['embedder']})", tokens, "encoder_tok_s")],
                 DOWNLOADS[cfg["models"]["embedder"]][0] * 4 / 1e9 + K["cuda_overhead_gb"] + 1,
                 posts * 1024 * 4 / 1e9 + jsonl_gb(posts, tokens / posts * K["chars_per_token"]),
                 f"{posts:,} entries x {S['journal_entry_tokens']} tok", "embeddings.npy: entries x 1024 floats")


def est_filter_jic(cfg: dict, f: dict) -> dict:
    p, posts = cfg["filter"]["jic"], S["journaling_posts"]
    return stage([score(f"classifier on {posts:,} entries", posts * S["journal_entry_tokens"], "encoder_tok_s")],
                 DOWNLOADS[cfg["models"]["classifier_encoder"]][0] * 4 / 1e9 + K["cuda_overhead_gb"] + 1,
                 jsonl_gb(p["n_pairs"], words_chars(2 * p["journal_words"])) + jsonl_gb(
                     posts, S["journal_entry_tokens"] * K["chars_per_token"]),
                 f"{posts:,} entries; {p['n_pairs']:,} pairs of {p['journal_words']}-word journals",
                 "pairs.jsonl: n_pairs x 2 journals of journal_words")


def jic_row_tok(cfg: dict, raft: bool) -> float:
    """Tokens of one JIC SFT row: system prompt, the mean history of targets 1..n_turns-1 (n_turns / 2 turns of
    max_words), the target turn, and RAFt's journal segments."""
    s, p = cfg["synthesize"]["jic"], cfg["sft"]["jic"]
    turn = words_tok(s["max_words"]) + 5
    history = (s["n_turns"] / 2) * turn
    extra = words_tok(p["raft"]["top_k"] * p["raft"]["segment_words"]) if raft else 0
    return CHAT_OVERHEAD + tok(len(config.read_text(p["system_prompt"]).strip())) + history + turn + extra


def est_synthesize_jic(cfg: dict, f: dict) -> dict:
    s, n = cfg["synthesize"]["jic"], cfg["filter"]["jic"]["n_pairs"]
    prompt = tok(len(config.read_text(s["system_prompt"])) + len(config.read_text(s["template"]))) + words_tok(
        2 * cfg["filter"]["jic"]["journal_words"]) + CHAT_OVERHEAD
    pt, bill = teacher(f"{n:,} dialogues (whole mode)", n, prompt, s["max_new_tokens"], s)
    return stage([pt], 0, jsonl_gb(n, words_chars(s["n_turns"] * s["max_words"]) + 200),
                 f"{n:,} requests x ({prompt:.0f} prompt + <= {s['max_new_tokens']} new) tok", "requests = "
                 "filter.jic.n_pairs (every pair accepted); prompt = system + template + 2 journals of journal_words; "
                 f"replies are ~{words_tok(s['n_turns'] * s['max_words']):.0f} tok (n_turns x max_words) of the "
                 "max_new_tokens billed as the bound", bill=bill)


def est_sft_jic(recipe: str):
    def est(cfg: dict, f: dict) -> dict:
        p, n = cfg["sft"]["jic"], cfg["filter"]["jic"]["n_pairs"]
        rows = n * (1 - p["test_fraction"]) * (cfg["synthesize"]["jic"]["n_turns"] - 1)
        row_tok = jic_row_tok(cfg, recipe == "raft")
        t = lora_train(recipe, rows, row_tok, p)
        evals = score("eval loss, base and tuned", 2 * rows / (1 - p["test_fraction"]) * p["test_fraction"] * row_tok)
        return stage([t["part"], evals], t["gpu_gb"], t["disk_gb"], f"{rows:,.0f} rows x {row_tok:.0f} tok, "
                     f"{p['args']['num_train_epochs']} epoch, NF4 QLoRA r {p['lora']['r']}",
                     "rows = dialogues x (n_turns - 1) x (1 - test_fraction); row = system + mean history + turn"
                     f"{' + top_k RAFt segments' if recipe == 'raft' else ''} (max_words x tokens_per_word)",
                     peak_gb=t["peak_gb"], loads=1)
    return est


def est_generate_jic(cfg: dict, f: dict) -> dict:
    g, p = cfg["generate"]["jic"], cfg["sft"]["jic"]
    n = min(g["max_dialogues"], cfg["filter"]["jic"]["n_pairs"] * p["test_fraction"])
    plain = CHAT_OVERHEAD + (g["n_prefix_turns"]) * (words_tok(cfg["synthesize"]["jic"]["max_words"]) + 5)
    raft = plain + words_tok(p["raft"]["top_k"] * p["raft"]["segment_words"])
    parts = [generate(f"{name}: {n:,.0f} replies", n, pt, g["max_new_tokens"], g["batch_size"])
             for name, pt in (("base", plain), ("lora", plain), ("raft", raft))]
    return stage(parts, infer_gb(g["batch_size"], raft + g["max_new_tokens"], NF4_GB), jsonl_gb(3 * n, 1500),
                 f"3 systems x {n:,.0f} dialogues x <= {g['max_new_tokens']} new tok, batch {g['batch_size']}",
                 "NF4 base as trained; prompt = 8 prefix turns (+ RAFt segments)", loads=3)


def est_eval_jic(cfg: dict, f: dict) -> dict:
    n = min(cfg["generate"]["jic"]["max_dialogues"], cfg["filter"]["jic"]["n_pairs"] * cfg["sft"]["jic"][
        "test_fraction"])
    reply, ref = cfg["generate"]["jic"]["max_new_tokens"], words_tok(cfg["synthesize"]["jic"]["max_words"])
    tokens = 3 * n * (reply + ref) + 4 * n * reply  # BERTScore of reply and reference; classifier on 4 systems
    return stage([score("BERTScore + trait classifier", tokens, "encoder_tok_s")], 3.0, 0.001,
                 f"{n:,.0f} dialogues x 4 systems", "bert-base and deberta-large over short replies")


def est_scrape_big5chat(cfg: dict, f: dict) -> dict:
    s = cfg["scrape"]["big5chat"]
    mb = S["soda_parquet_mb"] + S["big5chat_csv_mb"]
    disk = mb / 1e3 + jsonl_gb(s["max_scenarios"], f["soda_row_chars"]) + jsonl_gb(
        S["big5chat_rows"], S["big5chat_csv_mb"] * 1e6 / S["big5chat_rows"])
    return stage([part("download SODA train + BIG5-CHAT replies", "network", 0, mb / K["download_mb_s"],
                       "download_mb_s")], 0, disk, f"sample {s['max_scenarios']:,} of SODA's 1.19M; "
                 f"{S['big5chat_rows']:,} released replies", "Hub file sizes (SIZES); scenarios.jsonl rows as long as "
                 "the mirror's SODA rows")


def est_dexperts(cfg: dict, f: dict) -> dict:
    p, s = cfg["dexperts"], cfg["scrape"]["big5chat"]
    e = p["expert"]
    units, jobs = s["max_scenarios"] * f["units_per_scenario"], len(p["traits"]) * 2
    prompt = CHAT_OVERHEAD + tok(f["dialogue_prompt_chars"])
    per_row = prompt / jobs + CHAT_OVERHEAD + 25  # a unit's prompt is prefilled once for its jobs; the expert's own
    expert_rows = sum(n - e["heldout_texts"] for k, n in f["expert_texts"].items() if k[0] in p["traits"])
    expert_tok = min(CHAT_OVERHEAD + 25 + words_tok(f["expert_words"]), e["max_seq_length"])
    t = lora_train(f"{jobs} experts", expert_rows, expert_tok, {**e, "load_in_4bit": False})
    sweep = len([a for a in [0.0, *p["sweep_alphas"]] if a != p["alpha"]])
    sweep_units = min(p["sweep_scenarios"], s["max_scenarios"]) * f["units_per_scenario"]
    n_check = jobs * e["heldout_texts"]
    # a step: the GPU's work (base and expert rows) or the host's (measured), whichever is longer
    step = max(K["dexperts_forwards"] * (K["decode_step_s"] + p["batch_size"] * K["decode_row_s"]),
               M["dexperts_host_step_s"])
    parts = [t["part"],
             score(f"held-out check: {n_check:,} texts x 3 scorers", 3 * n_check * expert_tok),
             generate(f"DExperts: {units:,.0f} agent turns x {jobs} trait-levels", units * jobs, per_row,
                      p["max_new_tokens"], p["batch_size"], step_s=step),
             generate(f"alpha sweep: {sweep_units:,.0f} turns x {jobs} x {sweep} more alphas",
                      sweep_units * jobs * sweep, per_row, p["max_new_tokens"], p["batch_size"], step_s=step),
             score("trait classifier on every reply", (units + sweep_units * sweep) * jobs * p["max_new_tokens"],
                   "encoder_tok_s")]
    gpu = max(t["gpu_gb"], infer_gb(2 * p["batch_size"], prompt + p["max_new_tokens"]) + 10 * t["disk_gb"])
    return stage(parts, gpu, 10 * t["disk_gb"] + jsonl_gb(units * jobs, f["dialogue_prompt_chars"] + 300),
                 f"{units * jobs:,.0f} replies ({s['max_scenarios']:,} scenarios x {f['units_per_scenario']} agent "
                 f"turns x {jobs}) x <= {p['max_new_tokens']} new tok, batch {p['batch_size']} (x2 rows); "
                 f"{expert_rows:,} expert texts", "agent turns per scenario (max_units_per_scenario) and prompt "
                 "length: the mirror's 20 SODA scenarios; expert texts: Essays folds; each step decodes base and "
                 "expert rows (dexperts_forwards)",
                 peak_gb=t["peak_gb"], loads=len(p["traits"]) * 2 + 1)


def big5chat_training(cfg: dict, f: dict) -> tuple[float, float, float, str]:
    """(train rows, eval rows, tokens per row, source) of 08/09: BIG5-CHAT's released replies (the paper profile) or
    07's DExperts replies (sft.big5chat.source: generated)."""
    s = cfg["sft"]["big5chat"]
    if s["source"] == "generated":
        n = cfg["scrape"]["big5chat"]["max_scenarios"] * f["units_per_scenario"] * len(cfg["dexperts"]["traits"]) * 2
        row = CHAT_OVERHEAD + 25 + tok(f["dialogue_prompt_chars"]) + cfg["dexperts"]["max_new_tokens"]
        return n * (1 - s["test_fraction"]), n * s["test_fraction"], row, "07's DExperts replies"
    r = cfg["scrape"]["big5chat"]["released"]
    cell = S["big5chat_rows"] / 10
    train = cell * (1 - r["test_fraction"]) - f["prompted"] / 10
    evals = cell * r["test_fraction"]
    train, evals = (min(n, cap) if cap else n for n, cap in ((train, s["max_train_per_cell"]),
                                                             (evals, s["max_eval_per_cell"])))
    row = CHAT_OVERHEAD + 25 + tok(f["neutral_prompt_chars"] + f["reply_chars"])
    return 10 * train, 10 * evals, row, "released replies"


def est_sft_big5chat(cfg: dict, f: dict) -> dict:
    p = cfg["sft"]["big5chat"]
    train_rows, eval_rows, row, source = big5chat_training(cfg, f)
    t = lora_train("SFT", train_rows, row, p)
    return stage([t["part"], score("eval loss, base and tuned", 2 * eval_rows * row)], t["gpu_gb"], t["disk_gb"],
                 f"{train_rows:,.0f} {source} x {row:.0f} tok, LoRA r {p['lora']['r']}",
                 f"released: {S['big5chat_rows']:,} x (1 - test_fraction) - the {f['prompted']} prompted scenarios; "
                 "row = persona instruction + the mirror's mean neutral prompt + reply", peak_gb=t["peak_gb"], loads=1)


def est_dpo_big5chat(cfg: dict, f: dict) -> dict:
    p = cfg["dpo"]["big5chat"]
    train_rows, eval_rows, row, _ = big5chat_training(cfg, f)
    t = lora_train("DPO", train_rows, row, p, "dpo_tok_s")
    return stage([t["part"], score("held-out rewards: policy + reference", 2 * 2 * eval_rows * row)], t["gpu_gb"],
                 t["disk_gb"], f"{train_rows:,.0f} pairs (2 per high/low reply pair) x 2 sequences x {row:.0f} tok",
                 "pairs = train replies (each scenario's high and low give 2 mirrored pairs); memory: chosen + "
                 "rejected per row", peak_gb=t["peak_gb"], loads=2)


def big5chat_replies(cfg: dict, f: dict) -> tuple[int, int]:
    """(held-out scenarios, method-levels) of 11_generate_big5chat's replies: every method at both levels, base once."""
    r = cfg["generate"]["big5chat"]["replies"]
    return (r["scenarios_per_cell"] or f["prompted"] // 10) * 10, sum(1 if m == "base" else 2 for m in r["methods"])


def est_generate_big5chat(cfg: dict, f: dict) -> dict:
    p = cfg["generate"]["big5chat"]
    g, r = p["generation"], p["replies"]
    conditions = 1 + 4 * len(p["traits"]) * 2  # base; instruct, demo, sft, dpo x trait x level
    items = {n: f["items"][n] for n in g["instruments"]}
    prompt = CHAT_OVERHEAD + tok(f["item_prompt_chars"])
    requests = conditions * sum(items.values()) * g["n_runs"]
    scenarios, method_levels = big5chat_replies(cfg, f)
    loglik = conditions * sum(f["items"][n] for n in p["instruments"])
    vllm = p.get("backend") == "vllm"
    reply_prompt = CHAT_OVERHEAD + tok(f["neutral_prompt_chars"])
    if vllm:  # questionnaires and replies through `vllm serve`; log-likelihood stays with the model loaded here
        streams = p["served"]["max_concurrency"]
        parts = [served(f"{n}: {conditions} x {k} items x {g['n_runs']} runs", conditions * k * g["n_runs"], prompt,
                        g["max_new_tokens"], streams) for n, k in items.items()]
        parts.append(served(f"replies: {scenarios} scenarios x {method_levels} method-levels",
                            scenarios * method_levels, reply_prompt, r["max_new_tokens"], streams))
    else:
        parts = [generate(f"{n}: {conditions} x {k} items x {g['n_runs']} runs", conditions * k * g["n_runs"],
                          prompt, g["max_new_tokens"], g["batch_size"], calls=conditions * g["n_runs"])
                 for n, k in items.items()]
        parts.append(generate(f"replies: {scenarios} scenarios x {method_levels} method-levels",
                              scenarios * method_levels, reply_prompt, r["max_new_tokens"], r["batch_size"]))
    parts.append(score(f"log-likelihood: {loglik:,} items x 5 options", loglik * (prompt + 5)))
    gpu = infer_gb(g["batch_size"], prompt + g["max_new_tokens"], logit_tokens=p["loglik_batch_size"] * 8)
    share = p["served"].get("gpu_memory_utilization", K["vllm_gpu_share"])
    gpu += share * 80 if vllm else 0
    how = (f"vllm serve at {p['served']['base_url']} on the same GPU ({share:g} of 80 GB) beside the 8B "
           "loaded here for log-likelihood" if vllm else f"HF generate, batch {g['batch_size']}")
    return stage(parts, gpu, jsonl_gb(requests + scenarios * method_levels, 600),
                 f"{conditions} conditions x {sum(items.values())} items x {g['n_runs']} runs = {requests:,} x <= "
                 f"{g['max_new_tokens']} new tok; {how}", "items: the mirror's BFI-44 and IPIP-NEO-120; conditions: "
                 "base + (instruct, demo, sft, dpo) x traits x levels", loads=2 if vllm else 1)


def est_eval_big5chat(cfg: dict, f: dict) -> dict:
    scenarios, method_levels = big5chat_replies(cfg, f)
    n = scenarios * method_levels
    return stage([score("trait classifier on the replies", n * cfg["generate"]["big5chat"]["replies"][
        "max_new_tokens"], "encoder_tok_s")], 3.0, 0.001, f"{n:,} replies", "TF-IDF judge on the CPU; deberta-large "
                 "classifier")


def est_reasoning(cfg: dict, f: dict) -> dict:
    p = cfg["reasoning"]["big5chat"]
    conditions = sum(1 if m == "base" else 2 * len(p["traits"]) for m in p["methods"])
    tasks = [t for t in REASONING if t in p["tasks"] + p["hub_tasks"]]
    parts = []
    for t in tasks:
        items, forwards, prompt = REASONING[t]
        cap = p["max_items_gsm8k"] if t == "gsm8k" else p["max_items"]
        items = min(items, cap) if cap else items
        if t == "gsm8k":
            parts.append(generate(f"gsm8k: {conditions} x {items:,} x <= {p['max_gen_toks'] or 256} new tok",
                                  conditions * items, prompt + CHAT_OVERHEAD, p["max_gen_toks"] or 256,
                                  p["batch_size"], calls=conditions))
        else:
            parts.append(score(f"{t}: {conditions} x {items:,} x {forwards} forwards",
                               conditions * items * forwards * (prompt + CHAT_OVERHEAD)))
    gpu = infer_gb(p["batch_size"], 1200, logit_tokens=p["batch_size"] * 400)  # GSM8K's KV; TruthfulQA's logits
    weight_sets = {m if m in ("sft", "dpo") else "base" for m in p["methods"]}  # one harness model per weight set
    return stage(parts, gpu, jsonl_gb(conditions * sum(REASONING[t][0] for t in tasks), 2000),
                 f"{conditions} conditions x {len(tasks)} tasks (lm-evaluation-harness, batch {p['batch_size']})",
                 "items: the mirror's reasoning/README.md (GPQA 448 from the Hub); prompt tokens per task assumed; "
                 "GSM8K decodes up to the harness's 256 tokens", loads=len(weight_sets))


def pchat_sizes(cfg: dict, f: dict) -> dict:
    """Dialogues and rows of PersonalityChat on the paper profile (Hub sizes, the mirror's dialogue shape)."""
    s, sp = cfg["scrape"]["pchat"], cfg["synthesize"]["pchat"]
    train = S["personachat_train_rows"] // 2 if s["max_train"] is None else s["max_train"]
    test = S["personachat_valid_rows"] // 2 if s["max_test"] is None else s["max_test"]
    turns, synth_turns = f["pchat_turns_per_dialogue"], (sp["min_turns"] + sp["n_turns"]) / 2
    rows = {"p": train * (turns - 1), "pt": train * (synth_turns - 1)}
    rows["ppt"] = rows["p"] + rows["pt"]
    return {"train": train, "test": test, "turns": turns, "synth_turns": synth_turns, "rows": rows}


def est_scrape_pchat(cfg: dict, f: dict) -> dict:
    z = pchat_sizes(cfg, f)
    return stage([part("download PersonaChat (ConvAI2) parquet", "network", 0,
                       S["personachat_parquet_mb"] / K["download_mb_s"], "download_mb_s")], 0,
                 S["personachat_parquet_mb"] / 1e3 + jsonl_gb(z["train"] + z["test"], 2500),
                 f"{z['train']:,} train + {z['test']} test dialogues (sides joined) + {f['pchat_human_dialogues']:,} "
                 "human test", "Hub row counts (SIZES); human test set from the mirror")


def est_label_pchat(cfg: dict, f: dict) -> dict:
    p = cfg["label"]["pchat"]
    n = S["personas"] * (1 if p["mode"] == "whole" else 5)
    prompt = CHAT_OVERHEAD + tok(f["pchat_label_prompt_chars"])
    pt, bill = teacher(f"{n:,} personas", n, prompt, p["max_new_tokens"], p)
    return stage([pt], 0, jsonl_gb(n, 1200), f"{n:,} requests x ({prompt:.0f} + <= {p['max_new_tokens']}) tok",
                 "requests = unique personas (SIZES: assumed); prompt from the template and the mirror's personas",
                 bill=bill)


def est_synthesize_pchat(cfg: dict, f: dict) -> dict:
    p, z = cfg["synthesize"]["pchat"], pchat_sizes(cfg, f)
    n = z["train"] + z["test"]
    prompt = CHAT_OVERHEAD + tok(f["pchat_synth_prompt_chars"])
    pt, bill = teacher(f"{n:,} persona pairs (whole mode)", n, prompt, p["max_new_tokens"], p)
    return stage([pt], 0, 2 * jsonl_gb(n, words_chars(z["synth_turns"] * p["max_words"]) + 800),
                 f"{n:,} requests x ({prompt:.0f} + <= {p['max_new_tokens']}) tok",
                 "one dialogue per PersonaChat pair (train + test); prompt: the templates with the mirror's personas",
                 bill=bill)


def est_sft_pchat(recipe: str):
    def est(cfg: dict, f: dict) -> dict:
        p, z = cfg["sft"]["pchat"], pchat_sizes(cfg, f)
        a = p["args"]
        rows = z["rows"][recipe] if p["max_rows"] is None else min(p["max_rows"], z["rows"][recipe])
        row = min(tok(f["pchat_row_chars"]), p["max_seq_length"] + p["max_target_length"])
        steps = math.ceil(rows / (a["per_device_train_batch_size"] * a["gradient_accumulation_steps"])) * a[
            "num_train_epochs"]
        trained = lora_params(p["lora"]["r"], p["lora"]["target_modules"], BART_MODULES, BART_ATTENTION_BLOCKS)
        seconds = max(steps * K["small_step_s"], steps * a["per_device_train_batch_size"] * row * K["pad_overhead"]
                      / K["encoder_train_tok_s"])
        tokens = steps * a["per_device_train_batch_size"] * row
        parts = [part(f"{steps:,} steps x {a['per_device_train_batch_size']} rows x {row:.0f} tok", "gpu", tokens,
                      seconds, "small_step_s", tokens / seconds),
                 score("eval loss", 64 * row, "encoder_tok_s")]
        return stage(parts, 4.0, trained * 2 / 1e9, f"{rows:,.0f} rows ({recipe.upper()}) x {a['num_train_epochs']}"
                     f" epochs, {p['model']} LoRA r {p['lora']['r']}", "rows = dialogues x (turns - 1): PersonaChat "
                     "turns from the mirror, synthesized ones (min_turns + n_turns) / 2", peak_gb=ckpt_gb(trained))
    return est


def est_generate_pchat(cfg: dict, f: dict) -> dict:
    p, z = cfg["generate"]["pchat"], pchat_sizes(cfg, f)
    contexts = z["test"] * (z["turns"] - 1) + z["test"] * (z["synth_turns"] - 1) + f["pchat_human_contexts"]
    contexts = min(contexts, 3 * p["max_contexts"]) if p["max_contexts"] else contexts
    replies = contexts if p["reply_contexts"] is None else min(contexts, 3 * p["reply_contexts"])
    probes = min(p["control_contexts"], z["test"] * (z["synth_turns"] - 1)) * len(p["control_traits"]) * 2 * p[
        "control_seeds"] * 2
    row = tok(f["pchat_row_chars"])
    step = K["small_decode_step_s"]  # bart-base: a fixed step time
    parts = [score(f"reference perplexity: 4 models x {contexts:,.0f} contexts", 4 * contexts * row, "encoder_tok_s"),
             generate(f"replies: 4 models x {replies:,.0f}", 4 * replies, 0, p["max_new_tokens"], p["batch_size"],
                      calls=12, step_s=step),
             generate(f"trait-control probes: {probes:,}", probes, 0, p["max_new_tokens"], p["batch_size"],
                      calls=2 * p["control_seeds"], step_s=step)]
    return stage(parts, 4.0, jsonl_gb(4 * replies + probes, 600), f"4 models x {contexts:,.0f} contexts (P, PT, "
                 f"human) + {probes:,} probes, <= {p['max_new_tokens']} new tok", "bart-base (small_decode_step_s); "
                 "contexts = test dialogues x (turns - 1); human contexts from the mirror")


def est_eval_pchat(cfg: dict, f: dict) -> dict:
    z = pchat_sizes(cfg, f)
    utterances = (z["train"] + z["test"]) * z["synth_turns"] + 2 * f["pchat_human_dialogues"] * z["turns"]
    return stage([score("MiniLM MCN embeddings", utterances * 20, "encoder_tok_s")], 2.0, 0.001,
                 f"{utterances:,.0f} utterances", "Table 3 statistics on the CPU; MiniLM on the GPU")


def est_scrape_dpg(cfg: dict, f: dict) -> dict:
    return stage([part("film tables and FriendsPersona (mirror)", "cpu", 0, 10, "-")], 0,
                 jsonl_gb(f["dpg_windows"] + f["dpg_friends"], 3000), f"{f['dpg_windows']} windows, "
                 f"{f['dpg_friends']} FriendsPersona scenes", "counted with lib.dpg on the mirror")


def est_label_dpg(cfg: dict, f: dict) -> dict:
    p = cfg["label"]["dpg"]
    hp, fr = f["dpg_windows"] * 5 * p["repeats"], f["dpg_friends"] * 5 * p["repeats"] * 2
    prompt = (hp * tok(f["dpg_assess_chars"]) + fr * tok(f["dpg_friends_assess_chars"])) / (hp + fr) + CHAT_OVERHEAD
    pt, bill = teacher(f"{hp + fr:,} assessments", hp + fr, prompt, p["max_new_tokens"], p)
    return stage([pt], 0, jsonl_gb(hp + fr, 800), f"({f['dpg_windows']} windows + {f['dpg_friends']} scenes x 2 "
                 f"prompts) x 5 traits x {p['repeats']} repeats", "windows and prompts built by lib.dpg on the mirror",
                 bill=bill)


def est_sft_dpg(cfg: dict, f: dict) -> dict:
    p = cfg["sft"]["dpg"]
    rows = f["dpg_train_rows"] if p["max_rows"] is None else min(p["max_rows"], f["dpg_train_rows"])
    row = CHAT_OVERHEAD + tok(f["dpg_train_row_chars"])
    t = lora_train("SFT", rows, row, p)
    return stage([t["part"], score("eval loss, base and tuned", 2 * f["dpg_heldout_rows"] * row)], t["gpu_gb"],
                 t["disk_gb"], f"{rows:,} reply rows x {row:.0f} tok x {p['args']['num_train_epochs']} epochs, no "
                 "gradient checkpointing", "rows built by lib.dpg on the mirror (every window kept)",
                 peak_gb=t["peak_gb"], loads=1)


def est_hypernet_dpg(cfg: dict, f: dict) -> dict:
    p, h = cfg["hypernet"]["dpg"], cfg["hypernet"]["dpg"]["hypernet"]
    row = CHAT_OVERHEAD + tok(f["dpg_train_row_chars"])
    a = p["args"]
    trained = (h["hidden"] + h["layer_dim"]) * sum(h["r"] * sum(LLAMA_MODULES[m]) for m in h["target_modules"]) + \
        h["hidden"] * 4096 * 2
    row = min(row, p["max_seq_length"])
    t = train("hypernetwork", f["dpg_train_rows"], row, a, "hf_train_tok_s")
    micro = a["per_device_train_batch_size"] * p["max_seq_length"]
    saves = a["max_steps"] // a["save_steps"]
    return stage([t, score("held-out: own and shuffled prompts", 2 * f["dpg_heldout_rows"] * row)],
                 train_gb(W16_GB, trained, micro, False), trained * 4 / 1e9,
                 f"{a['max_steps']:,} steps x {a['per_device_train_batch_size']} rows x {row:.0f} tok; {saves} saves "
                 "(2 kept)", "hypernetwork size from hidden, layer_dim, r and the targeted "
                 "projections; checkpoints: weights + AdamW moments", peak_gb=2 * trained * 12 / 1e9, loads=1)


def est_generate_dpg(cfg: dict, f: dict) -> dict:
    g = cfg["generate"]["dpg"]
    units = f["dpg_units"] if g["max_units"] is None else min(g["max_units"], f["dpg_units"])
    per_unit = f["dpg_unit_contexts"] / max(f["dpg_units"], 1)
    replies = (units + g["n_new_vectors"]) * per_unit
    prompt = CHAT_OVERHEAD + tok(f["dpg_train_row_chars"])
    batch = max(1, g["batch_size"] // g["n_replies"]) * g["n_replies"]
    parts = [generate(f"{m}: {replies:,.0f} replies", replies, prompt, g["max_new_tokens"], batch,
                      slowdown=K["hypernet_decode"] if m == "dpg" else 1.0)
             for m in ("base", "prompt", "lora_sft", "dpg")]
    return stage(parts, infer_gb(batch, prompt + g["max_new_tokens"]), jsonl_gb(4 * replies, 400),
                 f"4 methods x ({units} held-out + {g['n_new_vectors']} new) units x {per_unit:.1f} contexts x <= "
                 f"{g['max_new_tokens']} new tok", "units from lib.dpg.evaluate on the mirror; a batch holds "
                 "batch_size // n_replies units", loads=4)


def est_eval_dpg(cfg: dict, f: dict) -> dict:
    p, lab = cfg["eval"]["dpg"], cfg["label"]["dpg"]
    g = cfg["generate"]["dpg"]
    units = (f["dpg_units"] if g["max_units"] is None else min(g["max_units"], f["dpg_units"])) + g["n_new_vectors"]
    per_unit = f["dpg_unit_contexts"] / max(f["dpg_units"], 1)
    n = 4 * units * 5 * lab["repeats"]
    pt, bill = teacher(f"P.S.D.C.: {n:,} assessments", n, CHAT_OVERHEAD + tok(f["dpg_assess_chars"]),
                       lab["max_new_tokens"], lab)
    row = CHAT_OVERHEAD + tok(f["dpg_train_row_chars"])
    parts = [pt, score("fluency, coherency, consistency (8B, log-likelihood)", 4 * units * per_unit * 3 * row),
             score("trait classifier", 4 * units * per_unit * g["max_new_tokens"], "encoder_tok_s")]
    return stage(parts, infer_gb(p["batch_size"], p["max_seq_length"], logit_tokens=p["batch_size"] * 8), 0.01,
                 f"4 methods x {units} units: {n:,} teacher assessments + local judge", "the assessor is label.dpg's "
                 "endpoint; the judge the local 8B", bill=bill, loads=1)


def est_scrape_persllm(cfg: dict, f: dict) -> dict:
    return stage([part("film tables (mirror)", "cpu", 0, 10, "-")], 0, jsonl_gb(f["persllm_sources"], 600),
                 f"{f['persllm_sources']:,} sources of 6 characters x 2 stages", "counted with lib.persllm on the "
                 "mirror")


def est_label_persllm(cfg: dict, f: dict) -> dict:
    p = cfg["label"]["persllm"]
    input_tpl = mean(len(config.read_text(p[f"{k}_template"])) for k in ("question", "thought", "error"))
    input_prompt = CHAT_OVERHEAD + tok(input_tpl + f["persllm_source_chars"])
    extras = len(config.read_text(p["examples_template"])) if p.get("examples_template") else 0
    extras += len(config.read_text(p["error_note_template"])) / 3 if p.get("error_note_template") else 0
    answer_prompt = CHAT_OVERHEAD + tok(len(config.read_text(p["answer_template"])) + extras) + words_tok(
        f["persllm_answer_sources_words"] + f["persllm_answer_lines_words"] + S["persllm_input_words"])
    pi, bi = teacher(f"inputs: {f['persllm_inputs']:,}", f["persllm_inputs"], input_prompt, p["input_max_new_tokens"],
                     p)
    pa, ba = teacher(f"answers: {f['persllm_answers']:,}", f["persllm_answers"], answer_prompt, p["max_new_tokens"], p)
    bill = {"endpoint": bi["endpoint"], **{k: bi[k] + ba[k] for k in ("requests", "prompt_tokens",
                                                                     "completion_tokens_max")}}
    enc = score(f"retrieval and dedup ({p['encoder']})", (f["persllm_inputs"] + f["persllm_answers"]) * 60,
                "encoder_tok_s")
    return stage([pi, pa, enc], 2.0, jsonl_gb(f["persllm_inputs"] + f["persllm_answers"], 2600),
                 f"{f['persllm_inputs']:,} inputs x ({input_prompt:.0f} + <= {p['input_max_new_tokens']}) + "
                 f"{f['persllm_answers']:,} answers x ({answer_prompt:,.0f} + <= {p['max_new_tokens']}) tok",
                 "sources x 3 input types; answers in own + other stage, every reply accepted (lib.persllm on the "
                 "mirror); answer prompt = templates + retrieved sources and own lines within retrieve_k/"
                 "knowledge_words and style_k/style_words + the input", bill=bill)


def persllm_row_tok(cfg: dict, f: dict) -> float:
    """One PersLLM row: system prompt, stage token + input, and an answer as long as the teacher may write."""
    return CHAT_OVERHEAD + tok(f["persllm_system_chars"]) + 2 + words_tok(S["persllm_input_words"]) + cfg["label"][
        "persllm"]["max_new_tokens"]


def est_sft_persllm(cfg: dict, f: dict) -> dict:
    p, mix = cfg["sft"]["persllm"], cfg["sft"]["persllm"].get("general") or {}
    personified = f["persllm_train_inputs"] * f["persllm_answers_per_input"] * p.get("repeat", 1)
    general = round(mix.get("share", 0.0) / (1 - mix.get("share", 0.0)) * personified)
    row = persllm_row_tok(cfg, f)
    rows = personified + general
    mixed = min((personified * row + general * S["general_row_tokens"]) / rows, p["max_seq_length"])
    t = lora_train("SFT", rows, mixed, p)
    eval_rows = f["persllm_test_inputs"] * f["persllm_answers_per_input"]
    parts = [t["part"], score("eval loss + stage probe", 3 * eval_rows * row)]
    download = S["ultrachat_shard_mb"] / 1e3 if mix.get("dataset") else 0
    return stage(parts, t["gpu_gb"], t["disk_gb"] + download, f"{personified:,.0f} personified rows (x "
                 f"{p.get('repeat', 1)}) + {general:,} general rows x {mixed:.0f} tok, LoRA r {p['lora']['r']}",
                 "personified rows = train inputs x answered stages x repeat, answers at label.persllm.max_new_tokens"
                 " (bound); general rows = share / (1 - share) of them (+ the UltraChat shard on disk); the "
                 "personified base (16 GB) is written and deleted", peak_gb=t["peak_gb"] + W16_GB, loads=3)


def est_dpo_persllm(cfg: dict, f: dict) -> dict:
    p = cfg["dpo"]["persllm"]
    per_answer = 2 if p["stage_pairs"] else 1
    pairs = f["persllm_train_inputs"] * f["persllm_answers_per_input"] * per_answer
    row = persllm_row_tok(cfg, f)
    t = lora_train("DPO", pairs, row, p, "dpo_tok_s")
    evals = f["persllm_test_inputs"] * f["persllm_answers_per_input"] * per_answer
    return stage([t["part"], score("held-out rewards: policy + reference", 2 * 2 * evals * row)], t["gpu_gb"],
                 t["disk_gb"], f"{pairs:,.0f} pairs (character + stage) x 2 sequences x {row:.0f} tok",
                 "pairs per answered stage: one character pair, one stage pair; the merged SFT model (16 GB) is "
                 "written and deleted", peak_gb=t["peak_gb"] + W16_GB, loads=3)


def est_generate_persllm(cfg: dict, f: dict) -> dict:
    g = cfg["generate"]["persllm"]
    requests = f["persllm_requests_per_model"]
    if g["max_items"] is not None:
        requests *= min(1.0, g["max_items"] / f["persllm_test_inputs"])
    prompt = CHAT_OVERHEAD + tok(f["persllm_system_chars"]) + 2 + words_tok(S["persllm_input_words"])
    vllm = g.get("backend") == "vllm"
    parts = [served(f"{m}: {requests:,.0f} requests", requests, prompt, g["max_new_tokens"],
                    g["served"]["max_concurrency"]) if vllm else
             generate(f"{m}: {requests:,.0f} requests", requests, prompt, g["max_new_tokens"], g["batch_size"])
             for m in ("base", "sft", "dpo")]
    gpu = g["served"].get("gpu_memory_utilization", K["vllm_gpu_share"]) * 80 if vllm else \
        infer_gb(g["batch_size"], prompt + g["max_new_tokens"])
    # vllm: the personified base (stage tokens added) is written to served.folder for the server, and kept
    disk = jsonl_gb(3 * requests, 2200) + (W16_GB if vllm else 0)
    return stage(parts, gpu, disk, f"3 models x {requests:,.0f} requests x <= {g['max_new_tokens']} new tok, " +
                 (f"vllm serve, {g['served']['max_concurrency']} streams; the personified base in "
                  f"{g['served']['folder']}" if vllm else f"HF generate, batch {g['batch_size']}"),
                 f"{f['persllm_test_inputs']:,} test inputs x (n_samples own + other stage + other characters) "
                 "(lib.persllm.evaluate on the mirror)", loads=3)


def est_eval_persllm(cfg: dict, f: dict) -> dict:
    p, g = cfg["eval"]["persllm"], cfg["generate"]["persllm"]
    replies = 3 * f["persllm_test_inputs"]
    judge = replies * (len(p["aspects"]) + 1 / 3)
    row = CHAT_OVERHEAD + 150 + 2 * g["max_new_tokens"]
    return stage([score(f"judge: {judge:,.0f} chats (8B, log-likelihood)", judge * row)],
                 infer_gb(p["batch_size"], row, logit_tokens=p["batch_size"] * 8), 0.001,
                 f"{replies:,} own replies x ({len(p['aspects'])} aspects + error inputs)",
                 "one forward per chat (single-token options); chat = template + reference + reply", loads=1)


ESTIMATORS = {
    "00_models": est_models, "03_classifier": est_classifier,
    "01_scrape_jic": est_scrape_jic, "02_cluster_jic": est_cluster_jic, "04_filter_jic": est_filter_jic,
    "06_synthesize_jic": est_synthesize_jic, "08_sft_jic@lora": est_sft_jic("lora"),
    "08_sft_jic@raft": est_sft_jic("raft"), "11_generate_jic": est_generate_jic, "12_eval_jic": est_eval_jic,
    "01_scrape_big5chat": est_scrape_big5chat, "07_dexperts_big5chat": est_dexperts,
    "08_sft_big5chat": est_sft_big5chat, "09_dpo_big5chat": est_dpo_big5chat,
    "11_generate_big5chat": est_generate_big5chat, "12_eval_big5chat": est_eval_big5chat,
    "12_reasoning_big5chat": est_reasoning,
    "01_scrape_pchat": est_scrape_pchat, "05_label_pchat": est_label_pchat, "06_synthesize_pchat": est_synthesize_pchat,
    "08_sft_pchat@p": est_sft_pchat("p"), "08_sft_pchat@pt": est_sft_pchat("pt"),
    "08_sft_pchat@ppt": est_sft_pchat("ppt"), "11_generate_pchat": est_generate_pchat, "12_eval_pchat": est_eval_pchat,
    "01_scrape_dpg": est_scrape_dpg, "05_label_dpg": est_label_dpg, "08_sft_dpg": est_sft_dpg,
    "10_hypernet_dpg": est_hypernet_dpg, "11_generate_dpg": est_generate_dpg, "12_eval_dpg": est_eval_dpg,
    "01_scrape_persllm": est_scrape_persllm, "05_label_persllm": est_label_persllm, "08_sft_persllm": est_sft_persllm,
    "09_dpo_persllm": est_dpo_persllm, "11_generate_persllm": est_generate_persllm,
    "12_eval_persllm": est_eval_persllm,
}


# ------------------------------------------------------------------------------------------------ dvc stages, totals
def dvc_stages(path: Path = ROOT / "dvc.yaml") -> dict[str, list[str]]:
    """Stage name (foreach items as dvc names them: `08_sft_jic@lora`) -> its deps."""
    out = {}
    for name, spec in yaml.safe_load(path.read_text())["stages"].items():
        if "foreach" in spec:
            for item in spec["foreach"]:
                out[f"{name}@{item}"] = [str(d).replace("${item}", str(item)) for d in spec["do"].get("deps", [])]
        else:
            out[name] = [str(d) for d in spec.get("deps", [])]
    return out


def papers_of(stage_name: str, stages: dict[str, list[str]]) -> list[str]:
    """The papers a stage counts towards: its own suffix, or every paper with a stage that reads a shared output."""
    if stage_name in SHARED:
        return [p for p in PAPERS if any(SHARED[stage_name] in deps for s, deps in stages.items()
                                         if s.split("@")[0].endswith(f"_{p}"))]
    return [p for p in PAPERS if stage_name.split("@")[0].endswith(f"_{p}")]


def finish(name: str, row: dict, papers: list[str]) -> dict:
    """Stage row with its sums: hours by where the work runs, tokens, effective GPU rate."""
    hours = {w: round(sum(p["seconds"] for p in row["parts"] if p["where"] == w) / 3600, 3)
             for w in ("gpu", "endpoint", "cpu", "network")}
    timed = [p for p in row["parts"] if p["tok_s"]]
    main = max(timed, key=lambda p: p["seconds"]) if timed else {"tok_s": None, "rate": None}
    return {"stage": name, "papers": papers, **row, "tokens": sum(p["tokens"] for p in row["parts"]),
            "hours": hours, "tok_s": main["tok_s"], "rate": main["rate"]}


def totals(rows: list[dict], paper: str | None = None) -> dict:
    """Sums over a paper's stages (every stage once when paper is None)."""
    mine = [r for r in rows if paper is None or paper in r["papers"]]
    bills = [r["teacher"] for r in mine if r["teacher"]]
    return {"stages": len(mine),
            "hours": {w: round(sum(r["hours"][w] for r in mine), 2) for w in ("gpu", "endpoint", "cpu", "network")},
            "wall_hours": round(sum(sum(r["hours"].values()) for r in mine), 2),
            "peak_gpu_gb": max(r["gpu_gb"] for r in mine), "disk_gb": round(sum(r["disk_gb"] for r in mine), 2),
            "peak_disk_gb": round(sum(r["disk_gb"] for r in mine) + max(r["peak_extra_gb"] for r in mine), 2),
            "tokens": sum(r["tokens"] for r in mine),
            "teacher": {k: sum(b[k] for b in bills) for k in ("requests", "prompt_tokens", "completion_tokens_max")}}


def budget(cfg: dict, f: dict, dvc_path: Path = ROOT / "dvc.yaml") -> dict:
    """Every paper-profile stage of dvc.yaml estimated, with per-paper and overall totals."""
    stages = dvc_stages(dvc_path)
    missing = sorted(set(stages) - set(ESTIMATORS))
    if missing:
        raise KeyError(f"dvc.yaml stages without an estimator in benchmarks/budget.py: {missing}")
    rows = [finish(name, ESTIMATORS[name](cfg, f), papers_of(name, stages)) for name in stages]
    return {"profile": "paper", "device": "1x H100 80 GB (estimate: nothing was run)", "stages": rows,
            "per_paper": {p: totals(rows, p) for p in PAPERS}, "all": totals(rows),
            "assumed": {k: {"value": v, "why": why} for k, (v, why) in ASSUMED.items()},
            "measured": {k: {"value": v, "how": how} for k, (v, how) in MEASURED.items()},
            "sizes": {k: {"value": v, "source": src} for k, (v, src) in SIZES.items()}, "mirror_facts": f}


# ---------------------------------------------------------------------------------------------------------- report
def _num(x: float) -> str:
    return f"{x / 1e9:.2f} G" if x >= 1e9 else f"{x / 1e6:.1f} M" if x >= 1e6 else f"{x / 1e3:.0f} k" if x >= 1e3 \
        else f"{x:.0f}"


def _hours(h: dict) -> str:
    extra = [f"{h[w]:.2f} {w}" for w in ("endpoint", "network", "cpu") if h[w] >= 0.005]
    return f"{h['gpu']:.2f}" + (f" (+ {', '.join(extra)})" if extra else "")


INTRO = ("Written by `python benchmarks/budget.py` (`--check`: is this file current?). Nothing here was run on a "
         "GPU: every number is work counted from `params/paper.yaml`, `dvc.yaml` and the data mirror, divided by an "
         "**assumed, not measured** throughput (listed at the end), except 07's DExperts step, which is host-bound "
         "and takes the host time measured on a CPU (`benchmarks/dexperts_host_overhead.py`) where that is longer. Assumed tok/s: the rate of the stage's longest part (new "
         "tokens/s when decoding or at a teacher endpoint). Hours: on the local H100, then (+) time at a teacher "
         "endpoint, on the network or the CPU. GPU GB: peak on the H100 (0: none; worst case, a batch of "
         "max_seq_length rows). Disk GB: what the stage leaves behind; checkpoints (at most 2, deleted when a stage "
         "completes) and working copies count only in the peak.")
METHOD = ("Tokens: characters / `chars_per_token` or words x `tokens_per_word`, counted on the mirror's data with the "
          "repository's own loaders and prompt builders (SODA agent turns, Essays expert texts, BIG5-CHAT's released "
          "replies and prompts, the questionnaires, XPersona, the film windows and PersLLM sources); Hub data the "
          "mirror lacks is sized from the sizes table. Training: trainer steps x batch x accumulation x tokens per "
          "row (capped at max_seq_length) x `pad_overhead` / the rate. Generation (HF `generate`): ceil(requests / "
          "batch) x max_new_tokens x (`decode_step_s` + batch x `decode_row_s`) (a batch runs to its longest reply: "
          "an upper bound) + prompts / `prefill_tok_s`. Teachers: requests x max_new_tokens / (max_concurrency x "
          "`teacher_stream_tok_s`), no local GPU. Each load of the 8B adds `model_load_s`. GPU memory: weights (8B "
          "bf16 {w16:.1f} GB, NF4 {nf4} GB) + trained parameters x `optimizer_bytes` + batch x max_seq_length x "
          "activations per token (+ KV cache of 128 KiB per token when decoding, fp32 logits when scoring) + "
          "`cuda_overhead_gb`. Disk: LoRA = r x (in + out) x targeted modules x layers x 2 bytes; two checkpoints of "
          "`ckpt_bytes` per trained parameter at peak; JSONL = rows x characters x `json_overhead`.")
TABLE = ["| stage | work | tokens | assumed tok/s | hours on 1xH100 | GPU GB | disk GB | method |",
         "|---|---|---|---|---|---|---|---|"]


def _total_line(t: dict) -> str:
    tb, other = t["teacher"], t["hours"]["network"] + t["hours"]["cpu"]
    bill = (f"; teacher: {tb['requests']:,} requests, {_num(tb['prompt_tokens'])} prompt + <= "
            f"{_num(tb['completion_tokens_max'])} completion tokens" if tb["requests"] else "")
    return (f"**{t['hours']['gpu']:.1f} h** on the H100, {t['hours']['endpoint']:.1f} h at teacher endpoints, "
            f"{other:.1f} h network/CPU ({t['wall_hours']:.1f} h in sequence); peak GPU **{t['peak_gpu_gb']:.1f} GB**; "
            f"disk **{t['disk_gb']:.1f} GB** left, {t['peak_disk_gb']:.1f} GB at peak{bill}.")


def markdown(b: dict) -> str:
    """BUDGET.md: a table per paper with its total, the teacher bill, then how it was estimated."""
    lines = ["# Workstation budget: `paper` profile on one 80 GB H100 (ESTIMATES)", "", INTRO, "", *totals_table(b), ""]
    for paper in PAPERS:
        lines += [f"## {paper}", "", *TABLE]
        for r in (r for r in b["stages"] if paper in r["papers"]):
            rate = f"{r['tok_s']:,} ({r['rate']})" if r["tok_s"] else "—"
            lines.append(f"| {r['stage']} | {r['work']} | {_num(r['tokens'])} | {rate} | {_hours(r['hours'])} | "
                         f"{r['gpu_gb']:.1f}{' **(> 80)**' if r['gpu_gb'] > 80 else ''} | {r['disk_gb']:.2f} "
                         f"(peak +{r['peak_extra_gb']:.2f}) | {r['method']} |")
        total = b["per_paper"][paper]
        lines += ["", f"**Total** ({total['stages']} stages, shared ones once): {_total_line(total)}", ""]
    lines += ["## All five papers (every stage once)", "", _total_line(b["all"]), "",
              ("Teacher stages (billed by tokens; completion at max_new_tokens is an upper bound, repairs of "
               "rejects not counted):"), "",
              "| stage | endpoint | requests | prompt tokens | completion tokens (max) |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['teacher']['endpoint']} | {r['teacher']['requests']:,} | "
              f"{r['teacher']['prompt_tokens']:,} | {r['teacher']['completion_tokens_max']:,} |"
              for r in b["stages"] if r["teacher"]]
    lines += ["", "## How estimated", "", METHOD.format(w16=W16_GB, nf4=NF4_GB), "",
              "| constant | value | why (assumed, not measured) |", "|---|---|---|"]
    lines += [f"| `{k}` | {v['value']:g} | {v['why']} |" for k, v in b["assumed"].items()]
    lines += ["", "| constant | value | how (measured on a CPU) |", "|---|---|---|"]
    lines += [f"| `{k}` | {v['value']:.3g} | {v['how']} |" for k, v in b["measured"].items()]
    lines += ["", "| size | value | source |", "|---|---|---|"]
    lines += [f"| `{k}` | {v['value']:,} | {v['source']} |" for k, v in b["sizes"].items()]
    facts = ", ".join(f"`{k}` {v}" for k, v in b["mirror_facts"].items() if not isinstance(v, dict))
    return "\n".join([*lines, "", f"Mirror facts used: {facts}."]) + "\n"


README = ROOT / "README.md"
MARKERS = ("<!-- budget:start (python benchmarks/budget.py writes this table) -->", "<!-- budget:end -->")


def totals_table(b: dict) -> list[str]:
    """The per-paper totals: the head of BUDGET.md and the README's workstation table."""
    lines = [("| paper | stages | H100 h | endpoint h | network/CPU h | peak GPU GB | disk GB (peak) | teacher "
              "requests | prompt tok | completion tok (max) |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for name, t in [*b["per_paper"].items(), ("all (each stage once)", b["all"])]:
        tb = t["teacher"]
        lines.append(f"| {name} | {t['stages']} | {t['hours']['gpu']:.1f} | {t['hours']['endpoint']:.1f} | "
                     f"{t['hours']['network'] + t['hours']['cpu']:.1f} | {t['peak_gpu_gb']:.1f} | {t['disk_gb']:.1f} "
                     f"({t['peak_disk_gb']:.1f}) | {tb['requests']:,} | {_num(tb['prompt_tokens'])} | "
                     f"{_num(tb['completion_tokens_max'])} |")
    return lines


def with_readme_table(readme: str, b: dict) -> str:
    """README text with the totals table written between the budget markers (which must be there, once each)."""
    start, end = MARKERS
    if readme.count(start) != 1 or readme.count(end) != 1 or readme.index(start) > readme.index(end):
        raise ValueError(f"README.md needs the budget markers once each, in order: {start!r} ... {end!r}")
    head, rest = readme.split(start)
    tail = rest.split(end)[1]
    return "".join([head, start, "\n", "\n".join(totals_table(b)), "\n", end, tail])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if BUDGET.md or the README table is out of date")
    args = parser.parse_args(argv)
    cfg = config.load("paper", check_files=False)
    b = budget(cfg, mirror_facts(cfg))
    text = markdown(b)
    readme = README.read_text()
    if args.check:
        current = OUT_MD.read_text() if OUT_MD.exists() else ""
        if current != text or with_readme_table(readme, b) != readme:
            print(f"{OUT_MD} or the README's budget table is out of date: run python benchmarks/budget.py",
                  file=sys.stderr)
            return 1
        print(f"{OUT_MD} and the README's budget table are current")
        return 0
    OUT_MD.write_text(text)
    README.write_text(with_readme_table(readme, b))
    save_result(b, OUT_JSON)
    return 0


if __name__ == "__main__":
    sys.exit(main())
