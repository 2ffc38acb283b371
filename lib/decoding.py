"""Decoding shared by every generation routine: one sampling type, when a reply ends, how draws are seeded.

Every routine that writes text (lib.models.generate_chat, the local teacher, DExperts, the psychometrics prefix
sampler, DPG's hypernetwork, the seq2seq baselines) takes its settings from here, so they cannot disagree:

- `Sampling`: temperature (0 = greedy), top_p, top_k (None = the whole vocabulary), max_new_tokens, seed.
- `stop_ids`: a reply ends at the tokenizer's EOS, at any EOS of the model's generation config (Llama 3 Instruct
  lists `<|end_of_text|>` and `<|eot_id|>`) and at the token the chat template writes after an assistant turn.
- `generate_kwargs`: everything `model.generate` needs, spelled out, so a checkpoint's config cannot inject its own
  decoding (facebook/bart-base's config asks for 4 beams and trigram blocking; Llama 3's generation config for
  sampling at T 0.6, top-p 0.9; transformers' own default for sampling is top-k 50).
- `batch_seed`: batch b of a call draws from seed + the index of its first row, so a batch's replies do not depend on
  the batches before it (a resumed, cached or reordered run gives the same replies).
- `next_tokens`: the one token chooser of the KV-cached loops (temperature, then top-k, then top-p).

    sampling = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=64, seed=0)
    replies = generate_texts(model, tokenizer, chat_prompt_ids(tokenizer, chats), sampling, batch_size=8)
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Messages = list[dict]

_TURN_PROBE = "PROBE"  # assistant content used to find what the chat template writes after a turn


@dataclass
class Sampling:
    """Decoding settings of every backend; temperature 0 means greedy (top_p and top_k then play no part)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None
    top_k: int | None = None  # None: no top-k cut (transformers' generate would otherwise apply its default, 50)

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def key(self) -> dict:
        """The settings as a dict for cache keys; top_k left out while unset, so keys made before it existed hold."""
        out = dataclasses.asdict(self)
        if out["top_k"] is None:
            del out["top_k"]
        return out


def batch_seed(seed: int | None, first_row: int) -> int:
    """The seed of the batch whose first row is `first_row` of the call (see the module docstring)."""
    return (seed or 0) + first_row


# ---------------------------------------------------------------------------------------------------------------
# When a reply ends


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (named ones and added tokens marked special)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special)
    return ids


def _probe_chat(tokenizer) -> str | None:
    """A user turn and an assistant turn as the chat template renders them; None without a usable template."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        return tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": _TURN_PROBE}], tokenize=False)
    except Exception:  # noqa: BLE001  (jinja raises anything a template author wrote: such a template tells us nothing)
        return None


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template writes right after an assistant message (ChatML's <|im_end|>, Llama 3's
    <|eot_id|>, Mistral's </s>); [] for a tokenizer without a chat template or whose template writes none."""
    text = _probe_chat(tokenizer)
    if text is None or _TURN_PROBE not in text:
        return []
    after = tokenizer(text.split(_TURN_PROBE, 1)[1], add_special_tokens=False)["input_ids"]
    return [after[0]] if after and after[0] in special_ids(tokenizer) else []


def template_bos_id(tokenizer) -> int | None:
    """The BOS id when the chat template writes it once at the start of a conversation (Llama 3's
    <|begin_of_text|>), else None (ChatML, whose "BOS" <|im_start|> opens every message, or no BOS at all)."""
    bos, text = tokenizer.bos_token, _probe_chat(tokenizer)
    if bos is None or text is None:
        return None
    return tokenizer.bos_token_id if text.startswith(bos) and text.count(bos) == 1 else None


def stop_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a reply: tokenizer EOS ∪ the generation config's EOS (an id or a list) ∪ end-of-turn."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update([config_eos] if isinstance(config_eos, int) else config_eos or [])
    ids.update(end_of_turn_ids(tokenizer))
    if not ids:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r}, its chat template and the model's generation config "
                         "name no token that ends a reply")
    return sorted(ids)


def pad_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
    return pad


def until_stop(ids: Sequence[int], stop: Sequence[int]) -> list[int]:
    """The ids before the first stop id (a reply's text never includes its stop token or what follows)."""
    stop = set(stop)
    for i, token in enumerate(ids):
        if token in stop:
            return list(ids[:i])
    return list(ids)


# ---------------------------------------------------------------------------------------------------------------
# transformers' generate with every decoding setting explicit


def generate_kwargs(sampling: Sampling, stop: Sequence[int], pad: int) -> dict:
    """Arguments for `model.generate`: the sampling settings, stop and pad ids, one beam and no n-gram blocking, so no
    checkpoint config (generation_config.json or legacy keys in config.json) decides how the text is decoded."""
    kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "eos_token_id": list(stop),
                              "pad_token_id": pad, "num_beams": 1, "no_repeat_ngram_size": 0,
                              "repetition_penalty": 1.0, "min_new_tokens": None, "min_length": 0}
    if sampling.greedy:
        # None: unused by greedy decoding (and transformers warns about sampling settings that would be ignored)
        return kwargs | {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return kwargs | {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                     "top_k": sampling.top_k or 0}  # 0 switches the top-k cut off


def chat_prompt_ids(tokenizer, chats: Sequence[Messages]) -> list[list[int]]:
    """Token ids of each chat formatted by the chat template with the assistant generation prompt.

    The template writes every special token itself (Llama 3's BOS included); tokenizing its text with special tokens
    would add a second BOS, so they are off here.
    """
    out = []
    for chat in chats:
        if not chat or not all(isinstance(m, dict) for m in chat):
            raise ValueError(f"a chat must be a non-empty list of messages, got {chat!r:.200}")
        text = tokenizer.apply_chat_template(list(chat), add_generation_prompt=True, tokenize=False)
        out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def left_pad(rows: Sequence[Sequence[int]], pad: int, device) -> dict:
    """{"input_ids", "attention_mask"} LongTensors with each row right-aligned (pads on the left)."""
    import torch

    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        if row:
            ids[r, width - len(row):] = torch.tensor(list(row), dtype=torch.long)
            mask[r, width - len(row):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


@dataclass
class Generated:
    """What `generate_ids` produced: per input, the new token ids before the stop token."""
    ids: list[list[int]]
    tokens: int  # new tokens over all inputs, each reply's stop token counted (what the model computed)


def generate_ids(model, tokenizer, inputs: Sequence, sampling: Sampling, batch_size: int = 8,
                 encode: Callable[[Sequence], dict] | None = None,
                 batch_context: Callable[[int, int], Any] | None = None) -> Generated:
    """New token ids per input through `model.generate`, `batch_size` inputs at a time.

    `inputs` are prompt token ids (decoder-only models: left padded here) unless `encode` turns a slice of them into
    model inputs (an encoder-decoder's source texts). Batches are seeded by `batch_seed`. `batch_context(lo, hi)`,
    if given, returns a context manager held while rows lo:hi generate (DPG's per-sample generated LoRA).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stop, pad = stop_ids(tokenizer, model), pad_id(tokenizer)
    kwargs = generate_kwargs(sampling, stop, pad)
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    device = next(model.parameters()).device
    out: list[list[int]] = []
    tokens = 0
    for lo in range(0, len(inputs), batch_size):
        chunk = inputs[lo:lo + batch_size]
        enc = encode(chunk) if encode is not None else left_pad(chunk, pad, device)
        enc = {k: v.to(device) for k, v in enc.items()}
        if not sampling.greedy:
            torch.manual_seed(batch_seed(sampling.seed, lo))  # generate draws from torch's global generator
        with (batch_context(lo, lo + len(chunk)) if batch_context else contextlib.nullcontext()), \
                torch.inference_mode():
            seqs = model.generate(**enc, **kwargs)
        new = seqs if encoder_decoder else seqs[:, enc["input_ids"].shape[1]:]
        for row in new.tolist():
            if encoder_decoder and row and row[0] == model.generation_config.decoder_start_token_id:
                row = row[1:]  # the decoder's start token is input, not output
            kept = until_stop(row, stop)
            tokens += min(len(kept) + 1, len(row))
            out.append(kept)
    return Generated(ids=out, tokens=tokens)


def decode(tokenizer, ids: Sequence[Sequence[int]]) -> list[str]:
    """Reply texts: special tokens dropped, whitespace stripped."""
    return [tokenizer.decode(list(row), skip_special_tokens=True).strip() for row in ids]


# ---------------------------------------------------------------------------------------------------------------
# The token chooser of the KV-cached loops (DExperts, the psychometrics prefix sampler)


def generator(device, seed: int | None):
    """A torch.Generator on `device` seeded with `seed` (0 when None)."""
    import torch

    return torch.Generator(device=device).manual_seed(seed or 0)


def next_tokens(logits, sampling: Sampling, generator):
    """One token per row: argmax when greedy, else a draw after temperature, top-k and top-p (in that order)."""
    import torch

    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / sampling.temperature, dim=-1)
    if sampling.top_k is not None and sampling.top_k < probs.shape[-1]:
        kth = probs.topk(sampling.top_k, dim=-1).values[:, -1:]
        probs = probs.masked_fill(probs < kth, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)  # top-p then reads the renormalised distribution
    if sampling.top_p < 1:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        beyond = sorted_p.cumsum(dim=-1) - sorted_p >= sampling.top_p  # the tokens before it already reach top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(beyond, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # multinomial renormalises
