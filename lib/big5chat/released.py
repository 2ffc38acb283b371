"""BIG5-CHAT's own released replies: loading, the seeded split, SFT rows, DPO pairs, held-out scenarios, a judge.

Three files (the offline mirror's `big5chat/`, or the paper's Hub dataset on the paper profile):

- the replies: `human_eval_big5_chat.csv` (`trait, level, big5_chat`: 1,000 reply texts per trait x level, no
  prompts) or the Hub's `big5_chat_dataset.csv` (`trait, level, train_input, train_output`);
- `big5_chat_sampled.csv`: 200 of those replies with their full prompt (SODA scenario, the level's description,
  turn 0). They are the held-out **scenarios**: never trained on, answered by every method in `11_generate`;
- `llama3_70b.jsonl`: for the same 200 prompts, the 70B plain-prompting baseline's reply (a reference row).

The split is by a seeded hash within each trait x level (`lib.records.split_of` of `pair_key`: the reply, or the
trait and scenario where a prompt was released, so a scenario's high and low replies land on one side), and adding
replies never moves one from train to held-out. Training sees no scenario: the mirror keeps only the reply text, so the user
turn of a reply without a prompt is the fixed `NEUTRAL_USER_TURN`, and the trait and level reach the model through
the paper's instruction in the system prompt.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from lib.big5chat import persona_instruction
from lib.records import split_of
from lib.traits import LEVELS, NAMES, OPPOSITE, TRAITS

# The user turn of a reply whose prompt was not released (the mirror's 9,800): it names the task and the paper's
# length bound, nothing about a trait.
NEUTRAL_USER_TURN = "Write your next turn in this conversation, within 50 words."

REPLY_COLUMNS = {"mirror": ("trait", "level", "big5_chat"), "hub": ("trait", "level", "train_input", "train_output")}
PROMPTED_COLUMNS = ("trait", "level", "speakerX", "prompt", "response")
BASELINE_FIELDS = ("trait", "level", "prompt", "response_expert", "response_llama3_70b")
SPLITS = ("train", "test", "scenario")

# "<Name>'s big five personality description: The person has high openness.\n<text>" up to the context's closing
# fence: the part of the paper's prompt that states the level.
_DESCRIPTION = re.compile(r"\n[^\n]*'s big five personality description:.*?(?=\n```)", re.DOTALL)
_LETTERS = {**{t.lower(): t for t in TRAITS}, **{NAMES[t].lower(): t for t in TRAITS}}


def trait_letter(raw: str, where: str) -> str:
    """A trait given as a letter or a name, in any case, as its letter; a ValueError naming `where` otherwise."""
    letter = _LETTERS.get(str(raw).strip().lower())
    if letter is None:
        raise ValueError(f"{where}: unknown trait {raw!r}; expected a Big-Five letter or name")
    return letter


def _level(raw: str, where: str) -> str:
    level = str(raw).strip().lower()
    if level not in LEVELS:
        raise ValueError(f"{where}: unknown level {raw!r}; expected one of {LEVELS}")
    return level


def _read_csv(path: str | Path, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
    return frame


def reply_id(trait: str, level: str, reply: str) -> str:
    return hashlib.sha1(f"{trait}|{level}|{reply}".encode()).hexdigest()[:16]


def load_replies(path: str | Path) -> tuple[list[dict], dict]:
    """(records, drops): the released replies as {reply_id, trait, level, reply, prompt}. `prompt` is None for the
    mirror's reply-only file and the Hub file's train_input otherwise. Empty replies are dropped and counted."""
    path = Path(path)
    head = _read_csv(path, ("trait", "level"), "released BIG5-CHAT replies").columns
    kind = "mirror" if "big5_chat" in head else "hub"
    frame = _read_csv(path, REPLY_COLUMNS[kind], "released BIG5-CHAT replies")
    records, drops = [], Counter()
    text_col = "big5_chat" if kind == "mirror" else "train_output"
    for i, row in enumerate(frame.to_dict("records")):
        where = f"{path}: row {i}"
        trait, level = trait_letter(row["trait"], where), _level(row["level"], where)
        reply = row[text_col].strip()
        if not reply:
            drops["empty_reply"] += 1
            continue
        prompt = row["train_input"].strip() or None if kind == "hub" else None
        records.append({"reply_id": reply_id(trait, level, reply), "trait": trait, "level": level, "reply": reply,
                        "prompt": prompt})
    if not records:
        raise ValueError(f"{path}: no non-empty replies")
    return records, dict(drops)


def load_prompted(path: str | Path) -> list[dict]:
    """The released replies that come with their prompt: {scenario_id, trait, level, prompt, reply, turn0}."""
    path = Path(path)
    frame = _read_csv(path, PROMPTED_COLUMNS, "prompted BIG5-CHAT replies")
    out = []
    for i, row in enumerate(frame.to_dict("records")):
        where = f"{path}: row {i}"
        trait, level = trait_letter(row["trait"], where), _level(row["level"], where)
        prompt, reply = row["prompt"].strip(), row["response"].strip()
        if not prompt or not reply:
            raise ValueError(f"{where}: empty prompt or response")
        out.append({"scenario_id": "b5s-" + hashlib.sha1(prompt.encode()).hexdigest()[:10], "trait": trait,
                    "level": level, "prompt": prompt, "reply": reply, "turn0": row["speakerX"].strip()})
    if not out:
        raise ValueError(f"{path}: no prompted replies")
    return out


def load_baseline(path: str | Path) -> list[dict]:
    """The 70B prompting baseline: {scenario_id, trait, level, reply_70b, reply_dexperts} per prompt."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"70B prompting baseline not found: {path}")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from exc
        missing = [f for f in BASELINE_FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing fields {missing}")
        prompt = row["prompt"].strip()
        out.append({"scenario_id": "b5s-" + hashlib.sha1(prompt.encode()).hexdigest()[:10],
                    "trait": trait_letter(row["trait"], f"{path}:{n}"), "level": _level(row["level"], f"{path}:{n}"),
                    "reply_70b": row["response_llama3_70b"].strip(), "reply_dexperts": row["response_expert"].strip()})
    if not out:
        raise ValueError(f"{path}: no baseline replies")
    return out


def assign_splits(records: list[dict], prompted: list[dict], test_fraction: float, seed: int,
                  min_per_cell: int, source: str = "the released file") -> tuple[list[dict], dict]:
    """(records with `split`, counts): 'scenario' for a reply that is one of the prompted ones (kept out of training
    and out of the DPO check: the scenarios are answered afresh in 11_generate), else 'train' or 'test' by a seeded
    hash of the reply id. A trait x level with fewer than `min_per_cell` train or test replies is an error."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    held = {(p["trait"], p["level"], p["reply"]) for p in prompted}
    out, counts = [], Counter()
    for r in records:
        side = "scenario" if (r["trait"], r["level"], r["reply"]) in held else split_of(pair_key(r), test_fraction,
                                                                                        seed)
        out.append({**r, "split": side})
        counts[(r["trait"], r["level"], side)] += 1
    found = {(p["trait"], p["level"], p["reply"]) for p in prompted} & {(r["trait"], r["level"], r["reply"])
                                                                        for r in records}
    for trait in TRAITS:
        for level in LEVELS:
            for side in ("train", "test"):
                if counts[(trait, level, side)] < min_per_cell:
                    raise ValueError(f"{NAMES[trait]} - {level}: {counts[(trait, level, side)]} {side} replies, fewer "
                                     f"than min_per_cell {min_per_cell}; {source} has too few rows for the "
                                     f"split (lower min_per_cell or raise test_fraction)")
    table = {f"{t}_{lvl}": {s: counts[(t, lvl, s)] for s in SPLITS} for t in TRAITS for lvl in LEVELS}
    return out, {"by_cell": table, "prompted_found": len(found), "prompted": len(prompted)}


def pair_key(record: dict) -> str:
    """What keeps a trait's high and low reply to one scenario together: the trait and the prompt without its level
    description where a prompt exists (the Hub data), else the reply itself (the mirror's replies have no scenario)."""
    if record.get("prompt"):
        return f"{record['trait']}|{neutral_prompt(record['prompt'])}"
    return record["reply_id"]


def _rank(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()


def sample_per_cell(records: list[dict], split: str, n: int | None, seed: int) -> list[dict]:
    """The records of one split, at most `n` per trait x level, kept in file order. The sample is seeded and ranks
    records by their `pair_key`, so both levels of a trait keep the same scenarios where a prompt was released and
    DPO can still pair them."""
    chosen = [r for r in records if r["split"] == split]
    if n is None:
        return chosen
    by_cell = defaultdict(list)
    for i, r in enumerate(chosen):
        by_cell[(r["trait"], r["level"])].append(i)
    keep = set()
    for _, idx in sorted(by_cell.items()):
        ranked = sorted(idx, key=lambda i: (_rank(seed, pair_key(chosen[i])), _rank(seed, chosen[i]["reply_id"])))
        keep |= set(ranked[:n])
    return [r for i, r in enumerate(chosen) if i in keep]


def neutral_prompt(prompt: str) -> str:
    """The paper's dialogue prompt without the part that states the level: the scenario, participants and turn 0."""
    return _DESCRIPTION.sub("", prompt)


def user_turn(record: dict) -> str:
    """What the student reads as the user: the released prompt with its level description removed, or the fixed
    neutral turn when the prompt was not released."""
    return neutral_prompt(record["prompt"]) if record.get("prompt") else NEUTRAL_USER_TURN


def sft_rows(records: list[dict]) -> list[dict]:
    """The paper's instruction form: the trait and level in the system prompt, the user turn, the reply."""
    return [{"prompt": [{"role": "system", "content": persona_instruction(r["trait"], r["level"])},
                        {"role": "user", "content": user_turn(r)}],
             "completion": [{"role": "assistant", "content": r["reply"]}]} for r in records]


def dpo_pairs(records: list[dict], seed: int = 0) -> tuple[list[dict], dict]:
    """(pairs, stats): for one trait and one user turn, a high and a low reply (matched in a seeded order) give two
    pairs, one per target level: the target's reply chosen over the opposite level's, under the instruction naming
    the target. The two are mirrored twins, so a policy blind to the level in the instruction scores 0.50."""
    groups: dict[tuple[str, str], dict[str, list[dict]]] = defaultdict(lambda: {lvl: [] for lvl in LEVELS})
    for r in records:
        groups[(r["trait"], user_turn(r))][r["level"]].append(r)
    pairs, stats = [], Counter()
    for (trait, turn), by_level in sorted(groups.items()):
        rng = random.Random(f"{seed}:{trait}:{turn}")
        high, low = (rng.sample(by_level[lvl], len(by_level[lvl])) for lvl in LEVELS)
        stats["unpaired"] += abs(len(high) - len(low))
        for h, lo in zip(high, low):
            if h["reply"] == lo["reply"]:
                stats["identical"] += 1
                continue
            unit = f"{h['reply_id']}+{lo['reply_id']}"
            replies = {"high": h["reply"], "low": lo["reply"]}
            for target in LEVELS:
                pairs.append({"prompt": [{"role": "system", "content": persona_instruction(trait, target)},
                                         {"role": "user", "content": turn}],
                              "chosen": [{"role": "assistant", "content": replies[target]}],
                              "rejected": [{"role": "assistant", "content": replies[OPPOSITE[target]]}],
                              "unit_id": unit, "trait": trait, "target": target})
            stats["groups_used"] += 1
    return pairs, dict(stats)


def twin_batches(pairs: list[dict], seed: int) -> list[dict]:
    """The pairs of `dpo_pairs` with each unit's two mirrored twins kept next to each other and the units in a seeded
    order. Read in this order (sequential sampling) at an even batch size, every batch holds whole units, so the part
    of the DPO gradient that ignores the instruction (prefer this reply whatever the level) cancels within the batch
    and what is left is the level named in the instruction."""
    units: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for pair in pairs:  # a unit: one trait of one unit_id (07's generated units carry several traits)
        units[(pair["unit_id"], pair["trait"])].append(pair)
    broken = [u for u, twins in units.items() if sorted(t["target"] for t in twins) != sorted(LEVELS)]
    if broken:
        raise ValueError(f"{len(broken)} units are not a pair of mirrored twins (one per target level), e.g. "
                         f"{broken[0]!r}: twin batches need dpo_pairs' output")
    return [pair for unit in sorted(units, key=lambda u: _rank(seed, "|".join(u))) for pair in units[unit]]


def twin_batch_args(args: dict) -> dict:
    """trl DPOConfig arguments that read the pairs in `twin_batches` order: sequential sampling, and an even batch
    size so that no unit is split between two batches."""
    if args.get("per_device_train_batch_size", 8) % 2:
        raise ValueError(f"twin batches need an even per_device_train_batch_size, got "
                         f"{args['per_device_train_batch_size']}: a unit's two twins would fall in different batches")
    return {**args, "train_sampling_strategy": "sequential"}


def scenarios(prompted: list[dict], per_cell: int | None, seed: int) -> list[dict]:
    """The held-out scenarios 11_generate answers: at most `per_cell` prompted replies per trait x level (a seeded
    sample), each with its neutral prompt. Every method answers each at both levels of its trait."""
    records = [{**p, "split": "scenario", "reply_id": p["scenario_id"]} for p in prompted]
    chosen = sample_per_cell(records, "scenario", per_cell, seed)
    return [{"scenario_id": p["scenario_id"], "trait": p["trait"], "prompt_level": p["level"],
             "user": neutral_prompt(p["prompt"]), "reply_dexperts_70b": p["reply"]} for p in chosen]


# ---------------------------------------------------------------------------------------------------------------
# A reply-level judge


class LevelJudge:
    """Per trait, a logistic regression on TF-IDF word 1-2-grams telling high replies from low ones, trained on the
    released replies' training split. `p_high(texts, trait)` reads a reply as that trait's level."""

    def __init__(self, max_features: int = 20000, c: float = 4.0):
        self.max_features, self.c = max_features, c
        self.models: dict = {}

    def fit(self, records: list[dict]) -> LevelJudge:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        for trait in TRAITS:
            rows = [r for r in records if r["trait"] == trait]
            labels = [int(r["level"] == "high") for r in rows]
            if len(set(labels)) < 2:
                raise ValueError(f"the judge needs high and low replies of {NAMES[trait]}; got {Counter(labels)}")
            model = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True,
                                                  max_features=self.max_features),
                                  LogisticRegression(C=self.c, max_iter=2000))
            self.models[trait] = model.fit([r["reply"] for r in rows], labels)
        return self

    def p_high(self, texts: list[str], trait: str) -> np.ndarray:
        if trait not in self.models:
            raise ValueError(f"the judge has no model for trait {trait!r}; fit it first")
        if not len(texts):
            return np.zeros(0)
        return self.models[trait].predict_proba([str(t) for t in texts])[:, 1]

    def accuracy(self, records: list[dict]) -> pd.DataFrame:
        """Per trait: held-out replies, accuracy at 0.5 with its bootstrap interval over replies."""
        from lib import stats

        rows = []
        for trait in TRAITS:
            part = [r for r in records if r["trait"] == trait]
            if not part:
                continue
            hit = (self.p_high([r["reply"] for r in part], trait) >= 0.5) == np.array([r["level"] == "high"
                                                                                       for r in part])
            rows.append({"trait": trait, **stats.mean_ci(hit.astype(float), seed=0)})
        return pd.DataFrame(rows).set_index("trait")


def level_gaps(scored: pd.DataFrame, value: str = "p_high") -> pd.DataFrame:
    """Per method x trait: the judge's `value` when induced high minus when induced low, paired by scenario (each
    scenario is answered at both levels), with a bootstrap interval over scenarios. Columns of `scored`: method,
    scenario_id, trait, level, and `value`."""
    from lib import stats

    wide = scored.pivot_table(index=["method", "trait", "scenario_id"], columns="level", values=value, aggfunc="mean")
    missing = [lvl for lvl in LEVELS if lvl not in wide.columns]
    if missing:
        raise ValueError(f"no replies at level {missing}: the gap needs both levels of each scenario")
    wide["gap"] = wide["high"] - wide["low"]
    rows = []
    for (method, trait), part in wide.groupby(level=["method", "trait"]):
        rows.append({"method": method, "trait": trait, **stats.mean_ci(part["gap"].to_numpy(), seed=0)})
    return pd.DataFrame(rows).set_index(["method", "trait"])


def gap_difference(scored: pd.DataFrame, trained: str, prompted: str, value: str = "p_high") -> pd.DataFrame:
    """Per trait: (trained's high - low gap) - (prompted's), paired by scenario, with a bootstrap interval and the
    verdict on the paper's claim that training widens the gap ("positive")."""
    from lib import stats

    wide = scored.pivot_table(index=["trait", "scenario_id"], columns=["method", "level"], values=value,
                              aggfunc="mean")
    rows = []
    for trait, part in wide.groupby(level="trait"):
        diff = ((part[(trained, "high")] - part[(trained, "low")])
                - (part[(prompted, "high")] - part[(prompted, "low")])).to_numpy()
        ci = stats.mean_ci(diff, seed=0)
        rows.append({"trait": trait, "trained": trained, "prompted": prompted, **ci,
                     "verdict": stats.verdict(ci["lo"], ci["hi"], "positive")})
    return pd.DataFrame(rows).set_index("trait")
