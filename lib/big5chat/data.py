"""BIG5-CHAT's data for the DExperts path (07): SODA scenarios and the agent turns to regenerate, the expert texts'
split by level and their held-out check set, and the paper's published generations as 07's `released` source.

The paper's own released replies that 08/09 train on by default are read by lib/big5chat/released.py.
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from pathlib import Path

import pandas as pd

from lib.big5chat import check_trait_level
from lib.records import split_of
from lib.traits import LEVELS, NAMES, TRAITS

SODA_COLUMNS = ("narrative", "dialogue", "speakers", "PersonX", "PersonY", "original_index")


_STRING = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _string_list(raw, what: str) -> list[str]:
    """A list, or the repr SODA's mirror stores: Python or numpy style ("['a' 'b']", items without commas)."""
    if isinstance(raw, list | tuple) or hasattr(raw, "tolist"):  # parquet gives numpy arrays
        return [str(s) for s in (raw.tolist() if hasattr(raw, "tolist") else raw)]
    text = str(raw).strip()
    if not (text.startswith("[") and text.endswith("]")):
        raise ValueError(f"{what} is not a list of strings: {text[:80]!r}")
    return [ast.literal_eval(m.group()) for m in _STRING.finditer(text)]


def soda_row(row: dict, where: str) -> dict:
    """One SODA row as {scenario_id, narrative, literal, PersonX, PersonY, turns: [{speaker, text}]}."""
    missing = [c for c in SODA_COLUMNS if c not in row]
    if missing:
        raise ValueError(f"{where}: missing SODA fields {missing}")
    texts, speakers = _string_list(row["dialogue"], "dialogue"), _string_list(row["speakers"], "speakers")
    if len(texts) != len(speakers) or not texts:
        raise ValueError(f"{where}: {len(texts)} dialogue turns but {len(speakers)} speakers")
    return {"scenario_id": f"soda-{row['original_index']}", "narrative": str(row["narrative"]).strip(),
            "literal": str(row.get("literal", "")).strip(), "PersonX": row["PersonX"], "PersonY": row["PersonY"],
            "turns": [{"speaker": s.strip(), "text": t.strip()} for s, t in zip(speakers, texts)]}


def load_soda(path: str | Path, limit: int | None = None, seed: int = 0) -> list[dict]:
    """SODA scenarios from the mirror's JSONL (soda_20.jsonl) or a parquet split of allenai/soda (the paper profile).

    With `limit` below the number of rows, a seeded random sample of `limit` scenarios, kept in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SODA file not found: {path}")
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        missing = [c for c in SODA_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing SODA columns {missing} (has {list(frame.columns)})")
        if limit is not None and limit < len(frame):  # sample before building rows: the train split has 1.19M
            frame = frame.iloc[sorted(random.Random(seed).sample(range(len(frame)), limit))]
        columns = [c for c in (*SODA_COLUMNS, "literal") if c in frame.columns]
        rows = [(f"{path}: row {i}", row) for i, row in zip(frame.index, frame[columns].to_dict("records"))]
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
    if not rows:
        raise ValueError(f"{path}: no SODA scenarios")
    if limit is not None and limit < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in keep]
    return [soda_row(row, where) for where, row in rows]


def reply_units(scenarios: list[dict], max_units_per_scenario: int | None = None) -> list[dict]:
    """Generation units: every turn t >= 1 spoken by PersonX (the agent), with the history before it."""
    units = []
    for sc in scenarios:
        agent, partner = sc["PersonX"], sc["PersonY"]
        found = 0
        for t, turn in enumerate(sc["turns"]):
            if t == 0 or turn["speaker"] != agent:
                continue
            if max_units_per_scenario is not None and found >= max_units_per_scenario:
                break
            units.append({"unit_id": f"{sc['scenario_id']}/t{t}", "scenario_id": sc["scenario_id"], "agent": agent,
                          "partner": partner, "narrative": sc["narrative"], "history": sc["turns"][:t]})
            found += 1
    return units


def split_by_trait_level(df: pd.DataFrame, trait: str, level: str) -> pd.DataFrame:
    """Rows of a labelled frame (0/1 columns O..N, as lib.corpora.load_essays returns) at that trait's level."""
    check_trait_level(trait, level)
    if trait not in df.columns:
        raise ValueError(f"frame has no label column {trait!r} (columns: {list(df.columns)})")
    return df[df[trait] == (1 if level == "high" else 0)]


def heldout_texts(texts: pd.DataFrame, n: int, seed: int = 0) -> pd.Series:
    """A boolean mask over the expert texts (columns trait, level, text): `n` texts of every trait x level, drawn
    with a seeded shuffle, are held out of expert training for the check that each expert learnt its level."""
    if n < 0:
        raise ValueError(f"the held-out count must be >= 0, got {n}")
    mask = pd.Series(False, index=texts.index)
    for (trait, level), group in texts.groupby(["trait", "level"], sort=True):
        if n and len(group) <= n:
            raise ValueError(f"{NAMES[trait]} - {level}: {len(group)} texts, cannot hold out {n} and still train; "
                             f"raise scrape.big5chat.texts_per_expert or lower dexperts.expert.heldout_texts")
        mask[group.sample(n=n, random_state=seed).index] = True
    return mask


RELEASED_COLUMNS = ("trait", "level", "train_input", "train_output")


RELEASED_ID = "wenkai-li/big5_chat"  # BIG5-CHAT's published generations: one CSV, 100,000 rows


def load_released(path: str | Path, traits: list[str] | None = None) -> list[dict]:
    """The paper's released dialogues (big5_chat_dataset.csv) as 07_dexperts generation records.

    Each row (trait, level, train_input, train_output) becomes one reply: the dialogue prompt as the user message,
    the released reply as the reply. Rows with the same train_input share a unit, so 09_dpo pairs the levels of a
    trait on one prompt as it does for DExperts output. `trait` may be a letter or a name in any case.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released BIG5-CHAT file not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in RELEASED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
    letters = {**{t.lower(): t for t in TRAITS}, **{NAMES[t].lower(): t for t in TRAITS}}
    out = []
    for i, row in enumerate(frame[list(RELEASED_COLUMNS)].to_dict("records")):
        trait, level = letters.get(row["trait"].strip().lower()), row["level"].strip().lower()
        if trait is None or level not in LEVELS:
            raise ValueError(f"{path}: row {i}: trait {row['trait']!r} / level {row['level']!r} is not a Big-Five "
                             f"trait and one of {LEVELS}")
        if traits is not None and trait not in traits:
            continue
        prompt = row["train_input"].strip()
        if not prompt:
            raise ValueError(f"{path}: row {i}: empty train_input")
        unit = "released-" + hashlib.sha1(prompt.encode()).hexdigest()[:12]
        out.append({"unit_id": unit, "scenario_id": unit, "trait": trait, "level": level, "alpha": None,
                    "messages": [{"role": "user", "content": prompt}], "reply": row["train_output"].strip(),
                    "source": "released"})
    if not out:
        raise ValueError(f"{path}: no released rows for traits {traits}")
    return out


def split_units(unit_ids: list[str], test_fraction: float, seed: int = 0) -> dict[str, str]:
    """unit id -> 'train' | 'test', by hash (every reply of a unit lands on the same side)."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    return {u: split_of(u, test_fraction, seed) for u in dict.fromkeys(unit_ids)}
