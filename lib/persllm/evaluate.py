"""PersLLM's evaluation: who answers what (11_generate), distinction BLEU with the paper's figures for it, and the
judge's readings (12_eval).

For every test input of character c in stage s, each model answers with sampled decoding:
- `own`: c in stage s, `n_samples` times (two: the intra-character distinction and the reference comparison);
- `stage`: c in each other stage where c has material (stage distinction);
- `inter`: every other character in stage s, where it has material (inter-character distinction).

Distinction BLEU (the paper's personality-distinction measure, lower = more distinct when it is between different
personas): sentence BLEU (sacrebleu, 0-100) of the first own sample against
- the second own sample (`intra`: the same persona twice: high is consistent),
- the other stage's answer (`stage`: low is distinct between stages),
- each other character's answer (`inter`: low is distinct between characters), averaged per input,
then averaged per character and over characters, as the paper averages its six characters.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lib.persllm.label import RESPONSE_TAG, parse_answer
from lib.persllm.personify import prompt, stage_token
from lib.teacher import InvalidReply

KINDS = ("intra", "stage", "inter")

# The paper's distinction BLEU (its Table on personality distinction, averaged over the six characters):
# SFT -> SFT + automatic DPO. Intra: two samples of one character and stage; stage: the two stages of a character;
# inter: a character against each of the other five.
PAPER_DISTINCTION = {"intra": {"sft": 3.53, "dpo": 3.86}, "stage": {"sft": 3.46, "dpo": 3.50},
                     "inter": {"sft": 0.38, "dpo": 0.33}}


def requests(items: Sequence[Mapping], names: Mapping[str, str], available: Mapping[str, set],
             stages: Sequence[Mapping], n_samples: int = 2) -> list[dict]:
    """The generation requests for test items (see the module doc). Each: id, item, target (the item's character),
    character (who answers), stage, role (own / stage / inter), sample."""
    if n_samples < 2:
        raise ValueError(f"n_samples must be >= 2 (intra distinction compares two samples), got {n_samples}")
    reqs = []
    for it in items:
        c, s = it["character"], it["stage"]
        who = [("own", c, s, k) for k in range(n_samples)]
        who += [("stage", c, st["name"], 0) for st in stages if st["name"] != s and st["name"] in available.get(c, set())]
        who += [("inter", o, s, 0) for o in names if o != c and s in available.get(o, set())]
        for role, character, stage, sample in who:
            reqs.append({"id": f"{it['id']}|{role}|{character}|{stage}|{sample}", "item": it["id"], "target": c,
                         "type": it["type"], "input": it["input"], "role": role, "character": character,
                         "name": names[character], "stage": stage, "sample": sample})
    return reqs


def request_seed(seed: int, req_id: str) -> int:
    """A request's own sampling seed (served backend): fixed by the run's seed and the request id alone, so it does
    not depend on batching or on a resumed run, and two samples of one chat (ids differ in `sample`) differ."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}|{req_id}".encode()).digest()[:4], "big") % 2**31


def request_chat(req: Mapping, stages: Sequence[Mapping], system_template: str) -> list[dict]:
    """The chat of one request (an unknown stage is an error naming the known stage tokens)."""
    return prompt(req["name"], stage_token(stages, req["stage"]), req["input"], system_template)


def response_part(reply: str) -> tuple[str, bool]:
    """(the text after `[Response]` if the reply has one, else the whole reply; whether it had the form)."""
    try:
        return parse_answer(reply)["response"], True
    except InvalidReply:
        return " ".join(str(reply).replace(RESPONSE_TAG, " ").split()), False


def sentence_bleu(hyp: str, ref: str) -> float:
    """Sentence BLEU-4, 0-100 (sacrebleu defaults: 13a tokens, exp smoothing)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(str(hyp), [str(ref)]).score)


def distinction_rows(replies: pd.DataFrame) -> pd.DataFrame:
    """Per test input and kind, the distinction BLEU (columns model, item, character, kind, bleu, n).

    `replies`: one row per request with columns model, item, target, role, character, stage, sample, reply. The
    first own sample is the hypothesis; `inter` is the mean over the other characters that answered."""
    need = {"model", "item", "target", "role", "character", "stage", "sample", "reply"}
    missing = need - set(replies.columns)
    if missing:
        raise ValueError(f"distinction_rows: replies lack columns {sorted(missing)}")
    rows = []
    for (model, item), df in replies.groupby(["model", "item"], sort=True):
        own = df[df["role"] == "own"].sort_values("sample")
        if len(own) < 2:
            raise ValueError(f"{model}/{item}: {len(own)} own samples, intra distinction needs two")
        hyp, target = own["reply"].iloc[0], own["target"].iloc[0]
        rows.append({"model": model, "item": item, "character": target, "kind": "intra",
                     "bleu": sentence_bleu(hyp, own["reply"].iloc[1]), "n": 1})
        for kind, role in (("stage", "stage"), ("inter", "inter")):
            others = df[df["role"] == role]["reply"].tolist()
            if others:
                rows.append({"model": model, "item": item, "character": target, "kind": kind,
                             "bleu": float(np.mean([sentence_bleu(hyp, o) for o in others])), "n": len(others)})
    return pd.DataFrame(rows, columns=["model", "item", "character", "kind", "bleu", "n"])


def character_mean(df: pd.DataFrame, value: str = "bleu") -> float:
    """The mean over characters of each character's mean (the paper averages its characters)."""
    return float(df.groupby("character")[value].mean().mean()) if len(df) else float("nan")


def summarize(rows: pd.DataFrame, value: str = "bleu", n_resamples: int = 2000, seed: int = 0,
              level: float = 0.95) -> dict:
    """{model: {kind: {mean, lo, hi, n}}}: the character-averaged mean with a percentile bootstrap interval over
    inputs, resampled within each character (every character keeps its count)."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for (model, kind), df in rows.groupby(["model", "kind"], sort=True):
        groups = [g[value].to_numpy(float) for _, g in df.groupby("character")]
        reps = np.empty(n_resamples)
        for b in range(n_resamples):
            reps[b] = np.mean([g[rng.integers(0, len(g), len(g))].mean() for g in groups])
        lo, hi = np.percentile(reps, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
        out.setdefault(model, {})[kind] = {"mean": character_mean(df, value), "lo": float(lo), "hi": float(hi),
                                           "n": len(df)}
    return out


def paired_difference(rows: pd.DataFrame, a: str, b: str, kind: str, value: str = "bleu", n_resamples: int = 2000,
                      seed: int = 0, level: float = 0.95) -> dict:
    """Model a minus model b on the same inputs for one kind: the mean difference and a bootstrap interval over
    inputs (paired)."""
    df = rows[rows["kind"] == kind].pivot_table(index="item", columns="model", values=value)
    if a not in df or b not in df:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    d = (df[a] - df[b]).dropna().to_numpy(float)
    if not len(d):
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    reps = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(n_resamples)])
    lo, hi = np.percentile(reps, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return {"mean": float(d.mean()), "lo": float(lo), "hi": float(hi), "n": len(d)}


# --------------------------------------------------------------------------------------------- the judge

def judge_chat(template: str, **fields) -> list[dict]:
    """One judge question (a template from params/prompts) as a user turn; the answer is read by log-likelihood."""
    return [{"role": "user", "content": template.format(**fields)}]


def yes_probability(logp: np.ndarray) -> np.ndarray:
    """P(yes) from the log-likelihoods of ("yes", "no") per row, renormalised over the two."""
    logp = np.asarray(logp, dtype=float)
    if logp.ndim != 2 or logp.shape[1] != 2:
        raise ValueError(f"expected n x 2 log-likelihoods (yes, no), got shape {logp.shape}")
    m = logp.max(axis=1, keepdims=True)
    p = np.exp(logp - m)
    return p[:, 0] / p.sum(axis=1)


def expected_rating(logp: np.ndarray, values: Sequence[int] = tuple(range(6))) -> np.ndarray:
    """The expected rating under the softmax of the options' log-likelihoods (rows: chats, columns: values)."""
    logp = np.asarray(logp, dtype=float)
    if logp.ndim != 2 or logp.shape[1] != len(values):
        raise ValueError(f"expected n x {len(values)} log-likelihoods, got shape {logp.shape}")
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)) @ np.asarray(values, dtype=float)


def sample_items(items: Sequence[Mapping], max_items: int | None, seed: int = 0) -> list[dict]:
    """A seeded sample of at most `max_items`, round-robin over characters (each shuffled) so every character is
    in it; in the items' order. None: all."""
    import random

    if max_items is None or len(items) <= max_items:
        return list(items)
    by_char: dict[str, list] = {}
    for it in items:
        by_char.setdefault(it["character"], []).append(it)
    queues = [random.Random(f"{seed}-{c}").sample(v, len(v)) for c, v in sorted(by_char.items())]
    if len({it["id"] for it in items}) != len(items):
        raise ValueError("sample_items: repeated item ids")
    picked: set[str] = set()
    while len(picked) < max_items:
        for q in queues:
            if q and len(picked) < max_items:
                picked.add(q.pop(0)["id"])
    return [it for it in items if it["id"] in picked]
