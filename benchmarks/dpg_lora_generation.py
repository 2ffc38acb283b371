"""Throughput of DPG decoding: a batch where every sample has its own generated LoRA vs one static peft LoRA.

DPG (lib/dpg/hypernet.py) applies a different low-rank update to each row of a batch (batched matrix products in
`PerSampleLoRA`); the alternative a peft user has is one adapter for the whole batch. Both decode the same prompts
with transformers' `generate`, greedy, exactly `max_new_tokens` tokens per sample (EOS suppressed by
min_new_tokens), r and target modules alike; "base" is the model without any LoRA, the cost floor. The DPG time
includes encoding the personality prompts and the hypernetwork forward, because a new personality needs both.
The goal is dpg/static >= 0.75x tokens/s. Modes run interleaved, the median of `repeats` runs is reported.

    .venv/bin/python benchmarks/dpg_lora_generation.py --n-samples 8 --max-new-tokens 32 --threads 2
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result
from lib.dpg import hypernet as hn  # after the sys.path line above
from lib.models import load_for_inference

MODES = ("dpg", "static", "base")
TURNS = ["How was your day at school?", "What do you think of the new teacher?", "Shall we go to the match tonight?",
         "Why are you always late?", "Tell me about your family.", "What would you do with a day off?"]


def main() -> None:
    """Parse arguments, time the three modes interleaved, print and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/base/gguf-smollm2"))  # made by stage 00_models
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--target-modules", nargs="+", default=["q_proj", "v_proj"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dpg_lora_generation.json"))
    args = parser.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_for_inference(args.model)
    static = get_peft_model(copy.deepcopy(model), LoraConfig(r=args.r, lora_alpha=2 * args.r, lora_dropout=0.0,
                                                             target_modules=args.target_modules,
                                                             init_lora_weights=False)).eval()
    hyper = hn.HyperLoRA.for_model(model, args.target_modules, cond_dim=model.config.hidden_size, r=args.r,
                                   lora_alpha=2 * args.r).eval()
    with torch.no_grad():  # a trained B head is not zero: give it weights so the generated LoRAs change the logits
        for head in hyper.head_b.values():
            head.weight.normal_(0, 1e-3)
    hn.attach(model, hyper.targets)
    chats = [[{"role": "user", "content": TURNS[i % len(TURNS)] + " Answer as yourself." * (i % 3)}]
             for i in range(args.n_samples)]
    personas = [f"Openness {i % 11 - 5}, Extraversion {(3 * i) % 11 - 5}. You are character {i}."
                for i in range(args.n_samples)]
    texts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    tok.padding_side = "left"

    def run(mode: str, new_tokens: int) -> tuple[float, list[str]]:
        start = time.perf_counter()
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
                  "pad_token_id": tok.pad_token_id}
        with torch.no_grad():
            if mode == "static":
                out = static.generate(**enc, **kwargs)
            elif mode == "dpg":
                weights = hyper(hn.encode_prompts(model, tok, personas))
                with hn.lora_weights(model, weights, hyper.scale):
                    out = model.generate(**enc, **kwargs)
            else:
                out = model.generate(**enc, **kwargs)
        seconds = time.perf_counter() - start
        return seconds, tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    for mode in MODES:
        run(mode, 4)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in MODES}
    replies = {}
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit every mode alike
        for mode in MODES:
            seconds, replies[mode] = run(mode, args.max_new_tokens)
            times[mode].append(seconds)
    tokens = args.n_samples * args.max_new_tokens
    result = {"model": str(args.model), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "n_samples": args.n_samples, "max_new_tokens": args.max_new_tokens, "r": args.r,
              "target_modules": args.target_modules, "repeats": args.repeats,
              "hypernet_parameters": sum(p.numel() for p in hyper.parameters())}
    for mode in MODES:
        med = statistics.median(times[mode])
        result[mode] = {"tokens": tokens, "median_seconds": round(med, 3), "all_seconds": [round(t, 3) for t in times[mode]],
                        "tokens_per_s": round(tokens / med, 2)}
    result["dpg_vs_static"] = round(result["dpg"]["tokens_per_s"] / result["static"]["tokens_per_s"], 3)
    result["static_vs_base"] = round(result["static"]["tokens_per_s"] / result["base"]["tokens_per_s"], 3)
    result["dpg_vs_base"] = round(result["dpg"]["tokens_per_s"] / result["base"]["tokens_per_s"], 3)
    result["distinct_dpg_replies"] = len(set(replies["dpg"]))
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(result, args.out)


if __name__ == "__main__":
    main()
