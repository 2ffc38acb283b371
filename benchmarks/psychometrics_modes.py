"""Cost of administering IPIP-NEO-120 to SmolLM2-135M-Instruct: log-likelihood vs generation, per item.

BIG5-CHAT's 11_generate administers BFI-44 and IPIP-NEO-120 under 41 conditions on a 2-core CPU, so the reading
mode decides whether the stage takes minutes or hours. Modes, all with one persona system prompt (as a condition):

  loglik           all items, one forward row per item after the shared prefix's KV cache (batched)
  loglik_no_cache  the same rows without the shared prefix (whole prompts, batched), for the cache's share of the gain
  generation_hf    as the paper: 1 item per prompt, T = 0.6, max_new_tokens 128, lib.models.generate_chat batch 8
  generation_prefix_bN  the same sampling (top_k 50 as HF's default) through psychometrics.prefix_generate_fn
                   (prefix cache, own sampling loop) at batch size N: 8 as generation_hf, and larger (decoding, not the
                   prompt, dominates)

Generating all 120 items x 5 runs would take too long here, so generation runs on a fixed subset (n_items drawn
with seed 0, n_runs runs); times are reported per item-administration (one item answered once). Goal: loglik
>= 20x faster than generation_hf.

    .venv/bin/python benchmarks/psychometrics_modes.py --n-items 12 --n-runs 5

"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result
from lib import psychometrics as pm  # after the sys.path line above
from lib.models import load_for_inference

PERSONA = "You are a helpful assistant with the following Big Five personality traits: Extraversion - high"


def timed_loglik(model, tokenizer, items, persona, batch_size: int, share_prefix: bool) -> tuple[dict, object]:
    """Seconds for all items by log-likelihood, and the answers."""
    t0 = time.perf_counter()
    answers = pm.administer_by_loglik(model, tokenizer, items, batch_size=batch_size, persona=persona,
                                      share_prefix=share_prefix)
    seconds = time.perf_counter() - t0
    return {"administrations": len(answers), "batch_size": batch_size, "seconds": round(seconds, 3),
            "seconds_per_item": round(seconds / len(answers), 5)}, answers


def timed_generation(generate_fn, tokenizer, items, persona, n_runs: int, temperature: float, max_new_tokens: int,
                     batch_size: int) -> dict:
    """Seconds per item-administration by sampling and parsing replies, reply tokens, share of unparseable replies.

    Reply lengths differ between samplers, so tokens/s (replies re-tokenized: a close count) compares the loops.
    """
    t0 = time.perf_counter()
    answers, _ = pm.administer_by_generation(generate_fn, items, n_runs=n_runs, temperature=temperature,
                                             max_new_tokens=max_new_tokens, seed=0, persona=persona)
    seconds = time.perf_counter() - t0
    summary = pm.summarize_answers(answers)
    tokens = sum(len(tokenizer(reply, add_special_tokens=False)["input_ids"]) for reply in answers["reply"])
    return {"administrations": len(answers), "batch_size": batch_size, "seconds": round(seconds, 3),
            "seconds_per_item": round(seconds / len(answers), 5), "reply_tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1),
            "share_unparseable": round(summary["share_unparseable"], 4), "n_unparseable": summary["n_unparseable"],
            "example_replies": answers["reply"].head(3).tolist()}


def main() -> None:
    """Parse arguments, time the modes, print and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/base/gguf-smollm2"))  # `python -m lib.prepare cpu`
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/data"))
    parser.add_argument("--n-items", type=int, default=12, help="generation subset: items drawn with seed 0")
    parser.add_argument("--n-runs", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--gen-batch-size", type=int, default=8)
    parser.add_argument("--prefix-batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--loglik-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/psychometrics_modes.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if not (Path(args.model) / "config.json").is_file():
        raise FileNotFoundError(f"{args.model} is not a model directory; run `python -m lib.prepare cpu` first")
    model, tokenizer = load_for_inference(args.model)
    items = pm.load_instrument("ipip120", args.data_root)
    subset = items.sample(args.n_items, random_state=0).reset_index(drop=True)  # fixed, mixed domains
    persona = [{"role": "system", "content": PERSONA}]
    hf_fn = pm.hf_generate_fn(model, tokenizer, batch_size=args.gen_batch_size)
    # Warm-up (allocator, kernels), not timed.
    pm.administer_by_loglik(model, tokenizer, items.head(4), persona=persona)
    pm.administer_by_generation(hf_fn, subset.head(2), n_runs=1, max_new_tokens=4, persona=persona)

    loglik, answers = timed_loglik(model, tokenizer, items, persona, args.loglik_batch_size, share_prefix=True)
    loglik_no_cache, plain = timed_loglik(model, tokenizer, items, persona, args.loglik_batch_size,
                                          share_prefix=False)
    gen = {"n_runs": args.n_runs, "temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    generation_hf = timed_generation(hf_fn, tokenizer, subset, persona, batch_size=args.gen_batch_size, **gen)
    generation_prefix = {}
    for size in args.prefix_batch_sizes:
        # top_k = 50: what HF generate samples with when the model's generation config sets no top_k.
        prefix_fn = pm.prefix_generate_fn(model, tokenizer, batch_size=size, top_k=50)
        generation_prefix[size] = timed_generation(prefix_fn, tokenizer, subset, persona, batch_size=size, **gen)
    result = {
        "model": str(args.model), "instrument": "ipip120", "persona": PERSONA, "device": str(model.device),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
        "generation_subset_items": subset["item"].tolist(),
        "loglik": loglik, "loglik_no_cache": loglik_no_cache,
        "loglik_max_abs_diff_cache_vs_no_cache": float(np.abs(answers.filter(like="logp_").to_numpy()
                                                              - plain.filter(like="logp_").to_numpy()).max()),
        "loglik_answer_counts": {int(k): int(v) for k, v in answers["answer"].value_counts().sort_index().items()},
        "generation_hf": generation_hf,
        **{f"generation_prefix_b{size}": timing for size, timing in generation_prefix.items()},
        "speedup_loglik_vs_generation_hf": round(generation_hf["seconds_per_item"] / loglik["seconds_per_item"], 1),
        "speedup_loglik_cache_vs_no_cache": round(loglik_no_cache["seconds_per_item"] / loglik["seconds_per_item"],
                                                  2),
        **{f"speedup_generation_prefix_b{size}_vs_hf": round(generation_hf["seconds_per_item"]
                                                              / timing["seconds_per_item"], 2)
           for size, timing in generation_prefix.items()},
    }
    save_result(result, args.out)


if __name__ == "__main__":
    main()
