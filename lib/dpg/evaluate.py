"""DPG's generation units and evaluation: who is prompted with which personality, what the students wrote, and how
far the personality assessed on it lies from the one asked for.

11_generate prompts each student with a personality and the turns before a held-out reply:

    units = generation_units(heldout_samples, vectors, replies_per_unit=4, context_turns=2)   # held-out characters
    units += new_personality_units(units, n=6, seed=0)              # vectors no character has (the "dynamic" claim)
    chats = unit_chats(unit, template, persona_in_context=True)     # one chat per held-out reply context

12_eval puts each unit's replies back into its contexts as the character's lines (`generated_samples`), so the
assessment machine of 05 scores them as it scored the films, and P.S.D.C. (lib.dpg.label.psdc) compares the two
vectors. The coherency and consistency judges read a 1-5 rating by log-likelihood (`judge_chats`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lib.dpg.data import render_turns
from lib.dpg.rows import check_vector, personality_prompt
from lib.prompts import check_template
from lib.traits import TRAITS

METHODS = ("base", "prompt", "lora_sft", "dpg")  # base: no personality at all, the floor every method must beat
RATING_OPTIONS = ("1", "2", "3", "4", "5")
JUDGE_FIELDS = {"character", "context", "reply", "persona"}


def _contexts(sample: Mapping, context_turns: int) -> list[tuple[list[dict], str]]:
    """(turns before, reply) for each line of the sample's character that answers someone else."""
    turns, out = sample["turns"], []
    for i, turn in enumerate(turns):
        if turn["speaker"] == sample["character"] and i > 0 and turns[i - 1]["speaker"] != sample["character"]:
            out.append(([dict(t) for t in turns[max(0, i - context_turns):i]], turn["text"]))
    return out


def generation_units(samples: Sequence[Mapping], vectors: Mapping[str, Mapping], replies_per_unit: int,
                     context_turns: int = 2) -> tuple[list[dict], dict]:
    """(units, stats): one unit per sample with an assessed vector and at least one reply context.

    A unit is a personality to prompt with (the window's assessed vector and its character's information) and up to
    `replies_per_unit` contexts (the turns before each of the character's replies in that window) to answer. The
    students write one reply per context; 12_eval reads the replies back into the contexts as one dialogue. Samples
    without a vector (outliers) or without a reply context are skipped and counted.
    """
    if not isinstance(replies_per_unit, int) or replies_per_unit < 1:
        raise ValueError(f"replies_per_unit must be an integer >= 1, got {replies_per_unit!r}")
    if not isinstance(context_turns, int) or context_turns < 1:
        raise ValueError(f"context_turns must be an integer >= 1, got {context_turns!r}")
    units, stats = [], {"units": 0, "without_vector": 0, "without_context": 0}
    for s in samples:
        if s["sample_id"] not in vectors:
            stats["without_vector"] += 1
            continue
        found = _contexts(s, context_turns)[:replies_per_unit]
        if not found:
            stats["without_context"] += 1
            continue
        units.append({"unit_id": f"char:{s['sample_id']}", "kind": "character", "sample_id": s["sample_id"],
                      "character": s["character"], "info": dict(s["info"]),
                      "vector": check_vector(vectors[s["sample_id"]]),
                      "contexts": [c for c, _ in found], "references": [r for _, r in found]})
    stats["units"] = len(units)
    return units, stats


def new_vectors(n: int, seed: int = 0, existing: Sequence[Mapping] = (), min_distance: float = 3.0,
                low: int = -4, high: int = 4, max_draws: int = 10_000) -> list[dict]:
    """`n` integer personality vectors in [low, high] that no character has: each lies at least `min_distance`
    (Euclidean) from every vector in `existing` and from the others drawn. Seeded; an error if the space is too
    crowded to find them within `max_draws` draws."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not -5 <= low <= high <= 5:
        raise ValueError(f"need -5 <= low <= high <= 5, got low={low}, high={high}")
    rng = np.random.default_rng(seed)
    taken = [np.array([check_vector(v)[t] for t in TRAITS], dtype=float) for v in existing]
    out = []
    for _ in range(max_draws):
        if len(out) == n:
            return out
        v = rng.integers(low, high + 1, size=len(TRAITS)).astype(float)
        if all(np.linalg.norm(v - w) >= min_distance for w in taken):
            taken.append(v)
            out.append({t: int(x) for t, x in zip(TRAITS, v)})
    if len(out) < n:
        raise ValueError(f"found only {len(out)} of {n} new vectors at distance >= {min_distance} from the "
                         f"{len(existing)} existing ones in {max_draws} draws: lower min_distance or n")
    return out


def new_personality_units(units: Sequence[Mapping], n: int, seed: int = 0, min_distance: float = 3.0) -> list[dict]:
    """DPG's "dynamic" claim: `n` units with new vectors (`new_vectors`, away from every character's), each on the
    contexts and character information of a character unit taken in turn, so only the personality differs."""
    base = [u for u in units if u["kind"] == "character"]
    if n and not base:
        raise ValueError("new personality vectors need at least one character unit to borrow contexts from")
    vecs = new_vectors(n, seed=seed, existing=[u["vector"] for u in base], min_distance=min_distance)
    out = []
    for k, vec in enumerate(vecs):
        src = base[k % len(base)]
        out.append({**src, "unit_id": f"new:{k}:{src['sample_id']}", "kind": "new", "vector": vec,
                    "contexts": [list(c) for c in src["contexts"]], "references": list(src["references"])})
    return out


def unit_persona(unit: Mapping, template: str) -> str:
    """The unit's personality prompt; a vector of the wrong keys or out of [-5, 5] is a ValueError naming the unit."""
    try:
        return personality_prompt(unit["vector"], unit["info"], template)
    except (TypeError, ValueError) as err:
        raise ValueError(f"unit {unit.get('unit_id', '?')}: {err}") from err


def unit_chats(unit: Mapping, template: str, persona_in_context: bool) -> list[list[dict]]:
    """One chat per context: the personality prompt as the system turn (when the method reads it) and the turns
    before the reply as the user turn, as the students were trained (lib.dpg.rows.reply_rows)."""
    persona = unit_persona(unit, template)
    head = [{"role": "system", "content": persona}] if persona_in_context else []
    return [head + [{"role": "user", "content": render_turns(c)}] for c in unit["contexts"]]


def generated_samples(units: Sequence[Mapping], replies: Mapping[str, Sequence[str]]) -> list[dict]:
    """Assessment samples (lib.dpg.label) of what a student wrote: per unit, its contexts with the generated reply
    after each as the character's line. `replies[unit_id]` holds one reply per context; an empty reply stays in as
    an empty line (the assessor sees that the character said nothing)."""
    out = []
    for u in units:
        got = list(replies.get(u["unit_id"], []))
        if len(got) != len(u["contexts"]):
            raise ValueError(f"unit {u['unit_id']}: {len(got)} replies for {len(u['contexts'])} contexts")
        turns = []
        for context, reply in zip(u["contexts"], got):
            turns += [dict(t) for t in context] + [{"speaker": u["character"], "text": str(reply).strip() or "..."}]
        out.append({"sample_id": u["unit_id"], "source": "generated", "character": u["character"],
                    "info": u["info"], "turns": turns})
    return out


def judge_chats(unit: Mapping, replies: Sequence[str], template: str, persona_template: str) -> list[list[dict]]:
    """One rating chat per reply: the judge template filled with {character}, {context}, {reply} and {persona}."""
    check_template(template, JUDGE_FIELDS, required=("reply",), what="judge")
    persona = unit_persona(unit, persona_template)
    return [[{"role": "user", "content": template.format(character=unit["character"], context=render_turns(c),
                                                          reply=str(r).strip() or "(nothing)", persona=persona).strip()}]
            for c, r in zip(unit["contexts"], replies)]


def expected_rating(logp: np.ndarray) -> np.ndarray:
    """Expected 1-5 rating under the softmax of each row's option log-likelihoods (n x 5)."""
    logp = np.asarray(logp, dtype=float)
    if logp.ndim != 2 or logp.shape[1] != len(RATING_OPTIONS):
        raise ValueError(f"expected an (n x {len(RATING_OPTIONS)}) array, got {logp.shape}")
    p = np.exp(logp - logp.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return p @ np.arange(1, len(RATING_OPTIONS) + 1)


def trait_agreement(prompted: np.ndarray, p_high: np.ndarray, thresholds: Sequence[float] | None = None,
                    traits: Sequence[str] = TRAITS) -> dict:
    """The trait classifier as an independent judge of a method: per trait, over units with a non-zero prompted
    score, the share whose classifier side (P(high) above the trait's threshold, 0.5 by default) matches the
    prompted sign, and Pearson r between the prompted score and P(high) (NaN when either is constant)."""
    prompted, p_high = np.asarray(prompted, dtype=float), np.asarray(p_high, dtype=float)
    if prompted.shape != p_high.shape or prompted.ndim != 2 or prompted.shape[1] != len(traits):
        raise ValueError(f"prompted {prompted.shape} and p_high {p_high.shape} must both be [units x {len(traits)}]")
    cut = np.full(len(traits), 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
    if cut.shape != (len(traits),):
        raise ValueError(f"one threshold per trait ({len(traits)}), got {cut.shape}")
    out = {}
    for k, t in enumerate(traits):
        x, y = prompted[:, k], p_high[:, k]
        decided = x != 0
        acc = float(((y[decided] > cut[k]) == (x[decided] > 0)).mean()) if decided.any() else float("nan")
        r = float(np.corrcoef(x, y)[0, 1]) if len(x) > 1 and x.std() > 0 and y.std() > 0 else float("nan")
        out[t] = {"sign_accuracy": acc, "r": r, "n": int(decided.sum())}
    out["mean_sign_accuracy"] = float(np.nanmean([out[t]["sign_accuracy"] for t in traits]))
    return out
