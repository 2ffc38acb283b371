"""DPG's source data: the character windows of the Harry Potter film scripts and the FriendsPersona scenes, the
selection of windows per character and the held-out characters, and the rendering of a window's turns as text.

`01_scrape@dpg` builds the samples here: every film-script line (`load_hp_lines`, lib.films) is grouped into one
sample per character and chapter, with the other speakers' surrounding turns as context (`hp_windows`);
FriendsPersona scenes, which carry human Big-Five labels, give one sample per scene (`friends_windows`).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import pandas as pd

from lib.films import HP_COLUMNS, load_hp_lines  # noqa: F401 (load_hp_lines: dpg's loader)
from lib.traits import TRAITS

_UNKNOWN = {"", "unknown", "nan", "none", "n/a"}
_GENDERS = {"male", "female"}  # the mirror lists Nearly Headless Nick's gender as "Human": such values are dropped


# ---------------------------------------------------------------------------------------------------------------
# Harry Potter film scripts (read by lib.films)


def slug(name: str) -> str:
    """A name as an id part: lowercase ASCII letters and digits joined by '-' ("Harry Potter" -> harry-potter)."""
    out = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    if not out:
        raise ValueError(f"character name {name!r} has no letters or digits to make an id from")
    return out


def known_value(value) -> str | None:
    """The value as a string, or None for the mirror's unknowns (NaN, empty, "unknown")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = " ".join(str(value).split())
    return None if text.lower() in _UNKNOWN else text


def character_info(name: str, house=None, species=None, gender=None) -> dict:
    """{"name", and those of house, species, gender that are known}; a gender other than male/female is dropped."""
    info = {"name": name}
    for field, value in (("house", house), ("species", species), ("gender", gender)):
        value = known_value(value)
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


# ---------------------------------------------------------------------------------------------------------------
# Selection and the held-out characters


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
# Rendering


def render_turns(turns: Sequence[Mapping]) -> str:
    """Dialogue turns as "Speaker: text" lines."""
    return "\n".join(f"{t['speaker']}: {t['text']}" for t in turns)
