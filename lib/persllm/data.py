"""PersLLM's source material by temporal stage (01_scrape), and the train/test split of the labelled inputs into the
items the later stages read (05_label, after `label.dedup`).

Material (`01_scrape`). Each character's film dialogue, split into temporal stages by film (early: films 1-4,
late: 5-8). Long conversations (a film chapter) are cut into five-turn segments; a segment with a line of the
character is one *source* of that character and stage (objective material: what happened, who said what). The
character's own lines of a stage are its *speeches* (subjective material: how it talks). The paper also has a
wiki biography per character; no biography is mirrored offline, so on cpu the dialogue segments are the only
objective material, and a JSONL of biography paragraphs (`scrape.persllm.knowledge_path`) adds sources.

Split (`05_label`). The deduplicated inputs are split 4/5 train, 1/5 test by input, so both stage answers of an
input land in the same split; each kept input with its answers by stage and its split is one item (items.jsonl).
"""
from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import pandas as pd

from lib.films import load_hp_lines
from lib.records import split_of

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- stages and material

def check_stages(stages: Sequence[Mapping]) -> list[dict]:
    """Validate `scrape.persllm.stages`: each a name, a special token `<...>`, its films and the time sentence."""
    if not stages:
        raise ValueError("scrape.persllm.stages is empty: PersLLM needs at least one temporal stage")
    out, seen_films = [], {}
    for i, st in enumerate(stages):
        missing = [k for k in ("name", "token", "films", "time") if k not in st]
        if missing:
            raise ValueError(f"scrape.persllm.stages[{i}] lacks {missing}")
        if not re.fullmatch(r"<[A-Z][A-Z0-9-]*>", str(st["token"])):
            raise ValueError(f"stage {st['name']!r}: token {st['token']!r} is not of the form <TIME-I>")
        for film in map(int, st["films"]):
            if film in seen_films:
                raise ValueError(f"film {film} is in stages {seen_films[film]!r} and {st['name']!r}")
            seen_films[film] = st["name"]
        out.append({"name": str(st["name"]), "token": str(st["token"]), "films": [int(f) for f in st["films"]],
                    "time": str(st["time"]), "init": str(st.get("init", st["name"]))})
    for key in ("name", "token"):
        values = [s[key] for s in out]
        if len(set(values)) != len(values):
            raise ValueError(f"scrape.persllm.stages: repeated {key} in {values}")
    return out


def character_lines(lines: pd.DataFrame, characters: Mapping[str, str], stages: Sequence[Mapping]) -> pd.DataFrame:
    """The film lines (lib.films.load_hp_lines) with `key` (the character's key, "" for anyone else) and `stage` (""
    for a film in no stage). A named character with no line at all is an error: a typo in the params."""
    by_name = {name: key for key, name in characters.items()}
    missing = sorted(set(by_name) - set(lines["character"]))
    if missing:
        raise ValueError(f"scrape.persllm.characters: {missing} speak no line in the film tables")
    film_stage = {f: st["name"] for st in stages for f in st["films"]}
    out = lines.copy()
    out["key"] = out["character"].map(by_name).fillna("")
    out["stage"] = out["movie"].map(film_stage).fillna("")
    return out


def segments(lines: pd.DataFrame, turns: int = 5) -> list[dict]:
    """Each chapter's dialogue (all speakers, in order) cut into consecutive segments of `turns` lines; a shorter
    last piece is kept when it has at least two lines. Every segment knows its film, chapter and stage."""
    if turns < 2:
        raise ValueError(f"segment_turns must be >= 2, got {turns}")
    out = []
    for (movie, chapter), df in lines.groupby(["movie", "chapter_id"], sort=False):
        rows = df.to_dict("records")
        for k, lo in enumerate(range(0, len(rows), turns)):
            piece = rows[lo:lo + turns]
            if len(piece) < 2:
                continue
            out.append({"movie": int(movie), "chapter_id": int(chapter), "stage": piece[0]["stage"], "part": k,
                        "turns": [{"speaker": r["character"], "key": r["key"], "text": r["text"]} for r in piece]})
    return out


def render_segment(turns: Sequence[Mapping]) -> str:
    """A segment as a script: one "Speaker: line" per turn."""
    return "\n".join(f"{t['speaker']}: {t['text']}" for t in turns)


def character_sources(segs: Sequence[Mapping], characters: Mapping[str, str], stages: Sequence[Mapping],
                      max_per_stage: int | None, min_own_turns: int = 1, seed: int = 0) -> tuple[list[dict], dict]:
    """The sources of every character and stage: segments where the character has >= min_own_turns lines, a seeded
    sample of `max_per_stage` each. Returns (sources, report); a character with no source in a stage is a counted,
    logged drop of that cell (Petunia is thin), not an error, unless it has no source in any stage."""
    sources, report = [], {"cells": {}, "empty_cells": []}
    for key, name in characters.items():
        total = 0
        for st in stages:
            cell = [s for s in segs if s["stage"] == st["name"]
                    and sum(t["key"] == key for t in s["turns"]) >= min_own_turns]
            if max_per_stage is not None and len(cell) > max_per_stage:
                cell = random.Random(f"{seed}-{key}-{st['name']}").sample(cell, max_per_stage)
                cell.sort(key=lambda s: (s["movie"], s["chapter_id"], s["part"]))
            report["cells"][f"{key}/{st['name']}"] = len(cell)
            if not cell:
                log.warning("character %s has no segment in stage %s: that stage is dropped for it", key, st["name"])
                report["empty_cells"].append(f"{key}/{st['name']}")
            for s in cell:
                sources.append({"id": f"{key}-{st['name']}-m{s['movie']}c{s['chapter_id']}p{s['part']}",
                                "character": key, "name": name, "stage": st["name"], "kind": "dialogue",
                                "movie": s["movie"], "text": render_segment(s["turns"]), "turns": s["turns"]})
            total += len(cell)
        if total == 0:
            raise ValueError(f"character {key} ({name}) has no segment with {min_own_turns}+ own lines in any stage")
    return sources, report


def knowledge_sources(rows: Sequence[Mapping], characters: Mapping[str, str], stages: Sequence[Mapping]) -> list[dict]:
    """Biography paragraphs (the paper's wiki material) as sources: rows {character, stage, text}, checked."""
    names = {s["name"] for s in stages}
    out, counts = [], Counter()
    for i, row in enumerate(rows):
        key, stage, text = row.get("character"), row.get("stage"), str(row.get("text") or "").strip()
        if key not in characters:
            raise ValueError(f"knowledge row {i}: character {key!r} is not one of {sorted(characters)}")
        if stage not in names:
            raise ValueError(f"knowledge row {i}: stage {stage!r} is not one of {sorted(names)}")
        if not text:
            raise ValueError(f"knowledge row {i}: empty text")
        counts[(key, stage)] += 1
        out.append({"id": f"{key}-{stage}-k{counts[(key, stage)]}", "character": key, "name": characters[key],
                    "stage": stage, "kind": "knowledge", "movie": None, "text": text, "turns": []})
    return out


def speeches(lines: pd.DataFrame) -> list[dict]:
    """The characters' own lines with their stage: the style material."""
    own = lines[(lines["key"] != "") & (lines["stage"] != "")]
    return [{"character": r["key"], "stage": r["stage"], "movie": int(r["movie"]), "text": r["text"]}
            for r in own.to_dict("records")]


def load_material(hp_dir, characters: Mapping[str, str], stages: Sequence[Mapping]) -> pd.DataFrame:
    """The film tables read and labelled for PersLLM (see character_lines)."""
    return character_lines(load_hp_lines(hp_dir), characters, stages)


# --------------------------------------------------------------------------------------------- split and items

def split_inputs(input_ids: Sequence[str], test_fraction: float, seed: int) -> dict[str, str]:
    """A seeded train/test split by input id (lib.records.split_of), so an input's answers stay together."""
    return {i: split_of(i, test_fraction, seed) for i in input_ids}


def build_items(inputs: Sequence[Mapping], answers: Sequence[Mapping], kept: Sequence[str],
                split: Mapping[str, str]) -> list[dict]:
    """Items for training and evaluation: each kept input with its answers by stage and its split. An input whose
    own-stage answer was rejected is dropped (it has no reference); its other-stage answer goes with it."""
    by_input: dict[str, dict] = {}
    for a in answers:
        by_input.setdefault(a["input_id"], {})[a["stage"]] = {k: a[k] for k in ("analysis", "response", "text")}
    items = []
    keep = set(kept)
    for inp in inputs:
        got = by_input.get(inp["id"], {})
        if inp["id"] not in keep or inp["stage"] not in got:
            continue
        items.append({"id": inp["id"], "character": inp["character"], "name": inp["name"], "stage": inp["stage"],
                      "type": inp["type"], "stance": inp.get("stance"), "source": inp["source"], "input": inp["text"],
                      "answers": got, "split": split[inp["id"]]})
    return items


def item_summary(items: Sequence[Mapping]) -> pd.DataFrame:
    """Items per character x stage x split (answers in both stages counted apart)."""
    rows = [{"character": it["character"], "stage": it["stage"], "split": it["split"], "type": it["type"],
             "both_stages": len(it["answers"]) > 1} for it in items]
    if not rows:
        return pd.DataFrame(columns=["character", "stage", "split", "items", "both_stages"])
    df = pd.DataFrame(rows)
    return (df.groupby(["character", "stage", "split"]).agg(items=("type", "size"), both_stages=("both_stages", "sum"))
            .reset_index())
