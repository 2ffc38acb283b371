"""DPG's training rows: the personality prompt (Big-Five scores plus character information) that conditions the
student, and the SFT rows built from the character windows with it as the system turn.

`08_sft@dpg` (the LoRA-SFT baseline) and `10_hypernet@dpg` (the hypernetwork) both train on `training_rows`, so
their comparison is fair by construction; 11 and 12 prompt the students with the same `personality_prompt`.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

from lib.dpg.data import known_value, render_turns
from lib.films import INFO_FIELDS
from lib.prompts import check_template
from lib.traits import NAMES, TRAITS

PERSONA_FIELDS = {"name", "info", "scores", *TRAITS}
SCORE_RANGE = (-5, 5)


# ---------------------------------------------------------------------------------------------------------------
# Personality prompt and SFT rows


def check_vector(vector: Mapping) -> dict[str, float]:
    """The personality vector as {O..N: number}; a ValueError names a missing or extra key or a bad value (a
    TypeError says the vector is not a mapping).

    Each value must be a finite real number (not a bool) in [-5, 5], the assessment scale.
    """
    if not isinstance(vector, Mapping):
        raise TypeError(f"personality vector must be a mapping of {list(TRAITS)} to scores, got "
                         f"{type(vector).__name__}")
    missing = [t for t in TRAITS if t not in vector]
    extra = [k for k in vector if k not in TRAITS]
    if missing or extra:
        raise ValueError(f"personality vector must have exactly the keys {list(TRAITS)}: "
                         f"missing {missing}, unexpected {extra}")
    out = {}
    lo, hi = SCORE_RANGE
    for t in TRAITS:
        v = vector[t]
        if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)) or not lo <= v <= hi:
            raise ValueError(f"personality vector: {t} = {v!r} is not a finite number in [{lo}, {hi}]")
        out[t] = int(v) if isinstance(v, Integral) else float(v)
    return out


def _score_text(value: float) -> str:
    """+3, -1, 0, +2.5, +2.33: integers without decimals, others to two."""
    if float(value).is_integer():
        return f"{int(value):+d}" if value else "0"
    return f"{value:+.2f}".rstrip("0")


def personality_prompt(vector: Mapping, info: Mapping, template: str) -> str:
    """The personality prompt that conditions the student: Big-Five scores plus character information.

    Template fields: {name}, {info} (a sentence of the known house/species/gender), {scores} (one "Openness: +3"
    line per trait) and {O} ... {N} (each score alone).
    """
    scores = check_vector(vector)
    check_template(template, PERSONA_FIELDS, what="personality")
    name = str(info.get("name") or "").strip()
    if not name:
        raise ValueError(f"character info has no name: {dict(info)!r}")
    known = [f"{f.capitalize()}: {info[f]}" for f in INFO_FIELDS if known_value(info.get(f)) is not None]
    info_text = ("Character information: " + "; ".join(known) + ".") if known else ""
    lines = "\n".join(f"{NAMES[t]}: {_score_text(scores[t])}" for t in TRAITS)
    text = template.format(name=name, info=info_text, scores=lines, **{t: _score_text(scores[t]) for t in TRAITS})
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def reply_rows(samples: Sequence[dict], vectors: Mapping[str, Mapping], template: str,
               context_turns: int = 1) -> tuple[list[dict], dict]:
    """(rows, stats): SFT rows in conversational prompt-completion form, one per reply of the character.

    A reply is a line of the sample's character whose immediately preceding turn is by someone else; the user
    message holds up to `context_turns` turns before it ("Speaker: text" lines, possibly including the character's
    own earlier lines), the system message the personality prompt of the sample's vector (`vectors[sample_id]`).
    Lines without such a preceding turn are skipped and counted; so are samples without a vector (e.g. dropped as
    outliers). Each row carries sample_id and turn (the line's index in the sample's turns).
    """
    if not isinstance(context_turns, int) or context_turns < 1:
        raise ValueError(f"context_turns must be an integer >= 1, got {context_turns!r}")
    rows, stats = [], Counter()
    for s in samples:
        if s["sample_id"] not in vectors:
            stats["samples_without_vector"] += 1
            continue
        system = personality_prompt(vectors[s["sample_id"]], s["info"], template)
        turns = s["turns"]
        for i, turn in enumerate(turns):
            if turn["speaker"] != s["character"]:
                continue
            if i == 0 or turns[i - 1]["speaker"] == s["character"]:
                stats["no_preceding_turn"] += 1
                continue
            context = render_turns(turns[max(0, i - context_turns):i])
            rows.append({"prompt": [{"role": "system", "content": system}, {"role": "user", "content": context}],
                         "completion": [{"role": "assistant", "content": turn["text"]}],
                         "sample_id": s["sample_id"], "turn": i})
    stats["rows"] = len(rows)
    return rows, {k: int(stats.get(k, 0)) for k in ("rows", "no_preceding_turn", "samples_without_vector")}


def training_rows(samples: Sequence[dict], vectors: Mapping[str, Mapping], template: str, sft: Mapping
                  ) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """({"train": rows, "heldout": rows}, stats per split): the reply rows of each split (`reply_rows` with the
    `sft.dpg` params' context_turns), at most `max_rows` per split in a seeded sample. The LoRA-SFT baseline (08) and
    the hypernetwork (10) both train on exactly these rows, so their comparison is fair by construction."""
    import pandas as pd

    rows, stats = {}, {}
    for split in ("train", "heldout"):
        part = [s for s in samples if s["split"] == split]
        rows[split], stats[split] = reply_rows(part, vectors, template, context_turns=sft["context_turns"])
        if sft["max_rows"] is not None and len(rows[split]) > sft["max_rows"]:
            rows[split] = pd.Series(rows[split]).sample(n=sft["max_rows"], random_state=sft["seed"]).tolist()
    return rows, stats
