"""An adapter for a new personality: one hypernetwork forward vs training a LoRA for it to the same loss.

DPG's promise is that a new personality needs no training run: the trained hypernetwork (10_hypernet) writes its
LoRA in one forward pass (encoding the personality prompt with the frozen base + the hypernetwork). The alternative
is to train a LoRA for that personality. This script takes the held-out personality with the most reply rows (a
character never trained on), measures the loss of its generated LoRA on those rows, then trains a fresh LoRA of the
same rank and projections on exactly those rows until its loss on them is no higher (or a step/time cap is hit).

The LoRA is trained through the same per-sample LoRA wrappers (one static A, B repeated over the batch), with AdamW,
so the comparison is not inflated by trainer overheads: only optimiser steps are timed, not the loss checks between
them. The ratio reported is LoRA seconds / hypernetwork seconds (goal >= 100); when the cap is hit first the ratio
is a lower bound and says so. Needs the cpu outputs of 01_scrape_dpg, 05_label_dpg and 10_hypernet_dpg.

    .venv/bin/python benchmarks/dpg_new_adapter.py --threads 2
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_io import save_result
from lib import config
from lib.dpg import hypernet as hn  # after the sys.path line above
from lib.dpg.rows import reply_rows
from lib.models import load_for_inference
from lib.records import read_jsonl
from lib.traits import TRAITS


def heldout_persona_rows(profile: str) -> tuple[str, list[dict]]:
    """(personality prompt, its rows): the held-out window personality with the most reply rows."""
    cfg = config.load(profile)
    sft_cfg = cfg["sft"]["dpg"]
    samples = [s for s in read_jsonl(ROOT / "data/dpg/01_scrape/hp_samples.jsonl") if s["split"] == "heldout"]
    vectors = {r["sample_id"]: {t: r[t] for t in TRAITS} for r in read_jsonl(ROOT / "data/dpg/05_label/vectors.jsonl")}
    rows, _ = reply_rows(samples, vectors, config.read_text(sft_cfg["persona_template"]),
                         context_turns=sft_cfg["context_turns"])
    by_persona: dict[str, list[dict]] = {}
    for r in rows:
        by_persona.setdefault(r["prompt"][0]["content"], []).append(r)
    persona = max(by_persona, key=lambda k: (len(by_persona[k]), k))
    return persona, by_persona[persona]


def main() -> None:
    """Parse arguments, time the hypernetwork forward and the LoRA training, print and write the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--model", default=str(ROOT / "models/base/gguf-smollm2"))  # made by stage 00_models
    parser.add_argument("--hypernet", default=str(ROOT / "models/hypernet/dpg/hypernet"))
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3, help="the LoRA's learning rate (10_hypernet's on cpu)")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=900)
    parser.add_argument("--repeats", type=int, default=5, help="hypernetwork forwards timed (median)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dpg_new_adapter.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tok = load_for_inference(args.model)
    tok.padding_side = "right"
    hyper = hn.HyperLoRA.load(args.hypernet)
    hn.attach(model, hyper.targets)
    persona, rows = heldout_persona_rows(args.profile)
    data = hn.tokenize_rows(rows, tok, args.max_seq_length, persona_in_context=False)

    # The hypernetwork: encode the new personality prompt with the frozen base, then one forward.
    times = []
    for _ in range(args.repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with torch.no_grad():
            hyper(hn.encode_prompts(model, tok, [persona]))
        times.append(time.perf_counter() - start)
    hyper_s = statistics.median(times[1:])
    cond = {persona: hn.encode_prompts(model, tok, [persona])[0]}
    target = hn.evaluate_loss(model, tok, hyper, data, cond=cond)
    base = hn.evaluate_loss(model, tok, None, data)

    # A fresh LoRA of the same shape, initialised as peft does (A Kaiming-uniform, B zero), trained on these rows.
    params = {}
    for key, (n_in, n_out) in hyper.shapes.items():
        a = torch.empty(1, hyper.r, n_in).uniform_(-1 / math.sqrt(n_in), 1 / math.sqrt(n_in)).requires_grad_()
        params[key] = (a, torch.zeros(1, n_out, hyper.r, requires_grad=True))
    opt = torch.optim.AdamW([t for pair in params.values() for t in pair], lr=args.lr, weight_decay=0.0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = hn.collate(data, pad)  # all rows at once: one full batch

    def static(n: int) -> dict:
        return {k: (a.expand(n, -1, -1), b.expand(n, -1, -1)) for k, (a, b) in params.items()}

    def loss_now() -> float:
        with torch.no_grad(), hn.lora_weights(model, static(len(data)), hyper.scale):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = hn.lm_loss(logits, batch["labels"])
        return total.item() / max(count, 1)

    train_s, steps, curve, reached = 0.0, 0, [], False
    while steps < args.max_steps and train_s < args.max_seconds:
        start = time.perf_counter()
        with hn.lora_weights(model, static(len(data)), hyper.scale):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = hn.lm_loss(logits, batch["labels"])
        opt.zero_grad(set_to_none=True)
        (total / max(count, 1)).backward()
        opt.step()
        train_s += time.perf_counter() - start
        steps += 1
        curve.append(round(loss_now(), 4))
        if curve[-1] <= target:
            reached = True
            break
    ratio = train_s / hyper_s
    result = {"model": args.model, "profile": args.profile, "torch_threads": torch.get_num_threads(),
              "machine": platform.machine(), "persona_rows": len(data), "r": hyper.r, "targets": len(hyper.shapes),
              "hypernet_forward_s": round(hyper_s, 4), "hypernet_all_s": [round(t, 4) for t in times[1:]],
              "hypernet_loss": round(target, 4), "base_loss": round(base, 4),
              "lora": {"lr": args.lr, "steps": steps, "train_seconds": round(train_s, 2), "reached_target": reached,
                       "loss_curve": curve},
              "lora_vs_hypernet_time": round(ratio, 1),
              "verdict": (f"{ratio:.0f}x" if reached else f">= {ratio:.0f}x (the LoRA had not reached the "
                          f"hypernetwork's loss after {steps} steps)"),
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    save_result(result, args.out)


if __name__ == "__main__":
    main()
