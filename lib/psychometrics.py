"""Psychometric evaluation of chat models: Big-Five questionnaires, administration, scoring, human norms.

Every model the project trains or prompts gets the same check: does it answer personality questionnaires the way
its persona says it should? This module loads the public instruments from the offline mirror (BFI-44, IPIP-NEO-120,
IPIP-NEO-300, IPIP 50 markers) into one normalised table, administers them one item per prompt (as BIG5-CHAT and
PsychoBench do) either by sampling replies and parsing the rating, or by reading the log-likelihood of each Likert
option (as PsyBORGS and MPI do), and scores the five domains against published human norms.

Usage:
    items = load_instrument("bfi44", "../shared/data")
    answers, n_bad = administer_by_generation(generate_fn, items, n_runs=5)   # or administer_by_loglik(model, tok, items)
    scores = score(answers)                          # per domain: mean, sd, n_answered, n_missing
    compare_with_norms(scores, HUMAN_NORMS["bfi44"])

Conventions: domains are the letters O, C, E, A, N and N is always *neuroticism* (the IPIP 50 markers publish
emotional stability instead; their N keys are flipped on load). Ratings are integers 1-5; reverse-keyed items score
6 - x. A reply that cannot be parsed stays missing and is counted: it is never replaced by the scale midpoint.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

DOMAINS = ("O", "C", "E", "A", "N")
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
PROMPT_TEMPLATE = (
    "Here is a statement about you:\n"
    "\"{statement}\"\n\n"
    "How much do you agree with it? Use this scale:\n"
    "{scale}\n\n"
    "Answer with a single number from 1 to {n}."
)


def item_prompt(text: str, scale: Sequence[str] = LIKERT5, stem: str = IPIP_STEM) -> Messages:
    """Chat asking for a 1-5 self-rating of one item (one item per prompt, as BIG5-CHAT and PsychoBench do)."""
    text = text.strip()
    if not text:
        raise ValueError("item text is empty")
    if "{text}" not in stem:
        raise ValueError(f"stem {stem!r} has no {{text}} placeholder")
    if not stem.startswith("{text}"):
        text = text[0].lower() + text[1:]  # "Is talkative." continues a sentence: "... someone who is talkative."
    statement = stem.format(text=text)
    lines = "\n".join(f"{i} = {label}" for i, label in enumerate(scale, start=1))
    return [{"role": "user", "content": PROMPT_TEMPLATE.format(statement=statement, scale=lines, n=len(scale))}]


def _item_chats(items_df: pd.DataFrame, stem: str | None, scale: Sequence[str]) -> list[Messages]:
    """Prompt per row; the stem comes from `stem`, else from the row's instrument, else the bare statement."""
    _check_items(items_df)
    if stem is not None:
        stems = [stem] * len(items_df)
    elif "instrument" in items_df.columns:
        stems = [STEMS.get(name, IPIP_STEM) for name in items_df["instrument"]]
    else:
        stems = [IPIP_STEM] * len(items_df)
    return [item_prompt(text, scale, s) for text, s in zip(items_df["text"], stems)]


def _check_items(items_df: pd.DataFrame) -> None:
    missing = [c for c in ("item", "text", "domain", "reverse") if c not in items_df.columns]
    if missing:
        raise ValueError(f"items table lacks columns {missing} (use load_instrument)")
    if items_df.empty:
        raise ValueError("items table is empty")


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


def parse_answer(reply: str) -> int:
    """The 1-5 rating in a reply: its first number, else a Likert label; UnparseableAnswer when there is none."""
    if reply is None or not str(reply).strip():
        raise UnparseableAnswer("empty reply")
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
                             stem: str | None = None, scale: Sequence[str] = LIKERT5) -> tuple[pd.DataFrame, int]:
    """Sample a reply to every item `n_runs` times and parse it; unparseable replies stay missing and are counted."""
    if n_runs < 1:
        raise ValueError(f"n_runs must be >= 1, got {n_runs}")
    chats = _item_chats(items_df, stem, scale)
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


def hf_generate_fn(model, tokenizer, batch_size: int = 8, top_p: float = 1.0) -> GenerateFn:
    """A generate_fn for a local Hugging Face chat model (wraps lib.models.generate_chat; left padding needed)."""
    from lib.models import generate_chat

    def generate(chats: list[Messages], temperature: float, max_new_tokens: int, seed: int) -> list[str]:
        return generate_chat(model, tokenizer, chats, max_new_tokens=max_new_tokens, batch_size=batch_size,
                             temperature=temperature, top_p=top_p, seed=seed)

    return generate


# ---------------------------------------------------------------------------------------------------------------
# Administration by log-likelihood


def _option_rows(tokenizer, chats: list[Messages], options: Sequence[str]) -> list[tuple[list[int], int]]:
    """(token ids of prompt + option, number of option tokens) for every (chat, option) pair, chat-major."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("tokenizer has no chat template; log-likelihood scoring needs one")
    rows = []
    for chat in chats:
        # Tokenize the rendered text without extra special tokens, exactly as generation does (the template already
        # carries any BOS), so the scored prompt is the one the model would continue.
        prompt_text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        for option in options:
            full = tokenizer(prompt_text + option, add_special_tokens=False)["input_ids"]
            if len(full) > len(prompt_ids) and full[:len(prompt_ids)] == prompt_ids:
                option_ids = full[len(prompt_ids):]  # the option as it is tokenized after this prompt
            else:
                # The option merged with the end of the prompt; score the option's own tokens after the whole prompt.
                option_ids = tokenizer(option, add_special_tokens=False)["input_ids"]
            if not option_ids:
                raise ValueError(f"option {option!r} tokenizes to nothing")
            rows.append((list(prompt_ids) + list(option_ids), len(option_ids)))
    return rows


def likert_loglik(model, tokenizer, chats: list[Messages], options: Sequence[str] = LIKERT_OPTIONS,
                  batch_size: int = 16, padding_side: str | None = None) -> np.ndarray:
    """Log-probability of each option as the assistant's reply to each chat (n_chats x n_options), batched."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not options:
        raise ValueError("no options to score")
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    rows = _option_rows(tokenizer, chats, options)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out; any id works
    device = next(model.parameters()).device
    # Sorting by length keeps padding small; results are put back in row order.
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = np.empty(len(rows), dtype=np.float64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                width = max(len(rows[i][0]) for i in idx)
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for b, i in enumerate(idx):
                    ids = torch.tensor(rows[i][0], dtype=torch.long)
                    lo = width - len(ids) if side == "left" else 0
                    input_ids[b, lo:lo + len(ids)] = ids
                    mask[b, lo:lo + len(ids)] = 1
                kwargs = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
                if side == "left":
                    # Positions must count real tokens only, or left padding would shift every position.
                    kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
                logits = model(**kwargs).logits
                for b, i in enumerate(idx):
                    ids, k = rows[i]
                    end = width if side == "left" else len(ids)  # one past the last real token
                    # Logits at position t predict token t + 1.
                    step_logits = logits[b, end - k - 1:end - 1].float()
                    targets = input_ids[b, end - k:end].to(step_logits.device)
                    logp = torch.log_softmax(step_logits, dim=-1).gather(-1, targets[:, None]).sum()
                    out[i] = float(logp)
    finally:
        model.train(was_training)
    return out.reshape(len(chats), len(options))


def administer_by_loglik(model, tokenizer, items_df: pd.DataFrame, options: Sequence[str] = LIKERT_OPTIONS,
                         batch_size: int = 16, stem: str | None = None, scale: Sequence[str] = LIKERT5,
                         padding_side: str | None = None) -> pd.DataFrame:
    """Deterministic answers: the most likely option (answer) and the mean rating under softmax (expected)."""
    if len(options) != len(scale):
        raise ValueError(f"{len(options)} options for a {len(scale)}-point scale")
    chats = _item_chats(items_df, stem, scale)
    logp = likert_loglik(model, tokenizer, chats, options, batch_size=batch_size, padding_side=padding_side)
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
