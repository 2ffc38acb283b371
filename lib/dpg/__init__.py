"""DPG (arXiv 2404.07084, "Dynamic Generation of Personalities with Large Language Models") data logic.

The paper released no code; this package is the reference implementation. The pipeline, stage by stage:

- `01_scrape@dpg` — character windows: every film-script line of the Harry Potter films (`load_hp_lines`) is grouped
  into one sample per character and chapter, with the other speakers' surrounding turns as context (`hp_windows`);
  FriendsPersona scenes, which carry human Big-Five labels, give one sample per scene (`friends_windows`).
- `05_label@dpg` — personality assessment: a teacher LLM "psychologist" with embedded knowledge of each trait and its
  six facets scores each sample on O, C, E, A, N in [-5, 5] (lib/dpg/assess.py), then samples far from their
  character's centre are dropped (`lib.dpg.assess.drop_outliers`).
- `08_sft@dpg` — the LoRA-SFT baseline: one LoRA trained on the character's replies, with the personality prompt
  (Big-Five scores + character information, `personality_prompt`) as the system turn (`reply_rows`).
- `10_hypernet@dpg` — DPG itself: a hypernetwork maps the personality prompt to LoRA weights for the student's
  attention layers (lib/dpg/hypernet.py), trained on the same `reply_rows`.
- `11_generate@dpg` — dialogue from the student under prompted personality vectors (prompting, LoRA-SFT, DPG).
- `12_eval@dpg` — the generated dialogue is assessed again and compared with the prompted vector: the Personality
  Shaping Deviation Coefficient (`lib.dpg.assess.psdc`, lower is better), plus fluency, coherency, consistency.

Everything here is plain data handling, tested without a model. Paths are arguments; nothing points at /work.
"""
from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from pathlib import Path

import pandas as pd

from lib.films import HP_COLUMNS, INFO_FIELDS, load_hp_lines  # noqa: F401 (load_hp_lines: dpg's loader)
from lib.traits import NAMES, TRAITS

log = logging.getLogger(__name__)

_UNKNOWN = {"", "unknown", "nan", "none", "n/a"}
_GENDERS = {"male", "female"}  # the mirror lists Nearly Headless Nick's gender as "Human": such values are dropped

PERSONA_FIELDS = {"name", "info", "scores", *TRAITS}
SCORE_RANGE = (-5, 5)


# ---------------------------------------------------------------------------------------------------------------
# Harry Potter film scripts (read by lib.films)


def slug(name: str) -> str:
    """A name as an id part: lowercase ASCII letters and digits joined by '-' ("Harry Potter" -> harry-potter)."""
    out = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not out:
        raise ValueError(f"character name {name!r} has no letters or digits to make an id from")
    return out


def _known(value) -> str | None:
    """The value as a string, or None for the mirror's unknowns (NaN, empty, "unknown")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = " ".join(str(value).split())
    return None if text.lower() in _UNKNOWN else text


def character_info(name: str, house=None, species=None, gender=None) -> dict:
    """{"name", and those of house, species, gender that are known}; a gender other than male/female is dropped."""
    info = {"name": name}
    for field, value in (("house", house), ("species", species), ("gender", gender)):
        value = _known(value)
        if value is None or (field == "gender" and value.lower() not in _GENDERS):
            continue
        info[field] = value
    return info


def _check_window_args(min_lines: int, context_turns: int | None) -> None:
    if not isinstance(min_lines, int) or min_lines < 1:
        raise ValueError(f"min_lines must be an integer >= 1, got {min_lines!r}")
    if context_turns is not None and (not isinstance(context_turns, int) or context_turns < 0):
        raise ValueError(f"context_turns must be an integer >= 0 or None (the whole chapter), got {context_turns!r}")


def hp_windows(lines: pd.DataFrame, characters: list[str] | None = None, min_lines: int = 3,
               context_turns: int | None = 2) -> tuple[list[dict], dict]:
    """(samples, stats): one sample per character and chapter (the window), from `load_hp_lines` output.

    A sample's `turns` are the chapter's lines, in order, that are the character's own or within `context_turns`
    lines (before or after) of one of them: the other speakers' surrounding turns as context (None: the whole
    chapter). Stretches of the chapter far from the character are left out without a marker. `lines` holds the
    character's own lines. Windows with fewer than `min_lines` own lines are dropped and counted. `characters`
    restricts the windows to those names (an unknown name is an error); None takes every speaker.

    Sample keys: sample_id ("hp:<chapter id>:<character slug>", stable across runs), source "hp", character, info
    (character_info), window (the chapter id), movie, turns [{speaker, text}], lines [str], labels None.
    """
    _check_window_args(min_lines, context_turns)
    missing = [c for c in HP_COLUMNS if c not in lines.columns]
    if missing:
        raise ValueError(f"lines lack columns {missing} (use load_hp_lines)")
    if characters is not None:
        unknown = sorted(set(characters) - set(lines["character"]))
        if unknown:
            raise ValueError(f"characters {unknown} never speak in the scripts")
        wanted = set(characters)
    else:
        wanted = set(lines["character"])
    ordered = lines.sort_values(["movie", "position"], kind="stable")
    samples, stats = [], Counter()
    per_character: Counter = Counter()
    for chapter_id, chapter in ordered.groupby("chapter_id", sort=False):
        speakers = chapter["character"].tolist()
        texts = chapter["text"].tolist()
        first = chapter.iloc[0]
        for name in dict.fromkeys(speakers):  # in order of first line
            if name not in wanted:
                continue
            own = [i for i, s in enumerate(speakers) if s == name]
            if len(own) < min_lines:
                stats["dropped_min_lines"] += 1
                continue
            if context_turns is None:
                keep = range(len(speakers))
            else:
                keep = sorted({j for i in own for j in range(max(0, i - context_turns),
                                                              min(len(speakers), i + context_turns + 1))})
            row = chapter.iloc[own[0]]
            samples.append({
                "sample_id": f"hp:{chapter_id}:{slug(name)}", "source": "hp", "character": name,
                "info": character_info(name, row["house"], row["species"], row["gender"]),
                "window": int(chapter_id), "movie": int(first["movie"]),
                "turns": [{"speaker": speakers[j], "text": texts[j]} for j in keep],
                "lines": [texts[i] for i in own], "labels": None,
            })
            per_character[name] += 1
            stats["own_lines"] += len(own)
    ids = Counter(s["sample_id"] for s in samples)
    clash = [i for i, n in ids.items() if n > 1]
    if clash:  # two names with one slug in one chapter ("Mr. X" and "Mr X")
        raise ValueError(f"sample ids {clash[:5]} repeat: two character names share a slug")
    stats["windows"] = len(samples)
    stats["characters"] = len(per_character)
    return samples, {**{k: int(v) for k, v in stats.items()}, "per_character": dict(per_character)}


# ---------------------------------------------------------------------------------------------------------------
# FriendsPersona


def friends_windows(df: pd.DataFrame, min_lines: int = 1) -> tuple[list[dict], dict]:
    """(samples, stats): one sample per FriendsPersona scene (lib.corpora.load_friends_persona) for its focus
    character, with the scene's human 0/1 labels. Scenes where the focus character has fewer than `min_lines` lines
    are dropped and counted. Sample keys as `hp_windows` (sample_id "friends:<scene_id>:<character slug>:<part>": a
    scene can have several focus characters and parts, each with its own labels; source "friends", window
    the scene id, info {"name"}), labels {O..N: 0/1}."""
    _check_window_args(min_lines, None)
    missing = [c for c in ("scene_id", "character", "turns", *TRAITS) if c not in df.columns]
    if missing:
        raise ValueError(f"FriendsPersona frame lacks columns {missing} (use lib.corpora.load_friends_persona)")
    samples, dropped = [], 0
    part = Counter()  # the corpus splits some scenes into parts per focus character, each labelled on its own
    for r in df.to_dict("records"):
        part[(r["scene_id"], r["character"])] += 1
        name, turns = r["character"], list(r["turns"])
        own = [t["text"] for t in turns if t["speaker"] == name]
        if len(own) < min_lines:
            dropped += 1
            continue
        labels = {}
        for t in TRAITS:
            if r[t] not in (0, 1):
                raise ValueError(f"scene {r['scene_id']}: label {t} is {r[t]!r}, expected 0 or 1")
            labels[t] = int(r[t])
        sid = f"friends:{r['scene_id']}:{slug(name)}:{part[(r['scene_id'], name)]}"
        samples.append({"sample_id": sid, "source": "friends", "character": name,
                        "info": {"name": name}, "window": r["scene_id"],
                        "turns": [{"speaker": t["speaker"], "text": t["text"]} for t in turns], "lines": own,
                        "labels": labels})
    return samples, {"windows": len(samples), "dropped_min_lines": dropped,
                     "characters": len({s["character"] for s in samples})}


def select_windows(samples: Sequence[dict], max_characters: int | None, max_per_character: int | None,
                   seed: int = 0) -> list[dict]:
    """The `max_characters` characters with the most windows (ties by name), each with at most `max_per_character`
    windows drawn by a seeded shuffle and kept in script order. None: no limit."""
    counts = Counter(s["character"] for s in samples)
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    keep = set(ranked if max_characters is None else ranked[:max_characters])
    out = []
    for name in sorted(keep):
        own = [s for s in samples if s["character"] == name]
        if max_per_character is not None and len(own) > max_per_character:
            picked = pd.Series(range(len(own))).sample(n=max_per_character, random_state=seed).sort_values()
            own = [own[i] for i in picked]
        out += own
    return out


def heldout_characters(samples: Sequence[dict], n: int, seed: int = 0, min_windows: int = 1) -> list[str]:
    """`n` characters drawn by a seeded shuffle whose windows are never trained on (generation uses their vectors as
    prompts the students have not seen), among the characters with at least `min_windows` windows, so the held-out
    evaluation rests on enough units. At least one character must stay for training."""
    counts = Counter(s["character"] for s in samples)
    names = sorted(counts)
    if n < 0 or n >= len(names):
        raise ValueError(f"cannot hold out {n} of {len(names)} characters: at least one must stay for training")
    eligible = [c for c in names if counts[c] >= min_windows]
    if len(eligible) < n:
        raise ValueError(f"cannot hold out {n} characters with at least {min_windows} windows: only {len(eligible)} "
                         f"have that many ({', '.join(eligible) or 'none'}); lower heldout_min_windows or select "
                         f"more windows per character")
    return sorted(pd.Series(eligible).sample(n=n, random_state=seed)) if n else []


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


def _template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def personality_prompt(vector: Mapping, info: Mapping, template: str) -> str:
    """The personality prompt that conditions the student: Big-Five scores plus character information.

    Template fields: {name}, {info} (a sentence of the known house/species/gender), {scores} (one "Openness: +3"
    line per trait) and {O} ... {N} (each score alone).
    """
    scores = check_vector(vector)
    unknown = _template_fields(template) - PERSONA_FIELDS
    if unknown:
        raise ValueError(f"personality template has unknown placeholders {sorted(unknown)}; "
                         f"allowed: {sorted(PERSONA_FIELDS)}")
    name = str(info.get("name") or "").strip()
    if not name:
        raise ValueError(f"character info has no name: {dict(info)!r}")
    known = [f"{f.capitalize()}: {info[f]}" for f in INFO_FIELDS if _known(info.get(f)) is not None]
    info_text = ("Character information: " + "; ".join(known) + ".") if known else ""
    lines = "\n".join(f"{NAMES[t]}: {_score_text(scores[t])}" for t in TRAITS)
    text = template.format(name=name, info=info_text, scores=lines, **{t: _score_text(scores[t]) for t in TRAITS})
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def render_turns(turns: Sequence[Mapping]) -> str:
    """Dialogue turns as "Speaker: text" lines."""
    return "\n".join(f"{t['speaker']}: {t['text']}" for t in turns)


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


def load_template(path: str | Path) -> str:
    """A prompt template file's text (params/prompts/dpg_*.txt)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt template not found: {path}")
    return path.read_text(encoding="utf-8")
