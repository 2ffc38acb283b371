"""DExperts decoding with LoRA trait experts on one shared base model (BIG5-CHAT, arXiv 2410.16491, §3).

At every generated token the next-token logits are

    logits = base + alpha * expert  (- alpha * antiexpert, optionally)

where the expert (and anti-expert) is a LoRA adapter on the same base model and reads its OWN prompt (the expert
instruction), while the base reads the dialogue prompt. During the first `join_after` generated tokens the token
comes from the base logits alone; it is still fed to every row, so the experts' KV caches stay in step.

Because all experts are adapters of one base, the base rows, the expert rows and the anti-expert rows of a batch
run through ONE forward per token (`mode="batched"`: peft's mixed-adapter batches, `adapter_names=[...]` with
"__base__" for the base rows), each row with its own KV cache slot. `mode="separate"` runs the same algorithm
with one forward for the base (adapters disabled) and one per expert group (that adapter active alone), which is
what the paper's code does with separate models; `mode="base"` decodes the base rows only (the cost floor).
benchmarks/dexperts_batching.py compares the three.

Usage:
    model, tokenizer = load_experts(base_dir, {"O_high": dir1, "O_low": dir2})
    replies = dexperts_generate(model, tokenizer, base_chats, expert_chats, experts=["O_high", ...], alpha=0.5)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib import decoding
from lib.models import load_for_inference

BASE = "__base__"  # peft's name for "no adapter" in a mixed-adapter batch
MODES = ("batched", "separate", "base")
ROLES = ("base", "expert", "anti")

Prompt = list[dict] | list[int]  # a chat (messages) or token ids


def load_experts(base_path: str | Path, adapters: dict[str, str | Path]) -> tuple:
    """Load the base model with every saved LoRA adapter under its name: (PeftModel in eval mode, tokenizer).

    The tokenizer pads on the left (lib.models.load_for_inference). The first adapter is loaded with
    PeftModel.from_pretrained, the others with load_adapter, so all share one copy of the base weights.
    """
    if not adapters:
        raise ValueError("adapters is empty; give at least one {name: adapter_dir}")
    for name, path in adapters.items():
        if name == BASE:
            raise ValueError(f"adapter name {BASE!r} is reserved for the base rows of a mixed batch")
        if not (Path(path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter {name!r}: {path} has no adapter_config.json; is it a saved LoRA adapter?")
    from peft import PeftModel

    base, tokenizer = load_for_inference(base_path)
    (first, first_path), *rest = adapters.items()
    model = PeftModel.from_pretrained(base, str(first_path), adapter_name=first)
    for name, path in rest:
        model.load_adapter(str(path), adapter_name=name)
    model.eval()
    return model, tokenizer


@dataclass
class DExpertsStats:
    """What one dexperts_generate call did: for benchmarks and token-level tests."""
    tokens: int  # new tokens generated over all samples (a stop token counts; nothing after it does)
    seconds: float  # wall time of the whole call
    forwards: int  # model forward calls (prefills included)
    prefill_seconds: float  # of `seconds`, the prompt forwards (the rest is mostly one decoding step per token)
    token_ids: list[list[int]] = field(repr=False)  # per sample, the new token ids (with the stop token, if any)


def dexperts_generate(model, tokenizer, base_chats: list[Prompt], expert_chats: list[Prompt], experts: list[str],
                      alpha: float = 0.5, antiexperts: list[str | None] | None = None, max_new_tokens: int = 64,
                      join_after: int = 5, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                      batch_size: int = 8, mode: str = "batched", ignore_eos: bool = False,
                      return_stats: bool = False) -> list[str] | tuple[list[str], DExpertsStats]:
    """Generate one reply per sample with DExperts steering; returns the new text of each, stripped.

    Sample i: the base reads base_chats[i], adapter experts[i] reads expert_chats[i], and adapter antiexperts[i]
    (None: no anti-expert) reads expert_chats[i] too. Prompts are chats (formatted with the chat template and a
    generation prompt) or token-id lists (used as they are). Greedy when temperature == 0, else temperature +
    top-p sampling (lib.decoding.next_tokens) from a generator seeded per chunk of `batch_size` samples with
    lib.decoding.batch_seed. A sample stops at any of lib.decoding.stop_ids (tokenizer EOS, the generation config's
    EOS list, the template's end-of-turn token) unless `ignore_eos` (benchmarks). `mode`: "batched" (one
    mixed-adapter forward per token), "separate" (base forward + one per adapter group) or "base" (base rows only,
    experts ignored); batched and separate give the same tokens. Before decoding, `check_adapters_apart` proves on a
    probe that the experts in use give different logits in this mode (it fails loudly where a patched forward, such
    as Unsloth's, would let every row decode with one adapter). With return_stats, returns (replies, DExpertsStats).
    """
    antiexperts = list(antiexperts) if antiexperts is not None else [None] * len(base_chats)
    _validate(model, base_chats, expert_chats, experts, antiexperts, max_new_tokens, join_after, temperature,
              top_p, batch_size, mode)
    start = time.perf_counter()
    base_ids = [_prompt_ids(tokenizer, p) for p in base_chats]
    expert_ids = [_prompt_ids(tokenizer, p) for p in expert_chats]
    sampling = decoding.Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    settings = _Decoding(alpha=alpha, join_after=join_after, sampling=sampling,
                         stop_ids=set() if ignore_eos else set(decoding.stop_ids(tokenizer, model)),
                         pad_id=decoding.pad_id(tokenizer), generator=None)
    token_ids: list[list[int]] = []
    forwards, prefill_seconds = 0, 0.0
    active = model.active_adapter  # separate mode switches adapters; the caller gets its own setting back
    try:
        if mode != "base":
            check_adapters_apart(model, expert_ids[0], [*experts, *(a for a in antiexperts if a)], mode)
        for lo in range(0, len(base_ids), batch_size):
            chunk = slice(lo, lo + batch_size)
            streams = _streams(model, mode, base_ids[chunk], expert_ids[chunk], experts[chunk], antiexperts[chunk],
                               settings.pad_id)
            settings.generator = decoding.generator(model.device, decoding.batch_seed(seed, lo))
            new, n, prefill = _decode_chunk(streams, settings, n_samples=len(base_ids[chunk]))
            token_ids.extend(new)
            forwards += n
            prefill_seconds += prefill
    finally:
        if model.active_adapter != active:
            model.set_adapter(active, inference_mode=True)
    stop = settings.stop_ids
    replies = [tokenizer.decode(ids[:-1] if ids and ids[-1] in stop else ids, skip_special_tokens=True).strip()
               for ids in token_ids]
    if not return_stats:
        return replies
    stats = DExpertsStats(tokens=sum(map(len, token_ids)), seconds=time.perf_counter() - start, forwards=forwards,
                          prefill_seconds=prefill_seconds, token_ids=token_ids)
    return replies, stats


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _validate(model, base_chats: list, expert_chats: list, experts: list[str], antiexperts: list[str | None],
              max_new_tokens: int, join_after: int, temperature: float, top_p: float, batch_size: int,
              mode: str) -> None:
    """Reject inconsistent or unknown inputs before any work, naming the offending value."""
    lengths = {"base_chats": len(base_chats), "expert_chats": len(expert_chats), "experts": len(experts),
               "antiexperts": len(antiexperts)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"per-sample inputs must have equal lengths, got {lengths}")
    if not base_chats:
        raise ValueError("no samples: base_chats is empty")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if join_after < 0:
        raise ValueError(f"join_after must be >= 0, got {join_after}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    known = set(getattr(model, "peft_config", {}))
    if not known:
        raise ValueError(f"model {type(model).__name__} has no LoRA adapters; load it with load_experts")
    for what, names in (("experts", experts), ("antiexperts", antiexperts)):
        for i, name in enumerate(names):
            if (name is not None or what == "experts") and name not in known:
                raise ValueError(f"{what}[{i}] = {name!r} is not a loaded adapter; known: {sorted(known)}")
    if model.training:
        raise ValueError("model is in training mode (dropout on); call model.eval() first")


def _prompt_ids(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: a chat is formatted with the chat template and the assistant generation prompt."""
    if prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)
    if prompt and all(isinstance(m, dict) for m in prompt):
        return decoding.chat_prompt_ids(tokenizer, [prompt])[0]
    raise ValueError(f"a prompt must be a non-empty list of chat messages or of token ids, got {prompt!r:.200}")


class AdapterCollapse(RuntimeError):
    """Different LoRA experts gave identical logits: the forward in use does not route rows to their adapters."""


def check_adapters_apart(model, prompt_ids: list[int], adapters: list[str], mode: str) -> None:
    """Fail loudly unless every pair of different adapters gives different next-token logits on one probe prompt,
    run the way `mode` runs them (one mixed-adapter batch, or each adapter active alone).

    Unsloth replaces peft.PeftModelForCausalLM.forward for the whole process when it loads a model; its forward
    never enters peft's adapter-name hooks, so a mixed batch's `adapter_names` are dropped without a word and every
    row decodes with the first adapter. One forward of one row per adapter catches that (and an expert that never
    trained away from another). Decode in a process where Unsloth has not been imported (lib.train.sft_apart).
    """
    import torch

    names = list(dict.fromkeys(adapters))
    if len(names) < 2:
        return
    rows = [("expert", i, prompt_ids) for i in range(len(names))]
    if mode == "batched":
        streams = [_stream(model, names, rows, pad_id=0)]
    else:
        streams = [_stream(model, name, [row], pad_id=0) for name, row in zip(names, rows)]
    with torch.inference_mode():
        logits = torch.cat([s.prefill() for s in streams])
    same = [(names[a], names[b]) for a in range(len(names)) for b in range(a + 1, len(names))
            if torch.equal(logits[a], logits[b])]
    if same:
        raise AdapterCollapse(
            f"DExperts ({mode}): adapters {same} give identical logits on a probe prompt, so the experts would not "
            f"steer. Either peft's forward has been replaced in this process (Unsloth does that when it loads a "
            f"model: train with Unsloth in another process, e.g. lib.train.sft_apart) or these adapters never "
            f"trained apart.")


# ---------------------------------------------------------------------------------------------------------------
# Streams: groups of rows decoded by one KV-cached forward per step


@dataclass
class _Stream:
    """Rows that run through one forward per step, with one KV cache.

    `adapter` is None (adapters disabled: the base), an adapter name (that adapter active alone) or a per-row
    list for peft's mixed-adapter batch. Row r plays `roles[r]` ("base", "expert" or "anti") for sample
    `samples[r]` of the chunk. Rows with the same prompt and adapter (one unit's base rows across traits and
    levels, one expert's rows across units) are prefilled once: `prefill_*` hold the distinct rows and `expand`
    maps every row to its distinct row, whose KV cache and logits it then copies.
    """
    model: Any
    adapter: str | list[str] | None
    roles: list[str]
    samples: Any  # LongTensor (rows,)
    prefill_ids: Any  # LongTensor (distinct rows, prompt length), left padded
    prefill_mask: Any  # LongTensor (distinct rows, prompt length)
    prefill_adapter: str | list[str] | None
    expand: Any  # LongTensor (rows,): row -> distinct row
    mask: Any = None  # LongTensor (rows, tokens so far), set by prefill
    cache: Any = None
    role_rows: dict = field(default_factory=dict)  # role -> (its rows, their samples), built once per chunk

    def __post_init__(self):
        import torch

        for role in ROLES:
            rows = [r for r, rr in enumerate(self.roles) if rr == role]
            if rows:
                idx = torch.tensor(rows, dtype=torch.long, device=self.samples.device)
                self.role_rows[role] = (idx, self.samples[idx])

    def prefill(self):
        """Run the distinct padded prompts once, copy cache and logits to every row; returns (rows, vocab) logits."""
        positions = (self.prefill_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: every text starts at position 0
        logits = self._forward(self.prefill_ids, positions, self.prefill_mask, self.prefill_adapter)
        self.cache.reorder_cache(self.expand)
        self.mask = self.prefill_mask[self.expand]
        return logits[self.expand]

    def step(self, tokens):
        """Feed one token per row (LongTensor (rows,)); returns the next logits (rows, vocab)."""
        import torch

        positions = self.mask.sum(-1, keepdim=True)  # = last position + 1
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=-1)
        return self._forward(tokens[:, None], positions, self.mask, self.adapter)

    def _forward(self, input_ids, positions, mask, adapter):
        """One forward of these rows with their adapter setting; keeps the returned KV cache."""
        kwargs = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions,
                  "past_key_values": self.cache, "use_cache": True, "logits_to_keep": 1}
        if adapter is None:
            with self.model.disable_adapter():
                out = self.model(**kwargs)
        elif isinstance(adapter, str):
            self.model.set_adapter(adapter, inference_mode=True)
            out = self.model(**kwargs)
        else:
            out = self.model(**kwargs, adapter_names=adapter)
        self.cache = out.past_key_values
        return out.logits[:, -1, :]


def _stream(model, adapter: str | list[str] | None, rows: list[tuple[str, int, list[int]]], pad_id: int) -> _Stream:
    """A stream over (role, sample index, prompt ids) rows; `adapter` as in _Stream (a list: one name per row)."""
    import torch

    per_row = adapter if isinstance(adapter, list) else [adapter] * len(rows)
    distinct: dict[tuple, int] = {}
    expand = [distinct.setdefault((name, tuple(prompt)), len(distinct)) for name, (_, _, prompt) in zip(per_row, rows)]
    enc = decoding.left_pad([list(prompt) for _, prompt in distinct], pad_id, model.device)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    prefill_adapter = [name for name, _ in distinct] if isinstance(adapter, list) else adapter
    return _Stream(model=model, adapter=adapter, roles=[role for role, _, _ in rows],
                   samples=torch.tensor([i for _, i, _ in rows], device=model.device), prefill_ids=ids,
                   prefill_mask=mask, prefill_adapter=prefill_adapter,
                   expand=torch.tensor(expand, dtype=torch.long, device=model.device))


def _streams(model, mode: str, base_ids: list[list[int]], expert_ids: list[list[int]], experts: list[str],
             antiexperts: list[str | None], pad_id: int) -> list[_Stream]:
    """The streams of one chunk of samples for `mode` (see the module docstring)."""
    base_rows = [("base", i, ids) for i, ids in enumerate(base_ids)]
    if mode == "base":
        return [_stream(model, None, base_rows, pad_id)]
    # (adapter, role, sample, prompt) for every expert-side row; expert and anti rows share the expert prompt.
    steer = [(name, "expert", i, expert_ids[i]) for i, name in enumerate(experts)]
    steer += [(name, "anti", i, expert_ids[i]) for i, name in enumerate(antiexperts) if name is not None]
    if mode == "batched":
        adapters = [BASE] * len(base_rows) + [name for name, _, _, _ in steer]
        return [_stream(model, adapters, base_rows + [(role, i, ids) for _, role, i, ids in steer], pad_id)]
    streams = [_stream(model, None, base_rows, pad_id)]
    for name in dict.fromkeys(name for name, _, _, _ in steer):  # first-seen order
        streams.append(_stream(model, name, [(role, i, ids) for n, role, i, ids in steer if n == name], pad_id))
    return streams


# ---------------------------------------------------------------------------------------------------------------
# Decoding


@dataclass
class _Decoding:
    """Settings shared by every chunk of one dexperts_generate call (the generator is re-seeded per chunk)."""
    alpha: float
    join_after: int
    sampling: decoding.Sampling
    stop_ids: set[int]
    pad_id: int
    generator: Any


def _by_role(streams: list[_Stream], logits: list, n_samples: int) -> dict:
    """Scatter each stream's logits into per-role (samples, vocab) tensors; absent anti-experts stay zero. The row
    indices of each role are built once per chunk (`_Stream.role_rows`), not at every step: per-step host work is
    what limits a GPU at large batch (benchmarks/dexperts_host_overhead.py)."""
    import torch

    vocab = logits[0].shape[-1]
    out = {role: torch.zeros(n_samples, vocab, dtype=logits[0].dtype, device=logits[0].device) for role in ROLES}
    for stream, rows_logits in zip(streams, logits):
        for role, (rows, samples) in stream.role_rows.items():
            out[role][samples] = rows_logits[rows]
    return out


def _combine(by_role: dict, alpha: float, expert_joined: bool, has_anti: bool):
    """DExperts logits: base alone before the expert joins, else base + alpha * expert (- alpha * anti-expert)."""
    if not expert_joined:
        return by_role["base"]
    logits = by_role["base"] + alpha * by_role["expert"]
    return logits - alpha * by_role["anti"] if has_anti else logits


STOP_CHECK_EVERY = 8  # decoding steps between looks at whether every sample has stopped (each look waits on the GPU)


def _decode_chunk(streams: list[_Stream], d: _Decoding, n_samples: int) -> tuple[list[list[int]], int, float]:
    """Decode one chunk of samples: (new token ids per sample, number of forwards, prefill seconds).

    The loop keeps its state on the device and reads nothing back per step, so on a GPU the host queues the next
    step's kernels while the current ones run. Only every STOP_CHECK_EVERY steps does it ask whether all samples
    have stopped; steps run past that point are trimmed away (the tokens are those of stopping at once: a sample's
    reply ends at its first stop token, and no live sample's draw depends on them)."""
    import torch

    has_anti = any("anti" in s.roles for s in streams)
    device = streams[0].samples.device
    stop = torch.tensor(sorted(d.stop_ids), dtype=torch.long, device=device)
    finished = torch.zeros(n_samples, dtype=torch.bool, device=device)
    drawn = []
    with torch.inference_mode():
        start = time.perf_counter()
        logits = [s.prefill() for s in streams]
        prefill_seconds = time.perf_counter() - start
        forwards = len(streams)
        for step in range(d.sampling.max_new_tokens):
            by_role = _by_role(streams, logits, n_samples)
            tokens = decoding.next_tokens(_combine(by_role, d.alpha, step >= d.join_after, has_anti), d.sampling,
                                          d.generator)
            drawn.append(tokens)
            finished = finished | torch.isin(tokens, stop)
            if step == d.sampling.max_new_tokens - 1:
                break
            if (step + 1) % STOP_CHECK_EVERY == 0 and bool(finished.all()):
                break
            tokens = tokens.masked_fill(finished, d.pad_id)  # finished: filler
            logits = [s.step(tokens[s.samples]) for s in streams]
            forwards += len(streams)
    new = []
    for ids in torch.stack(drawn, dim=1).tolist():  # one read-back per chunk
        end = next((k + 1 for k, t in enumerate(ids) if t in d.stop_ids), len(ids))
        new.append(ids[:end])
    return new, forwards, prefill_seconds


# ---------------------------------------------------------------------------------------------------------------
# Held-out check of the experts


def completion_nll(model, tokenizer, prompt: list[dict], texts: list[str], adapter: str | None,
                   batch_size: int = 16) -> list[float]:
    """Per text, the mean negative log-likelihood (nats per token) of the text as the assistant's reply to `prompt`.

    `adapter` names the loaded adapter to score with, or None for the base (adapters disabled). The prompt is
    formatted as at decoding time (chat template + generation prompt); only the text's own tokens are scored.
    Used to check that each DExperts expert learnt its level: on held-out texts of its own level it should beat the
    opposite level's expert.
    """
    import torch

    if not texts:
        raise ValueError("no texts to score")
    prompt_ids = _prompt_ids(tokenizer, prompt)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    active = model.active_adapter
    try:
        for lo in range(0, len(texts), batch_size):
            texts_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[lo:lo + batch_size]]
            if not all(texts_ids):
                raise ValueError(f"an empty text among texts[{lo}:{lo + batch_size}]")
            rows = [prompt_ids + ids for ids in texts_ids]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)  # right padding: positions start at 0
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, :len(row)] = torch.tensor(row)
                mask[r, :len(row)] = 1
            with torch.inference_mode():
                if adapter is None:
                    with model.disable_adapter():
                        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
                else:
                    model.set_adapter(adapter, inference_mode=True)
                    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            token_logp = logp.gather(-1, ids[:, 1:, None].to(logp.device)).squeeze(-1)  # log p(token t | < t)
            for r, text_ids in enumerate(texts_ids):
                start = len(prompt_ids) - 1  # the first text token is predicted at the prompt's last position
                out.append(-token_logp[r, start:start + len(text_ids)].mean().item())
    finally:
        if model.active_adapter != active:
            model.set_adapter(active, inference_mode=True)
    return out
