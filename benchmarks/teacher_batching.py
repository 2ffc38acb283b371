"""Throughput of LocalTeacher: batched generation vs one prompt at a time, on the same prompts in one run.

Batching is what makes a CPU/GPU local teacher usable for thousands of dialogues; the goal is >= 3x
tokens/s at batch size 8-16. Greedy decoding, so both runs generate (nearly) the same tokens. On a
machine whose cores are busy with other jobs, pass --threads 1: oversubscribed torch threads spin and
can make generation ~8x slower.

    .venv/bin/python benchmarks/teacher_batching.py --n-prompts 16 --max-new-tokens 48 --batch-size 16

"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result
from lib.teacher import LocalTeacher, Sampling  # after the sys.path line above

TOPICS = ["a long walk by the river", "a stressful week at work", "learning to play the guitar", "a rainy Sunday",
          "an old friend calling", "moving to a new city", "a failed exam", "cooking for the family",
          "a concert last night", "starting to run every morning", "a quiet day alone", "an argument with a sibling",
          "planning a trip", "a new job offer", "a book that changed my mind", "feeling tired but happy"]


def make_prompts(n: int) -> list[list[dict]]:
    """Varied-length chats, so batches contain real left padding."""
    prompts = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        extra = " Say something about how it felt, and why." * (i % 3)
        prompts.append([{"role": "user", "content": f"Write a short journal entry about {topic}.{extra}"}])
    return prompts


def timed(teacher: LocalTeacher, prompts: list[list[dict]], sampling: Sampling) -> dict:
    """Tokens, seconds and tokens/s for generating all prompts with the teacher's current batch size."""
    before = teacher.generated_tokens
    t0 = time.perf_counter()
    replies = teacher.generate(prompts, sampling)
    elapsed = time.perf_counter() - t0
    tokens = teacher.generated_tokens - before
    return {"batch_size": teacher.batch_size, "tokens": tokens, "seconds": round(elapsed, 3),
            "tokens_per_s": round(tokens / elapsed, 2), "prompts_per_s": round(len(prompts) / elapsed, 3),
            "replies": replies}


def main() -> None:
    """Parse arguments, run both settings, print and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/base/gguf-smollm2"))  # made by stage 00_models
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 is much faster when the cores are shared with other jobs")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/teacher_batching.json"))
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = LocalTeacher(args.model, batch_size=args.batch_size, device=args.device)
    prompts = make_prompts(args.n_prompts)
    sampling = Sampling(temperature=0.0, max_new_tokens=args.max_new_tokens)
    teacher.generate(prompts[:2], Sampling(temperature=0.0, max_new_tokens=4))  # warm-up (allocator, kernels)

    batched = timed(teacher, prompts, sampling)
    teacher.batch_size = 1
    single = timed(teacher, prompts, sampling)
    same = sum(a == b for a, b in zip(batched.pop("replies"), single.pop("replies")))
    result = {
        "model": str(args.model), "device": args.device, "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(), "n_prompts": args.n_prompts, "max_new_tokens": args.max_new_tokens,
        "batched": batched, "single": single,
        "speedup_tokens_per_s": round(batched["tokens_per_s"] / single["tokens_per_s"], 2),
        "identical_replies": same,
    }
    save_result(result, args.out)


if __name__ == "__main__":
    main()
