"""Host overhead per decoding step of 07's DExperts loop, measured on a CPU with a skeleton of the 8B.

On a GPU at large batch, a decoding step costs the larger of the GPU's work and the host's: Python, peft's
per-adapter loop and one dispatch per kernel. The host part does not depend on the tensor sizes, so it can be
measured here: a Llama with the 8B's 32 layers but width 64 (its arithmetic is negligible), ten LoRA experts with
the paper profile's expert settings (r 8 on q/k/v/o) and the paper profile's batch (128 samples: 256 rows). What a
step costs on this machine is then almost all host time:

- `forward`: the model forwards of a step (in "batched" mode one mixed-adapter forward, in which peft loops over the
  adapters present in the batch in every adapted layer; in "separate" mode one forward per adapter group);
- `loop`: everything else in the step (scattering logits by role, combining, sampling, bookkeeping).

The loop is timed twice in one run: as it was (`before`: role indices rebuilt and tokens read back at every step)
and as it is (`after`: indices built once per chunk, no read-back until the chunk ends). The read-back matters on a
GPU only: it makes the host wait for the step's kernels, so host time adds to GPU time instead of overlapping it;
on a CPU it costs nothing and the measured gain is the index work alone.

    .venv/bin/python benchmarks/dexperts_host_overhead.py --n-samples 128 --max-new-tokens 12
"""
from __future__ import annotations

import argparse
import contextlib
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
from lib.models import build_tiny_llama, load_for_inference


# --------------------------------------------------------------------------------------------- the loop as it was
def _by_role_before(streams, logits, n_samples):
    import torch

    vocab = logits[0].shape[-1]
    out = {role: torch.zeros(n_samples, vocab, dtype=logits[0].dtype, device=logits[0].device)
           for role in dexperts.ROLES}
    for stream, rows_logits in zip(streams, logits):
        for role in dexperts.ROLES:
            rows = [r for r, rr in enumerate(stream.roles) if rr == role]
            if rows:
                out[role][stream.samples[rows]] = rows_logits[rows]
    return out


def _decode_chunk_before(streams, d, n_samples):
    import torch

    has_anti = any("anti" in s.roles for s in streams)
    new = [[] for _ in range(n_samples)]
    done = [False] * n_samples
    with torch.inference_mode():
        start = time.perf_counter()
        logits = [s.prefill() for s in streams]
        prefill_seconds = time.perf_counter() - start
        forwards = len(streams)
        for step in range(d.sampling.max_new_tokens):
            by_role = _by_role_before(streams, logits, n_samples)
            tokens = dexperts.decoding.next_tokens(
                dexperts._combine(by_role, d.alpha, step >= d.join_after, has_anti), d.sampling, d.generator)
            for i, token in enumerate(tokens.tolist()):
                if not done[i]:
                    new[i].append(token)
                    done[i] = token in d.stop_ids
            if all(done) or step == d.sampling.max_new_tokens - 1:
                break
            tokens = tokens.masked_fill(torch.tensor(done, device=tokens.device), d.pad_id)
            logits = [s.step(tokens[s.samples]) for s in streams]
            forwards += len(streams)
    return new, forwards, prefill_seconds


@contextlib.contextmanager
def loop(version: str):
    """Run dexperts_generate with the loop `before` or `after` this change."""
    saved = dexperts._decode_chunk
    if version == "before":
        dexperts._decode_chunk = _decode_chunk_before
    try:
        yield
    finally:
        dexperts._decode_chunk = saved


@contextlib.contextmanager
def forward_clock(total: list):
    """Add the seconds spent in model forwards to total[0]."""
    inner = dexperts._Stream._forward

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            total[0] += time.perf_counter() - t0

    dexperts._Stream._forward = timed
    try:
        yield
    finally:
        dexperts._Stream._forward = inner


# --------------------------------------------------------------------------------------------- inputs
def skeleton(out: Path, layers: int, width: int) -> Path:
    return build_tiny_llama(out, hidden_size=width, num_layers=layers)


def adapters(model_dir: Path, n: int, r: int, out_root: Path) -> dict[str, Path]:
    import torch
    from peft import LoraConfig, get_peft_model

    dirs = {}
    for k, name in enumerate([f"{t}_{lvl}" for t in TRAITS for lvl in LEVELS][:n]):
        base, _ = load_for_inference(model_dir)
        torch.manual_seed(k)
        get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                        init_lora_weights=False)).save_pretrained(out_root / name)
        dirs[name] = out_root / name
    return dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=32, help="the 8B's layer count")
    parser.add_argument("--width", type=int, default=64, help="hidden size (small: arithmetic negligible)")
    parser.add_argument("--n-adapters", type=int, default=10, help="the paper's 5 traits x 2 levels")
    parser.add_argument("--r", type=int, default=8, help="dexperts.expert.lora.r on the paper profile")
    parser.add_argument("--n-samples", type=int, default=128, help="dexperts.batch_size on the paper profile")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: host work is one thread)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/dexperts_host_overhead.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = skeleton(Path(tmp) / "skeleton", args.layers, args.width)
        model, tok = dexperts.load_experts(model_dir, adapters(model_dir, args.n_adapters, args.r, Path(tmp)))
    names = sorted(model.peft_config)
    situations = ["a friend cancelled our trip", "my manager praised my report", "our team lost the final"]
    base_chats = [[{"role": "user", "content": f"Imagine that {situations[i % 3]}. Reply in 50 words."}]
                  for i in range(args.n_samples)]
    experts = [names[i % len(names)] for i in range(args.n_samples)]
    expert_chats = [expert_messages(*e.rsplit("_", 1)) for e in experts]

    def once(mode: str, version: str, max_new_tokens: int) -> dict:
        clock = [0.0]
        with loop(version), forward_clock(clock):
            _, stats = dexperts.dexperts_generate(model, tok, base_chats, expert_chats, experts, alpha=0.5,
                                                  max_new_tokens=max_new_tokens, temperature=0.6, top_p=0.9,
                                                  batch_size=args.n_samples, mode=mode, ignore_eos=True,
                                                  return_stats=True)
        steps = max_new_tokens - 1
        decode_forward = clock[0] - stats.prefill_seconds
        decode = stats.seconds - stats.prefill_seconds
        return {"seconds": stats.seconds, "step_ms": 1e3 * decode / steps, "forward_ms": 1e3 * decode_forward / steps,
                "loop_ms": 1e3 * (decode - decode_forward) / steps, "tokens": stats.token_ids}

    combos = [(m, v) for m in ("batched", "separate") for v in ("before", "after")]
    for mode, version in combos:
        once(mode, version, 3)  # warm-up
    runs = {c: [] for c in combos}
    for _ in range(args.repeats):  # interleaved: load changes on a shared machine hit every variant alike
        for c in combos:
            runs[c].append(once(*c, args.max_new_tokens))

    result = {"what": "host time per DExperts decoding step (skeleton of the 8B: arithmetic negligible)",
              "layers": args.layers, "width": args.width, "n_adapters": args.n_adapters, "lora_r": args.r,
              "n_samples": args.n_samples, "rows": 2 * args.n_samples, "max_new_tokens": args.max_new_tokens,
              "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
              "python": platform.python_version(), "torch": torch.__version__}
    for mode, version in combos:
        rs = runs[(mode, version)]
        result[f"{mode}/{version}"] = {k: round(statistics.median(r[k] for r in rs), 2)
                                       for k in ("step_ms", "forward_ms", "loop_ms")}
    for mode in ("batched", "separate"):
        b, a = result[f"{mode}/before"], result[f"{mode}/after"]
        result[f"{mode}_loop_before_over_after"] = round(b["loop_ms"] / a["loop_ms"], 2)
        result[f"{mode}_same_tokens"] = runs[(mode, "before")][0]["tokens"] == runs[(mode, "after")][0]["tokens"]
    result["separate_over_batched_forward"] = round(result["separate/after"]["forward_ms"] /
                                                    result["batched/after"]["forward_ms"], 2)
    result["when"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save_result(result, args.out)


if __name__ == "__main__":
    main()
