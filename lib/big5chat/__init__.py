"""BIG5-CHAT (arXiv 2410.16491) data logic: SODA scenarios, trait-expert data, prompts, SFT rows and DPO pairs.

The pipeline: SODA scenarios -> one agent's replies regenerated with DExperts at each trait x level
(`07_dexperts_big5chat`, lib/big5chat/dexperts.py) -> SFT and DPO of the student (`08_sft_big5chat`,
`09_dpo_big5chat`) -> questionnaires (`11_generate_big5chat`, `12_eval_big5chat`, lib/psychometrics.py). Everything
here is plain data handling, tested without a model.
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from lib.prompts import check_template
from lib.records import split_of
from lib.traits import LEVELS, NAMES, OPPOSITE, TRAITS

# BIG5-CHAT Table 2 (BFI, LLaMA-3-8B-Instruct): target-trait score when induced (high, low). The paper reports the
# untrained model at about 3.0 on every trait.
PUBLISHED_BFI_8B = {
    "dpo": {"O": (5.0, 1.6), "C": (5.0, 1.6), "E": (4.8, 2.5), "A": (4.8, 1.0), "N": (3.5, 1.1)},
}

# Descriptions for the "demo" prompting baseline, from the standard Big-Five adjective markers.
TRAIT_DESCRIPTIONS = {
    "O": {"high": "curious, imaginative, open to new ideas, art and unusual experiences",
          "low": "conventional, practical, prefers the familiar and concrete over the abstract or new"},
    "C": {"high": "organised, dependable, careful, plans ahead and follows through",
          "low": "spontaneous, careless about order and plans, easily distracted from duties"},
    "E": {"high": "outgoing, talkative, energetic, enjoys company and excitement",
          "low": "reserved, quiet, prefers solitude and calm, speaks little"},
    "A": {"high": "warm, kind, cooperative, trusting and considerate of others",
          "low": "blunt, critical, competitive, sceptical of others' intentions"},
    "N": {"high": "anxious, easily worried or upset, moody, sensitive to stress",
          "low": "calm, emotionally stable, relaxed, rarely upset"},
}

# The base model's dialogue prompt lives in params/prompts/big5chat_dialogue.txt (the paper's begins "Imagine you are
# {agent} ..." and asks for at most 50 words); these are the placeholders it may use.
TEMPLATE_FIELDS = {"agent", "partner", "narrative", "history"}

SODA_COLUMNS = ("narrative", "dialogue", "speakers", "PersonX", "PersonY", "original_index")


def _check(trait: str, level: str) -> None:
    """Raise a ValueError naming an unknown trait letter or level."""
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; expected one of {list(TRAITS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")


def expert_instruction(trait: str, level: str) -> str:
    """The expert's own prompt (the paper's wording)."""
    _check(trait, level)
    return f"Help me complete the sentence with certain Big Five Personality: {NAMES[trait]} - {level}"


def persona_instruction(trait: str, level: str) -> str:
    """The SFT/DPO instruction, also the instruction-prompt baseline (the paper's wording)."""
    _check(trait, level)
    return f"You are a helpful assistant with the following Big Five personality traits: {NAMES[trait]} - {level}"


# ---------------------------------------------------------------------------------------------------------------
# SODA


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


def dialogue_messages(unit: dict, template: str) -> list[dict]:
    """The base model's chat: the filled dialogue prompt (params/prompts/big5chat_dialogue.txt) as the user message."""
    check_template(template, TEMPLATE_FIELDS, what="dialogue")
    history = "\n".join(f"{t['speaker']}: {t['text']}" for t in unit["history"])
    content = template.format(agent=unit["agent"], partner=unit["partner"], narrative=unit["narrative"],
                              history=history)
    return [{"role": "user", "content": content.strip()}]


def expert_messages(trait: str, level: str) -> list[dict]:
    """The expert's chat: its instruction alone, as the user turn — what it was trained on (`expert_rows`).

    As in the paper's reference code the expert never reads the dialogue: it continues, from its instruction, the
    reply generated so far (every generated token is fed to the expert rows too; see lib.big5chat.dexperts).
    """
    return [{"role": "user", "content": expert_instruction(trait, level)}]


# ---------------------------------------------------------------------------------------------------------------
# Expert training data


def split_by_trait_level(df: pd.DataFrame, trait: str, level: str) -> pd.DataFrame:
    """Rows of a labelled frame (0/1 columns O..N, as lib.corpora.load_essays returns) at that trait's level."""
    _check(trait, level)
    if trait not in df.columns:
        raise ValueError(f"frame has no label column {trait!r} (columns: {list(df.columns)})")
    return df[df[trait] == (1 if level == "high" else 0)]


def expert_rows(texts: list[str], trait: str, level: str, max_words: int | None = None) -> list[dict]:
    """Prompt-completion rows for one expert: its instruction, then a human text written at that level."""
    prompt = expert_messages(trait, level)  # the decoding prompt, so the expert is steered from what it learnt
    rows = []
    for text in texts:
        words = str(text).split()
        if max_words is not None:
            words = words[:max_words]
        if words:
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": " ".join(words)}]})
    if not rows:
        raise ValueError(f"no non-empty texts for the {NAMES[trait]} - {level} expert")
    return rows


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


# ---------------------------------------------------------------------------------------------------------------
# Student training data


def _user_content(generation: dict) -> str:
    """The dialogue prompt of a generated reply: the last user message of its base chat."""
    users = [m["content"] for m in generation["messages"] if m["role"] == "user"]
    if not users:
        raise ValueError(f"generation {generation.get('unit_id')!r} has no user message")
    return users[-1]


def sft_rows(generations: list[dict]) -> tuple[list[dict], int]:
    """(rows, skipped): the persona instruction + dialogue prompt -> the reply steered to that trait and level."""
    rows, skipped = [], 0
    for g in generations:
        reply = (g.get("reply") or "").strip()
        if not reply:
            skipped += 1
            continue
        prompt = [{"role": "system", "content": persona_instruction(g["trait"], g["level"])},
                  {"role": "user", "content": _user_content(g)}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": reply}]})
    return rows, skipped


def dpo_pairs(generations: list[dict]) -> tuple[list[dict], dict]:
    """(pairs, stats): per unit and trait, the target level's reply is chosen and the opposite level's rejected.

    Both levels serve as the target, so a complete group gives two pairs: mirrored twins (the same two replies), which
    a policy blind to the level in the instruction gets exactly half right. Each pair carries its unit_id, trait and
    target (the trainers keep only prompt, chosen and rejected), so that held-out results can be grouped. Replies are
    grouped by unit id (one scenario and turn), so a pair never mixes scenarios or turns; a unit id seen with two
    scenario ids is an error.
    """
    groups: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    scenario_of: dict[str, str] = {}
    for g in generations:
        _check(g["trait"], g["level"])
        seen = scenario_of.setdefault(g["unit_id"], g["scenario_id"])
        if seen != g["scenario_id"]:
            raise ValueError(f"unit {g['unit_id']!r} appears under scenarios {seen!r} and {g['scenario_id']!r}")
        slot = groups[(g["unit_id"], g["trait"])]
        if g["level"] in slot:
            raise ValueError(f"unit {g['unit_id']!r}, trait {g['trait']}: two replies at level {g['level']!r}")
        slot[g["level"]] = g
    pairs, stats = [], Counter()
    for (unit_id, trait), slot in groups.items():
        if set(slot) != set(LEVELS):
            stats["missing_level"] += 1
            continue
        replies = {lvl: (slot[lvl].get("reply") or "").strip() for lvl in LEVELS}
        if not all(replies.values()):
            stats["empty_reply"] += 1
            continue
        if replies["high"] == replies["low"]:
            stats["identical"] += 1
            continue
        for target in LEVELS:
            prompt = [{"role": "system", "content": persona_instruction(trait, target)},
                      {"role": "user", "content": _user_content(slot[target])}]
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": replies[target]}],
                          "rejected": [{"role": "assistant", "content": replies[OPPOSITE[target]]}],
                          "unit_id": unit_id, "trait": trait, "target": target})
        stats["groups_used"] += 1
    return pairs, dict(stats)


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


# ---------------------------------------------------------------------------------------------------------------
# Prompting baselines


def demo_messages(trait: str, level: str, descriptions: dict, examples: list[str]) -> list[dict]:
    """The "demo" baseline: the instruction, a description of the level, and texts by people at that level."""
    _check(trait, level)
    lines = [persona_instruction(trait, level) + ".",
             f"People with {level} {NAMES[trait].lower()} are {descriptions[trait][level]}."]
    if examples:
        lines.append("Here is how such people write:")
        lines += [f"- {ex.strip()}" for ex in examples if ex.strip()]
    return [{"role": "system", "content": "\n".join(lines)}]
