"""Throughput of DExperts decoding: one mixed-adapter forward per token vs separate forwards, in one run.

BIG5-CHAT steers every token with a LoRA expert that reads its own prompt. With all experts as adapters of one base,
the base rows and the expert rows of a batch can run through ONE forward per token (peft mixed-adapter batches,
`lib.big5chat.dexperts` mode "batched") instead of a base forward plus one per expert group ("separate", what separate
models amount to). "base" decodes the base rows alone with the same loop: the cost floor. The goal is
batched/separate >= 1.5x tokens/s. Greedy; EOS is ignored by default so every mode generates exactly
n_samples x max_new_tokens tokens. Uses trained experts under models/dexperts/ when present, else random LoRAs
(r=16 on q/k/v/o, init_lora_weights=False: random A and B, so they do change the logits).

    .venv/bin/python benchmarks/dexperts_batching.py --n-samples 8 --max-new-tokens 32 --threads 2

"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result
from lib.big5chat import LEVELS, TRAITS, dexperts, expert_messages  # after the sys.path line above
from lib.models import load_for_inference

MODES = ("batched", "separate", "base")
SITUATIONS = ["a friend cancelled our weekend trip at the last minute", "my manager praised my report in a meeting",
              "a neighbour keeps playing loud music at night", "I was offered a job in another city",
              "my sister borrowed my car without asking", "a stranger helped me carry my groceries",
              "our team lost the final match", "I have to give a speech at a wedding tomorrow"]


def make_prompts(n: int, expert_names: list[str]) -> tuple[list, list]:
    """Base chats (a dialogue turn to reply to, varied lengths) and expert chats (the expert's instruction alone)."""
    base, expert = [], []
    for i in range(n):
        extra = " Tell me what you would say and how you would feel about it." * (i % 3)
        turn = [{"role": "user", "content": f"Imagine that {SITUATIONS[i % len(SITUATIONS)]}. Reply in 50 words.{extra}"}]
        trait, level = expert_names[i % len(expert_names)].rsplit("_", 1)  # experts are named <trait>_<level>
        base.append(turn)
        expert.append(expert_messages(trait, level))
    return base, expert


def random_adapters(model_dir: str, n: int, out_root: Path) -> dict[str, Path]:
    """Save n random LoRA adapters (r=16, q/k/v/o, random A and B) as stand-ins for trained experts."""
    import torch
    from peft import LoraConfig, get_peft_model

    names = [f"{t}_{lvl}" for t in TRAITS for lvl in LEVELS][:n]
    dirs = {}
    for k, name in enumerate(names):
        base, _ = load_for_inference(model_dir)
        torch.manual_seed(k)
        config = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(out_root / name)
        dirs[name] = out_root / name
    return dirs


def trained_adapters(n: int) -> dict[str, Path]:
    """The first n trained experts of 07_dexperts (models/dexperts/<fingerprint>/<trait>_<level>/adapter), if any."""
    found = sorted(ROOT.glob("models/dexperts/**/adapter/adapter_config.json"))
    return {p.parent.parent.name: p.parent for p in found[:n]} if len(found) >= n else {}


def main() -> None:
    """Parse arguments, time the three modes interleaved, print and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/base/gguf-smollm2"))  # made by stage 00_models
    parser.add_argument("--n-samples", type=int, default=8)
    parser.add_argument("--n-adapters", type=int, default=2, help="distinct experts, assigned round-robin")
    parser.add_argument("--antiexpert", action="store_true", help="add the next adapter as each sample's anti-expert")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (median reported)")
    parser.add_argument("--stop-at-eos", action="store_true", help="stop samples at EOS (default: ignore EOS)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dexperts_batching.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        adapters = trained_adapters(args.n_adapters)
        source = "trained (models/dexperts)" if adapters else "random LoRA r=16 q/k/v/o, init_lora_weights=False"
        adapters = adapters or random_adapters(args.model, args.n_adapters, Path(tmp))
        model, tok = dexperts.load_experts(args.model, adapters)
    names = list(adapters)
    base_chats, expert_chats = make_prompts(args.n_samples, names)
    experts = [names[i % len(names)] for i in range(args.n_samples)]
    antis = [names[(i + 1) % len(names)] for i in range(args.n_samples)] if args.antiexpert else None

    def timed(mode: str, max_new_tokens: int) -> tuple[list[str], dexperts.DExpertsStats]:
        return dexperts.dexperts_generate(model, tok, base_chats, expert_chats, experts, alpha=args.alpha,
                                          antiexperts=antis, max_new_tokens=max_new_tokens,
                                          batch_size=args.n_samples, mode=mode, ignore_eos=not args.stop_at_eos,
                                          return_stats=True)

    for mode in MODES:
        timed(mode, 4)  # warm-up (allocator, kernels, peft hooks)
    runs: dict[str, list] = {mode: [] for mode in MODES}
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit every mode alike
        for mode in MODES:
            runs[mode].append(timed(mode, args.max_new_tokens))

    result = {"model": str(args.model), "adapters": source, "adapter_names": names, "device": str(model.device),
              "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "n_samples": args.n_samples,
              "n_adapters": args.n_adapters, "antiexpert": args.antiexpert, "max_new_tokens": args.max_new_tokens,
              "alpha": args.alpha, "repeats": args.repeats, "ignore_eos": not args.stop_at_eos}
    for mode in MODES:
        seconds = statistics.median(stats.seconds for _, stats in runs[mode])
        tokens = runs[mode][0][1].tokens
        prefill = statistics.median(stats.prefill_seconds for _, stats in runs[mode])
        result[mode] = {"tokens": tokens, "forwards": runs[mode][0][1].forwards, "median_seconds": round(seconds, 3),
                        "all_seconds": [round(stats.seconds, 3) for _, stats in runs[mode]],
                        "tokens_per_s": round(tokens / seconds, 2), "median_prefill_seconds": round(prefill, 3),
                        "decode_seconds_per_step": round((seconds - prefill) / max(args.max_new_tokens - 1, 1), 4)}
    rate = {mode: result[mode]["tokens_per_s"] for mode in MODES}
    result["speedup_batched_vs_separate"] = round(rate["batched"] / rate["separate"], 2)
    result["batched_vs_base"] = round(rate["batched"] / rate["base"], 2)
    result["separate_vs_base"] = round(rate["separate"] / rate["base"], 2)
    batched_ids, separate_ids = runs["batched"][0][1].token_ids, runs["separate"][0][1].token_ids
    result["identical_samples_batched_vs_separate"] = sum(a == b for a, b in zip(batched_ids, separate_ids))
    result["example_reply"] = runs["batched"][0][0][0]
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(result, args.out)


if __name__ == "__main__":
    main()
