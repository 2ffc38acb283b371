"""Psychometric evaluation of chat models: Big-Five questionnaires, administration, scoring, human norms.

Every model the project trains or prompts gets the same check: does it answer personality questionnaires the way
its persona says it should? This module loads the public instruments from the offline mirror (BFI-44, IPIP-NEO-120,
IPIP-NEO-300, IPIP 50 markers) into one normalised table, administers them one item per prompt (as BIG5-CHAT and
PsychoBench do) either by sampling replies and parsing the rating, or by reading the log-likelihood of each Likert
option (as PsyBORGS and MPI do), and scores the five domains against published human norms. All prompts of one
condition (persona + instruction + scale, then the statement) share a token prefix whose KV cache both
administration paths compute only once.

Usage:
    items = load_instrument("bfi44", "../shared/data")
    persona = [{"role": "system", "content": "You are ... Extraversion - high"}]   # optional, plus few-shot demos
    generate_fn = prefix_generate_fn(model, tokenizer)   # or hf_generate_fn(model, tokenizer)
    answers, n_bad = administer_by_generation(generate_fn, items, n_runs=5, persona=persona)
    answers = administer_by_loglik(model, tokenizer, items, persona=persona)   # the deterministic alternative
    scores = score(answers)                          # per domain: mean, sd, n_answered, n_missing
    compare_with_norms(scores, HUMAN_NORMS["bfi44"])

Conventions: domains are the letters O, C, E, A, N and N is always *neuroticism* (the IPIP 50 markers publish
emotional stability instead; their N keys are flipped on load). Ratings are integers 1-5; reverse-keyed items score
6 - x. A reply that cannot be parsed stays missing and is counted: it is never replaced by the scale midpoint.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from lib import decoding
from lib.traits import TRAITS

log = logging.getLogger(__name__)

DOMAINS = TRAITS  # a questionnaire's domains are the five traits
Messages = list[dict[str, str]]
GenerateFn = Callable[[list[Messages], float, int, int], list[str]]  # (chats, temperature, max_new_tokens, seed)

# ---------------------------------------------------------------------------------------------------------------
# Instruments


class _Spec(NamedTuple):
    path: str  # relative to the data root
    id_col: str
    domain_col: str
    key_col: str
    facet_col: str | None
    domain_map: dict[str, str] | None  # raw domain value -> letter; None when the file already uses letters
    stability_domain: str | None  # raw domain keyed for emotional stability, to be flipped into neuroticism


INSTRUMENTS: dict[str, _Spec] = {
    "bfi44": _Spec("instruments/bfi_44.csv", "item", "domain", "key", None,
                   {"Openness": "O", "Conscientiousness": "C", "Extraversion": "E", "Agreeableness": "A",
                    "Neuroticism": "N"}, None),
    "ipip120": _Spec("instruments/ipip_neo_120.csv", "item", "domain", "key", "facet", None, None),
    "ipip300": _Spec("instruments/ipip_neo_300.csv", "item", "domain", "key", "facet", None, None),
    "ipip50": _Spec("instruments/ipip_50_markers.csv", "id", "factor", "keyed", None, None, "N"),
}

# How each instrument phrases an item for self-rating: BFI items complete "I see myself as someone who ...",
# IPIP items are first-person statements with the "I" left out and are shown as they are.
BFI_STEM = "I see myself as someone who {text}"
IPIP_STEM = "{text}"
STEMS = {"bfi44": BFI_STEM, "ipip120": IPIP_STEM, "ipip300": IPIP_STEM, "ipip50": IPIP_STEM}


def load_instrument(name: str, data_root: str | Path) -> pd.DataFrame:
    """One questionnaire as columns item, text, domain (O/C/E/A/N, N = neuroticism), facet, reverse, instrument."""
    if name not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {name!r}; valid names: {sorted(INSTRUMENTS)}")
    spec = INSTRUMENTS[name]
    path = Path(data_root) / spec.path
    if not path.is_file():
        raise FileNotFoundError(f"instrument {name!r}: file {path} does not exist")
    raw = pd.read_csv(path)
    needed = [spec.id_col, "text", spec.domain_col, spec.key_col] + ([spec.facet_col] if spec.facet_col else [])
    for col in needed:
        if col not in raw.columns:
            raise ValueError(f"{path}: missing column {col!r} (found {list(raw.columns)})")

    keys = pd.to_numeric(raw[spec.key_col], errors="coerce")
    bad = ~keys.isin([1, -1])
    if bad.any():
        raise ValueError(f"{path}: column {spec.key_col!r} must be 1 or -1; bad values at items "
                         f"{raw.loc[bad, spec.id_col].tolist()}: {raw.loc[bad, spec.key_col].tolist()}")
    raw_domain = raw[spec.domain_col].astype(str).str.strip()
    domain = raw_domain.map(spec.domain_map) if spec.domain_map else raw_domain
    bad = ~domain.isin(DOMAINS)
    if bad.any():
        expected = sorted(spec.domain_map) if spec.domain_map else list(DOMAINS)
        raise ValueError(f"{path}: unexpected values in column {spec.domain_col!r}: "
                         f"{sorted(set(raw_domain[bad]))} (expected {expected})")
    if raw["text"].isna().any() or (raw["text"].astype(str).str.strip() == "").any():
        empty = raw.loc[raw["text"].isna() | (raw["text"].astype(str).str.strip() == ""), spec.id_col].tolist()
        raise ValueError(f"{path}: empty item text for items {empty}")
    if raw[spec.id_col].duplicated().any():
        raise ValueError(f"{path}: duplicate item ids {raw.loc[raw[spec.id_col].duplicated(), spec.id_col].tolist()}")

    reverse = keys == -1
    if spec.stability_domain is not None:
        # The file keys this domain for emotional stability; reversing its keys turns it into neuroticism.
        flip = raw_domain == spec.stability_domain
        reverse = reverse.where(~flip, ~reverse)
    ids = raw[spec.id_col]
    item = ids.astype(int).tolist() if pd.api.types.is_integer_dtype(ids) else ids.astype(str).tolist()
    facet = raw[spec.facet_col].astype(str).tolist() if spec.facet_col else [None] * len(raw)
    return pd.DataFrame({"item": pd.Series(item, dtype=object), "text": raw["text"].astype(str).str.strip().tolist(),
                         "domain": domain.tolist(), "facet": pd.Series(facet, dtype=object),
                         "reverse": reverse.astype(bool).tolist(), "instrument": name})


# ---------------------------------------------------------------------------------------------------------------
# Human norms (1-5 scale), from the data mirror's README.


class Norm(NamedTuple):
    mean: float
    sd: float | None  # None where the source gives no SD


HUMAN_NORMS: dict[str, dict[str, Norm]] = {
    # BFI-44, n = 6,076, as used by PsychoBench.
    "bfi44": {"O": Norm(3.92, 0.66), "C": Norm(3.45, 0.73), "E": Norm(3.25, 0.90), "A": Norm(3.64, 0.72),
              "N": Norm(3.32, 0.82)},
    # IPIP-NEO-120, Johnson's data (n ~ 619,150), as used by MPI and BIG5-CHAT; no SDs published with them.
    "ipip120": {"O": Norm(3.44, None), "C": Norm(3.60, None), "E": Norm(3.41, None), "A": Norm(3.66, None),
                "N": Norm(2.80, None)},
}
HUMAN_NORMS_N = {"bfi44": 6076, "ipip120": 619150}

# ---------------------------------------------------------------------------------------------------------------
# Prompts

LIKERT5 = ("strongly disagree", "disagree", "neither agree nor disagree", "agree", "strongly agree")
LIKERT_OPTIONS = ("1", "2", "3", "4", "5")
# Instruction and scale first, the statement last, as BIG5-CHAT and PsychoBench lay out their items: every prompt of
# one condition then shares everything up to the statement, which the log-likelihood and generation paths compute once.
PROMPT_TEMPLATE = (
    "How well does the following statement describe you? Answer with a single number from 1 to {n}, where\n"
    "{scale}\n\n"
    "Statement: \"{statement}\""
)
_ROLES = ("system", "user", "assistant")


def _check_persona(persona: Messages) -> None:
    """Raise TypeError/ValueError unless `persona` is a list of messages with a known role and string content."""
    if not isinstance(persona, list):
        raise TypeError(f"persona must be a list of chat messages, got {type(persona).__name__}")
    for i, message in enumerate(persona):
        if not isinstance(message, dict) or message.get("role") not in _ROLES \
                or not isinstance(message.get("content"), str):
            raise ValueError(f"persona message {i} must be a dict with role in {_ROLES} and string content, "
                             f"got {message!r}")


def item_prompt(text: str, scale: Sequence[str] = LIKERT5, stem: str = IPIP_STEM,
                persona: Messages | None = None) -> Messages:
    """Chat asking for a 1-5 self-rating of one item (one item per prompt, as BIG5-CHAT and PsychoBench do).

    `persona` messages (a system persona instruction, few-shot demos) come before the item's user message; the
    user message gives the instruction and scale first and ends with the statement.
    """
    text = text.strip()
    if not text:
        raise ValueError("item text is empty")
    if "{text}" not in stem:
        raise ValueError(f"stem {stem!r} has no {{text}} placeholder")
    if not stem.startswith("{text}"):
        text = text[0].lower() + text[1:]  # "Is talkative." continues a sentence: "... someone who is talkative."
    statement = stem.format(text=text)
    lines = "\n".join(f"{i} = {label}" for i, label in enumerate(scale, start=1))
    user = {"role": "user", "content": PROMPT_TEMPLATE.format(statement=statement, scale=lines, n=len(scale))}
    if persona is None:
        return [user]
    _check_persona(persona)
    return [dict(message) for message in persona] + [user]


def _item_chats(items_df: pd.DataFrame, stem: str | None, scale: Sequence[str],
                persona: Messages | None = None) -> list[Messages]:
    """Prompt per row; the stem comes from `stem`, else from the row's instrument, else the bare statement."""
    _check_items(items_df)
    if stem is not None:
        stems = [stem] * len(items_df)
    elif "instrument" in items_df.columns:
        stems = [STEMS.get(name, IPIP_STEM) for name in items_df["instrument"]]
    else:
        stems = [IPIP_STEM] * len(items_df)
    return [item_prompt(text, scale, s, persona) for text, s in zip(items_df["text"], stems)]


def _check_items(items_df: pd.DataFrame) -> None:
    """Raise ValueError when the items table is empty or lacks a column that administration needs."""
    missing = [c for c in ("item", "text", "domain", "reverse") if c not in items_df.columns]
    if missing:
        raise ValueError(f"items table lacks columns {missing} (use load_instrument)")
    if items_df.empty:
        raise ValueError("items table is empty")


# ---------------------------------------------------------------------------------------------------------------
# Shared-prefix forward passes: every prompt of one condition starts with the same persona, instruction and scale,
# so its key/value cache is computed once and only each prompt's remaining tokens are run.


def _device(model):
    """Device of the model's parameters."""
    return next(model.parameters()).device


def _pad_id(tokenizer) -> int:
    """Id used for padding; padded positions are masked out, so any id works where the tokenizer has none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """The model in eval mode inside the block (no dropout); its previous training flag restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _render(tokenizer, chats: list[Messages]) -> list[str]:
    """Each chat as the text the model continues (chat template with the assistant generation prompt)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat template; chat prompts need one")
    if not chats:
        raise ValueError("no chats given")
    return [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]


def _prompt_ids(tokenizer, chats: list[Messages]) -> list[list[int]]:
    """Token ids of each rendered chat, without extra special tokens (the template carries any BOS), as generation."""
    return [list(ids) for ids in tokenizer(_render(tokenizer, chats), add_special_tokens=False)["input_ids"]]


def _shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest common token prefix of `rows`, leaving at least one token of every row after it."""
    first = rows[0]
    n = min(len(row) for row in rows) - 1
    for row in rows[1:]:
        k = 0
        while k < n and row[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


class _Prefix:
    """The key/value cache of a token prefix shared by all rows, computed once at batch size 1."""

    def __init__(self, ids: list[int], layers: list[tuple], config):
        self.ids, self.layers, self.config = ids, layers, config

    @classmethod
    def build(cls, model, rows: Sequence[Sequence[int]]) -> _Prefix:
        """Run the rows' common prefix through the model (an empty prefix when they share no token)."""
        import torch

        ids = list(rows[0][:_shared_prefix_len(rows)])
        if not ids:
            return cls.empty()
        cache = model(input_ids=torch.tensor([ids], device=_device(model)), use_cache=True).past_key_values
        return cls(ids, [(layer.keys, layer.values) for layer in cache.layers], model.config)

    @classmethod
    def empty(cls) -> _Prefix:
        """No shared prefix: rows are run whole."""
        return cls([], [], None)

    def __len__(self) -> int:
        return len(self.ids)

    def cache_for(self, batch_size: int):
        """A fresh cache holding the prefix for `batch_size` rows: forward appends to its cache, so one per batch."""
        from transformers import DynamicCache

        if not self.ids:
            return None
        return DynamicCache([(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1))
                             for k, v in self.layers], config=self.config)


def _forward_suffixes(model, rows: list[list[int]], prefix: _Prefix, pad_id: int, side: str, use_cache: bool):
    """One forward pass over each row's tokens after the prefix: (model output, attention mask, starts).

    The suffixes are padded on `side` ("right" whenever the prefix is non-empty) and attend to the cached prefix;
    their positions continue from the prefix length and count real tokens only. logits[b, starts[b] + j] belong to
    row b's token at position len(prefix) + j. The mask covers prefix + suffix, for continuing generation.
    """
    import torch

    n_pre = len(prefix)
    if n_pre and side != "right":
        raise ValueError(f"suffixes after a cached prefix must be right-padded, got padding side {side!r}")
    suffixes = [row[n_pre:] for row in rows]
    width = max(len(s) for s in suffixes)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    starts = []
    for b, suffix in enumerate(suffixes):
        lo = width - len(suffix) if side == "left" else 0
        input_ids[b, lo:lo + len(suffix)] = torch.tensor(suffix, dtype=torch.long)
        mask[b, lo:lo + len(suffix)] = 1
        starts.append(lo)
    mask = torch.cat([torch.ones((len(rows), n_pre), dtype=torch.long), mask], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, n_pre:]  # real tokens only: left padding shifts nothing
    device = _device(model)
    mask = mask.to(device)
    result = model(input_ids=input_ids.to(device), attention_mask=mask, position_ids=position_ids.to(device),
                   past_key_values=prefix.cache_for(len(rows)), use_cache=use_cache)
    return result, mask, starts


# ---------------------------------------------------------------------------------------------------------------
# Administration by generation


class UnparseableAnswer(ValueError):
    """A reply with no usable 1-5 rating."""


# A scale echoed in the reply ("on a scale of 1 to 5", "4/5", "out of 5") must not be read as the rating.
_SCALE_ECHO = re.compile(r"\b1\s*(?:to|-|–)\s*5\b|(?:/|\bout of)\s*5\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
# Longer phrases first; each is removed once matched so that "disagree" inside "strongly disagree" is not reused.
_LABELS = [
    (re.compile(r"\bneither agree nor disagree\b|\bneutral\b|\bneither\b|\bundecided\b"), 3),
    (re.compile(r"\bstrongly disagree\b|\bdisagree strongly\b"), 1),
    (re.compile(r"\bstrongly agree\b|\bagree strongly\b"), 5),
    (re.compile(r"\bdisagree\b"), 2),
    (re.compile(r"\bagree\b"), 4),
]
_NEGATED = re.compile(r"\b(?:not|never|don't|do not|wouldn't|would not|can't|cannot)\s+(?:\w+\s+)?(?:dis)?agree\b")


_LIST_ITEM = re.compile(r"\s*\d\s*[.)]\s+[A-Za-z\"']")  # "1. Word", "2) I ..."; a bare "4." or "4. " is a rating


def parse_answer(reply: str) -> int:
    """The 1-5 rating in a reply: its first number, else a Likert label; UnparseableAnswer when there is none."""
    if reply is None or not str(reply).strip():
        raise UnparseableAnswer("empty reply")
    if _LIST_ITEM.match(str(reply)):
        # "1. I'm a perfectionist." numbers a list item; reading it as the rating 1 would invent an answer.
        raise UnparseableAnswer(f"a numbered list item, not a rating: {reply!r}")
    text = _SCALE_ECHO.sub(" ", str(reply))
    match = _NUMBER.search(text)
    if match:
        value = float(match.group())
        if value != int(value):
            raise UnparseableAnswer(f"rating {match.group()} is not a whole number: {reply!r}")
        if not 1 <= value <= 5:
            raise UnparseableAnswer(f"rating {match.group()} out of range 1-5: {reply!r}")
        return int(value)
    low = " ".join(text.lower().replace("’", "'").split())
    if _NEGATED.search(low):
        raise UnparseableAnswer(f"negated Likert label is ambiguous: {reply!r}")
    found = set()
    for pattern, value in _LABELS:
        if pattern.search(low):
            found.add(value)
            low = pattern.sub(" ", low)
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise UnparseableAnswer(f"conflicting Likert labels {sorted(found)}: {reply!r}")
    raise UnparseableAnswer(f"no rating found: {reply!r}")


def administer_by_generation(generate_fn: GenerateFn, items_df: pd.DataFrame, n_runs: int = 5,
                             temperature: float = 0.6, max_new_tokens: int = 128, seed: int = 0,
                             stem: str | None = None, scale: Sequence[str] = LIKERT5,
                             persona: Messages | None = None) -> tuple[pd.DataFrame, int]:
    """Sample a reply to every item `n_runs` times and parse it; unparseable replies stay missing and are counted.

    `persona` messages (system persona, few-shot demos) are put before every item's user message.
    """
    if n_runs < 1:
        raise ValueError(f"n_runs must be >= 1, got {n_runs}")
    chats = _item_chats(items_df, stem, scale, persona)
    rows = []
    for run in range(n_runs):
        replies = generate_fn(chats, temperature, max_new_tokens, seed + run)  # a new seed per run: independent draws
        if len(replies) != len(chats):
            raise ValueError(f"run {run}: generate_fn returned {len(replies)} replies for {len(chats)} prompts")
        for (_, item), reply in zip(items_df.iterrows(), replies):
            try:
                answer, error = parse_answer(reply), None
            except UnparseableAnswer as exc:
                answer, error = pd.NA, str(exc)
            rows.append({"run": run, "item": item["item"], "domain": item["domain"], "reverse": bool(item["reverse"]),
                         "reply": reply, "answer": answer, "error": error})
    answers = pd.DataFrame(rows)
    answers["answer"] = answers["answer"].astype("Int64")
    n_bad = int(answers["answer"].isna().sum())
    if n_bad:
        log.warning("%d of %d replies had no parseable 1-%d rating; left missing", n_bad, len(answers), len(scale))
    return answers, n_bad


def summarize_answers(answers: pd.DataFrame) -> dict:
    """Counts of one answer sheet: distinct items, answers (items x runs), unparseable (missing) answers, their share."""
    for col in ("item", "answer"):
        if col not in answers.columns:
            raise ValueError(f"answers lack column {col!r}")
    if answers.empty:
        raise ValueError("answer sheet is empty")
    n_bad = int(answers["answer"].isna().sum())
    return {"n_items": int(answers["item"].nunique()), "n_answers": len(answers), "n_unparseable": n_bad,
            "share_unparseable": n_bad / len(answers)}


def hf_generate_fn(model, tokenizer, batch_size: int = 8, top_p: float = 1.0, top_k: int | None = None) -> GenerateFn:
    """A generate_fn for a local Hugging Face chat model (wraps lib.models.generate_chat; left padding needed)."""
    from lib.models import generate_chat

    def generate(chats: list[Messages], temperature: float, max_new_tokens: int, seed: int) -> list[str]:
        return generate_chat(model, tokenizer, chats, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)

    return generate


def prefix_generate_fn(model, tokenizer, batch_size: int = 8, top_p: float = 1.0,
                       top_k: int | None = None) -> GenerateFn:
    """A generate_fn that runs the prompts' shared token prefix once, then samples the rest with a KV cache.

    All items of one condition share the persona, instruction and scale; only the statement differs. Sampling is
    lib.decoding's: temperature, then top-k (None keeps the whole vocabulary), then top-p, each batch from a generator
    seeded by lib.decoding.batch_seed; greedy at temperature 0. A row stops at any of lib.decoding.stop_ids.
    Replies are decoded without special tokens and stripped, as lib.models.generate_chat does.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    stop_ids = decoding.stop_ids(tokenizer, model)

    def generate(chats: list[Messages], temperature: float, max_new_tokens: int, seed: int) -> list[str]:
        sampling = decoding.Sampling(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                                     seed=seed)
        new_ids = _prefix_generate_ids(model, tokenizer, chats, sampling, batch_size, stop_ids)
        return decoding.decode(tokenizer, new_ids)

    return generate


def _prefix_generate_ids(model, tokenizer, chats: list[Messages], sampling: decoding.Sampling, batch_size: int,
                         stop_ids: list[int]) -> list[list[int]]:
    """New token ids (stop token excluded) per chat: shared prefix once, then batched suffixes and KV-cached steps.
    Chats are batched by length; each batch draws from a generator seeded by lib.decoding.batch_seed."""
    import torch

    prompts = _prompt_ids(tokenizer, chats)
    device = _device(model)
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths together: less padding
    out: list[list[int]] = [[] for _ in prompts]
    with _eval_mode(model), torch.inference_mode():
        prefix = _Prefix.build(model, prompts)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            generator = decoding.generator(device, decoding.batch_seed(sampling.seed, start))
            new = _sample_batch(model, [prompts[i] for i in idx], prefix, _pad_id(tokenizer), sampling, generator,
                                stop)
            for i, ids in zip(idx, new):
                out[i] = ids
    return out


def _sample_batch(model, rows: list[list[int]], prefix: _Prefix, pad_id: int, sampling: decoding.Sampling,
                  generator, stop) -> list[list[int]]:
    """New token ids per row of one batch: run the suffixes after the prefix, then one cached step per token."""
    import torch

    device = _device(model)
    result, mask, starts = _forward_suffixes(model, rows, prefix, pad_id, "right", use_cache=True)
    last = torch.tensor([s + len(r) - len(prefix) - 1 for s, r in zip(starts, rows)], device=device)
    logits = result.logits[torch.arange(len(rows), device=device), last]
    cache = result.past_key_values
    positions = torch.tensor([len(r) for r in rows], device=device)  # the next token's position per row
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    out: list[list[int]] = [[] for _ in rows]
    for step in range(sampling.max_new_tokens):
        token = decoding.next_tokens(logits, sampling, generator)
        keep = ~done & ~torch.isin(token, stop)
        for b in keep.nonzero().flatten().tolist():
            out[b].append(int(token[b]))
        done |= ~keep
        if bool(done.all()) or step == sampling.max_new_tokens - 1:
            break
        feed = token.masked_fill(done, pad_id)  # finished rows run on, their output ignored
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        result = model(input_ids=feed[:, None], attention_mask=mask, position_ids=positions[:, None],
                       past_key_values=cache, use_cache=True)
        cache, logits = result.past_key_values, result.logits[:, -1]
        positions = positions + 1
    return out


# ---------------------------------------------------------------------------------------------------------------
# Administration by log-likelihood


class _Row(NamedTuple):
    """One sequence run for log-likelihood scoring and the options read off it."""

    ids: list[int]  # prompt, followed by the option's tokens when options take more than one token
    chat: int
    prompt_len: int
    scored: list[tuple[int, list[int]]]  # (option index, option token ids) read off this row


def _option_ids(tokenizer, prompt_text: str, prompt_ids: list[int], option: str) -> list[int]:
    """Token ids of `option` as the model would write it right after the prompt."""
    full = tokenizer(prompt_text + option, add_special_tokens=False)["input_ids"]
    if len(full) > len(prompt_ids) and full[:len(prompt_ids)] == prompt_ids:
        ids = full[len(prompt_ids):]  # the option as it is tokenized after this prompt
    else:
        # The option merged with the end of the prompt; score the option's own tokens after the whole prompt.
        ids = tokenizer(option, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"option {option!r} tokenizes to nothing")
    return list(ids)


def _loglik_rows(tokenizer, chats: list[Messages], options: Sequence[str]) -> list[_Row]:
    """Rows to run: one per chat scoring every option when all options are single tokens, else one per option."""
    texts = _render(tokenizer, chats)
    prompts = _prompt_ids(tokenizer, chats)
    option_ids = [[_option_ids(tokenizer, text, ids, option) for option in options]
                  for text, ids in zip(texts, prompts)]
    if all(len(ids) == 1 for per_chat in option_ids for ids in per_chat):
        # The next-token distribution at the last prompt token scores all options at once.
        return [_Row(prompt, c, len(prompt), list(enumerate(per_chat)))
                for c, (prompt, per_chat) in enumerate(zip(prompts, option_ids))]
    return [_Row(prompt + ids, c, len(prompt), [(j, ids)])
            for c, (prompt, per_chat) in enumerate(zip(prompts, option_ids)) for j, ids in enumerate(per_chat)]


def likert_loglik(model, tokenizer, chats: list[Messages], options: Sequence[str] = LIKERT_OPTIONS,
                  batch_size: int = 16, padding_side: str | None = None, share_prefix: bool = True) -> np.ndarray:
    """Log-probability of each option as the assistant's reply to each chat (n_chats x n_options), batched.

    With `share_prefix` the chats' common token prefix runs once and its KV cache is reused by every batch, whose
    rows are then right-padded; `padding_side` applies to full rows otherwise. When every option is one token after
    the prompt (1-5 under ChatML), each chat needs one row; otherwise each (chat, option) pair gets its own row.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not options:
        raise ValueError("no options to score")
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    rows = _loglik_rows(tokenizer, chats, options)
    pad_id = _pad_id(tokenizer)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids))  # similar lengths together: less padding
    out = np.empty((len(chats), len(options)), dtype=np.float64)
    with _eval_mode(model), torch.inference_mode():
        # The prefix must end before the first scored position, so it is taken from the prompts alone.
        prefix = _Prefix.build(model, [row.ids[:row.prompt_len] for row in rows]) if share_prefix else _Prefix.empty()
        if len(prefix):
            side = "right"
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            result, _, starts = _forward_suffixes(model, [rows[i].ids for i in idx], prefix, pad_id, side,
                                                  use_cache=bool(len(prefix)))
            for b, i in enumerate(idx):
                row = rows[i]
                first = starts[b] + row.prompt_len - 1 - len(prefix)  # logits at position t predict token t + 1
                n_steps = max(len(ids) for _, ids in row.scored)
                logp = torch.log_softmax(result.logits[b, first:first + n_steps].float(), dim=-1)
                for j, ids in row.scored:
                    targets = torch.tensor(ids, device=logp.device)
                    out[row.chat, j] = float(logp[torch.arange(len(ids), device=logp.device), targets].sum())
    return out


def administer_by_loglik(model, tokenizer, items_df: pd.DataFrame, options: Sequence[str] = LIKERT_OPTIONS,
                         batch_size: int = 16, stem: str | None = None, scale: Sequence[str] = LIKERT5,
                         padding_side: str | None = None, persona: Messages | None = None,
                         share_prefix: bool = True) -> pd.DataFrame:
    """Deterministic answers: the most likely option (answer) and the mean rating under softmax (expected).

    `persona` messages (system persona, few-shot demos) are put before every item's user message.
    """
    if len(options) != len(scale):
        raise ValueError(f"{len(options)} options for a {len(scale)}-point scale")
    chats = _item_chats(items_df, stem, scale, persona)
    logp = likert_loglik(model, tokenizer, chats, options, batch_size=batch_size, padding_side=padding_side,
                         share_prefix=share_prefix)
    probs = np.exp(logp - logp.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)  # renormalised over the options only
    values = np.arange(1, len(options) + 1)
    answers = pd.DataFrame({"run": 0, "item": items_df["item"].to_numpy(), "domain": items_df["domain"].to_numpy(),
                            "reverse": items_df["reverse"].astype(bool).to_numpy()})
    answers["answer"] = pd.array(values[logp.argmax(axis=1)], dtype="Int64")
    answers["expected"] = probs @ values
    for j, value in enumerate(values):
        answers[f"logp_{value}"] = logp[:, j]
    return answers


# ---------------------------------------------------------------------------------------------------------------
# Scoring


def keyed_scores(answers: pd.DataFrame, value_col: str = "answer", scale_max: int = 5) -> pd.Series:
    """Item scores after reverse keying (scale_max + 1 - x for reverse items); missing stays missing."""
    for col in (value_col, "domain", "reverse"):
        if col not in answers.columns:
            raise ValueError(f"answers lack column {col!r}")
    x = pd.to_numeric(answers[value_col], errors="raise").astype("Float64")
    out_of_range = x.notna() & ((x < 1) | (x > scale_max))
    if out_of_range.any():
        raise ValueError(f"{int(out_of_range.sum())} values in {value_col!r} outside 1-{scale_max}")
    rev = answers["reverse"].astype(bool)
    return x.where(~rev, scale_max + 1 - x)


def score(answers: pd.DataFrame, value_col: str = "answer", scale_max: int = 5) -> pd.DataFrame:
    """Per domain over all runs and items: mean and SD of keyed item scores, items answered and missing."""
    keyed = keyed_scores(answers, value_col, scale_max)
    unknown = set(answers["domain"]) - set(DOMAINS)
    if unknown:
        raise ValueError(f"answers have unknown domains {sorted(unknown)}")
    rows = []
    for domain in DOMAINS:
        vals = keyed[(answers["domain"] == domain).to_numpy()].dropna().astype(float)
        n_total = int((answers["domain"] == domain).sum())
        if n_total == 0:
            continue
        rows.append({"domain": domain, "mean": vals.mean() if len(vals) else np.nan,
                     "sd": vals.std(ddof=1) if len(vals) > 1 else np.nan,
                     "n_answered": len(vals), "n_missing": n_total - len(vals)})
    return pd.DataFrame(rows).set_index("domain")


def compare_with_norms(scores: pd.DataFrame, norms: dict[str, Norm | tuple]) -> pd.DataFrame:
    """Model mean beside the human mean per domain: difference, and z = difference / human SD where it is known."""
    rows = []
    for domain in DOMAINS:
        if domain not in scores.index or domain not in norms:
            continue
        norm = Norm(*norms[domain])
        model_mean = float(scores.loc[domain, "mean"])
        diff = model_mean - norm.mean
        rows.append({"domain": domain, "model_mean": model_mean, "human_mean": norm.mean,
                     "human_sd": np.nan if norm.sd is None else norm.sd, "diff": diff,
                     "z": np.nan if not norm.sd else diff / norm.sd})
    if not rows:
        raise ValueError(f"no domain in common between scores {list(scores.index)} and norms {list(norms)}")
    return pd.DataFrame(rows).set_index("domain")


def domain_scores_by(answers: pd.DataFrame, by: str, value_col: str = "answer") -> pd.DataFrame:
    """Mean keyed score per group (e.g. persona) and domain: a groups x 5 table for intra_trait_correlations."""
    if by not in answers.columns:
        raise ValueError(f"answers lack column {by!r}")
    keyed = keyed_scores(answers, value_col).astype(float)
    table = pd.DataFrame({by: answers[by].to_numpy(), "domain": answers["domain"].to_numpy(), "x": keyed.to_numpy()})
    wide = table.groupby([by, "domain"])["x"].mean().unstack("domain")
    return wide.reindex(columns=[d for d in DOMAINS if d in wide.columns])


def intra_trait_correlations(domain_scores_by_persona: pd.DataFrame) -> pd.DataFrame:
    """Pearson correlations between the five domains across personas (5 x 5), to set beside the human pattern."""
    missing = [d for d in DOMAINS if d not in domain_scores_by_persona.columns]
    if missing:
        raise ValueError(f"persona scores lack domains {missing}")
    table = domain_scores_by_persona[list(DOMAINS)].astype(float)
    if len(table) < 3:
        raise ValueError(f"need at least 3 personas for correlations, got {len(table)}")
    constant = [d for d in DOMAINS if table[d].nunique(dropna=True) < 2]
    if constant:
        log.warning("domains %s do not vary across personas; their correlations are undefined (NaN)", constant)
    return table.corr(method="pearson")
