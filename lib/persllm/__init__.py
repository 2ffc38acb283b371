"""PersLLM (arXiv 2407.12393): character material in temporal stages, chain-of-thought annotation, dedup and split.

The paper's data path, as this package builds it (the training and evaluation parts are in `lib.persllm.pairs`,
`lib.persllm.tokens` and `lib.persllm.evaluate`):

1. Material (`01_scrape`). Each character's film dialogue, split into temporal stages by film (early: films 1-4,
   late: 5-8). Long conversations (a film chapter) are cut into five-turn segments; a segment with a line of the
   character is one *source* of that character and stage (objective material: what happened, who said what). The
   character's own lines of a stage are its *speeches* (subjective material: how it talks). The paper also has a
   wiki biography per character; no biography is mirrored offline, so on cpu the dialogue segments are the only
   objective material, and a JSONL of biography paragraphs (`scrape.persllm.knowledge_path`) adds sources.
2. Inputs (`05_label`). From each source the annotation teacher writes one input of each type: an ordinary
   *question*, a *thought* (an opinion that agrees or conflicts with the source) and an *error* question with a
   planted factual or commonsense mistake (the paper's anti-induction inputs).
3. Answers. The teacher answers each input in character, in the paper's form `[Analysis] ... [Response] ...`,
   after "Now it's {time}." and with retrieved sources and speeches of that stage in the prompt (the paper: ~1,500
   words of experience and knowledge, ~500 of conversation, retrieved with gtr-t5-base; `fill_words`), warned
   that an error input misleads, and shown chain-of-thought examples. Only answers with a `[Response]` are kept. Every input is answered in its own stage and, where the character has material there, in
   the other stage too: these are the stage pairs of the automatic DPO.
4. Dedup and split. Inputs are deduplicated greedily by cosine >= 0.95 of their sentence embeddings, per character
   and pooled across stages (an input goes with all its answers), then split 4/5 train, 1/5 test by input, so both
   stage answers of an input land in the same split.
"""
from __future__ import annotations

import logging
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from lib.films import load_hp_lines
from lib.records import split_of
from lib.teacher import InvalidReply

log = logging.getLogger(__name__)

INPUT_TYPES = ("question", "thought", "error")
STANCES = ("agrees", "conflicts")  # a thought passage agrees or conflicts with its source
RESPONSE_TAG, ANALYSIS_TAG = "[Response]", "[Analysis]"

# The paper's distinction BLEU (its Table on personality distinction, averaged over the six characters):
# SFT -> SFT + automatic DPO. Intra: two samples of one character and stage; stage: the two stages of a character;
# inter: a character against each of the other five.
PAPER_DISTINCTION = {"intra": {"sft": 3.53, "dpo": 3.86}, "stage": {"sft": 3.46, "dpo": 3.50},
                     "inter": {"sft": 0.38, "dpo": 0.33}}


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


# --------------------------------------------------------------------------------------------- inputs (05, step 1)

def input_records(sources: Sequence[Mapping]) -> list[dict]:
    """One record per source and input type; a thought's stance alternates with the source's order."""
    recs = []
    for i, src in enumerate(sources):
        for kind in INPUT_TYPES:
            rec = {"id": f"{src['id']}-{kind}", "source": src["id"], "character": src["character"],
                   "name": src["name"], "stage": src["stage"], "type": kind}
            if kind == "thought":
                rec["stance"] = STANCES[i % 2]
            recs.append(rec)
    return recs


def input_messages(rec: Mapping, source_text: str, template: str) -> list[dict]:
    """The teacher's chat for one input: the template filled with the source and the character."""
    fields = {"name": rec["name"], "source": source_text, "stance": rec.get("stance", "")}
    return [{"role": "user", "content": template.format(**fields)}]


_META = re.compile(r"^(here is|here's|here are|sure\b|certainly\b|okay\b|ok\b)", re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:\d+[.)]\s*|[-*]\s*|(?:question|thought|opinion|input|error question|q)\s*[:：]\s*)+",
                    re.IGNORECASE)


def parse_input(kind: str, reply: str, min_words: int = 4, max_words: int = 60) -> str:
    """The input in a teacher's reply: its first non-empty line without list marks, labels or quotes. Raises
    InvalidReply (empty, meta_text for a line about the task, too_short, too_long, not_a_question for question and
    error types)."""
    lines = [ln.strip() for ln in str(reply or "").splitlines() if ln.strip()]
    if not lines:
        raise InvalidReply("empty")
    text = _LABEL.sub("", lines[0]).strip().strip('"\u201c\u201d\'').strip()
    if _META.match(text) or text.endswith(":"):
        raise InvalidReply("meta_text", text)  # "Here is a question:", the model talking about the task
    n = len(text.split())
    if n < min_words:
        raise InvalidReply("too_short", text)
    if n > max_words:
        raise InvalidReply("too_long", text)
    if kind in ("question", "error") and "?" not in text:
        raise InvalidReply("not_a_question", text)
    return text


# --------------------------------------------------------------------------------------------- answers (05, step 2)

def parse_answer(reply: str) -> dict:
    """The paper's answer form `[Analysis] ... [Response] ...` -> {"analysis", "response", "text"}.

    Only a reply with a `[Response]` tag and something after it is kept (InvalidReply no_response_tag /
    empty_response; response_repeats_analysis when the response is the analysis again); a missing `[Analysis]` keeps the text before `[Response]` as the analysis (the paper keeps every
    answer that has a `[Response]`). `text` is the answer as it is trained on, in the canonical form.
    """
    reply = str(reply or "")
    at = reply.find(RESPONSE_TAG)
    if at < 0:
        raise InvalidReply("no_response_tag", reply[:200])
    response = reply[at + len(RESPONSE_TAG):].strip().lstrip(":").strip()
    if RESPONSE_TAG in response:  # a second [Response]: keep the first one's text
        response = response[:response.find(RESPONSE_TAG)].strip()
    if not response:
        raise InvalidReply("empty_response", reply[:200])
    analysis = reply[:at]
    if ANALYSIS_TAG in analysis:
        analysis = analysis[analysis.find(ANALYSIS_TAG) + len(ANALYSIS_TAG):]
    analysis = " ".join(analysis.strip().lstrip(":").split())
    response = " ".join(response.split())
    if analysis and analysis.lower() == response.lower():
        raise InvalidReply("response_repeats_analysis", reply[:200])
    return {"analysis": analysis, "response": response, "text": format_answer(analysis, response)}


def format_answer(analysis: str, response: str) -> str:
    """The canonical answer text: `[Analysis] a [Response] r`."""
    return f"{ANALYSIS_TAG} {analysis} {RESPONSE_TAG} {response}".replace("  ", " ")


def answer_records(inputs: Sequence[Mapping], available: Mapping[str, set], other_stage: bool) -> list[dict]:
    """One answer record per input and stage: the input's own stage, and the other stages where its character has
    material (`available`: character -> stages) when `other_stage`. Record id = input id + "@" + stage."""
    recs = []
    for inp in inputs:
        stages = [inp["stage"]]
        if other_stage:
            stages += sorted(available.get(inp["character"], set()) - {inp["stage"]})
        for st in stages:
            recs.append({"id": f"{inp['id']}@{st}", "input_id": inp["id"], "character": inp["character"],
                         "name": inp["name"], "stage": st, "type": inp["type"], "input": inp["text"]})
    return recs


def retrieve(query_vecs: np.ndarray, pool_vecs: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the k pool rows most similar (cosine) to each query, best first (n_queries x min(k, pool));
    k None ranks the whole pool."""
    if (k is not None and k <= 0) or len(pool_vecs) == 0:
        return np.zeros((len(query_vecs), 0), dtype=int)
    sims = unit_rows(query_vecs) @ unit_rows(pool_vecs).T
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def word_count(text: str) -> int:
    """Words of a text, as the paper's retrieval budgets count them (whitespace-separated)."""
    return len(str(text).split())


def cut_words(text: str, n: int) -> str:
    """The first n words of a text, its line breaks kept (a dialogue segment stays one turn per line)."""
    out, left = [], n
    for line in str(text).splitlines():
        words = line.split()
        if left <= 0:
            break
        if words:
            out.append(" ".join(words[:left]))
            left -= min(len(words), left)
    return "\n".join(out)


def fill_words(ranked: Sequence[str], max_words: int | None, max_items: int | None = None) -> list[str]:
    """Retrieved texts, best first, within a budget: at most `max_items` texts and `max_words` words in all (None:
    no limit). Whole texts are taken while they fit; the first that does not is cut at the budget and the fill
    stops, so the material comes to the budget (the paper's ~1,500 words of experience and knowledge, ~500 of
    conversation) without dropping a better text for a shorter, worse one."""
    if (max_words is not None and max_words < 0) or (max_items is not None and max_items < 0):
        raise ValueError(f"fill_words: negative budget (max_words={max_words}, max_items={max_items})")
    out, used = [], 0
    for text in ranked[:max_items] if max_items is not None else ranked:
        n = word_count(text)
        if max_words is not None and used + n > max_words:
            if max_words - used > 0:
                out.append(cut_words(text, max_words - used))
            break
        out.append(text)
        used += n
    return out


def answer_material(recs: Sequence[Mapping], sources: Sequence[Mapping], speeches: Sequence[Mapping], embed,
                    retrieve_k: int | None, style_k: int | None, style_pool: int | None = None, seed: int = 0,
                    knowledge_words: int | None = None, style_words: int | None = None) -> dict[str, dict]:
    """Per answer record, the material its prompt holds: sources and own lines of its character and stage, most
    similar to the input first (cosine under `embed`: list[str] -> array), within each part's budget: at most
    `retrieve_k` sources and `knowledge_words` words of them, at most `style_k` own lines and `style_words` words
    of them (`fill_words`; None: no limit of that kind, but each part needs one). Own lines are searched in a seeded
    sample of `style_pool` per character and stage. {record id: {"knowledge": [...], "style": [...]}}."""
    for part, k, words in (("knowledge", retrieve_k, knowledge_words), ("style", style_k, style_words)):
        if k is None and words is None:
            count = "retrieve_k" if part == "knowledge" else "style_k"
            raise ValueError(f"{part} material has no budget: {count} and {part}_words are both null; set one")
    cells: dict[tuple, dict] = {}
    for src in sources:
        cells.setdefault((src["character"], src["stage"]), {"sources": [], "speeches": []})["sources"].append(src["text"])
    for sp in speeches:
        cell = cells.get((sp["character"], sp["stage"]))
        if cell is not None:
            cell["speeches"].append(sp["text"])
    for (key, stage), cell in cells.items():
        if style_pool is not None and len(cell["speeches"]) > style_pool:
            cell["speeches"] = random.Random(f"{seed}-{key}-{stage}").sample(cell["speeches"], style_pool)
    missing = sorted({f"{r['character']}/{r['stage']}" for r in recs} - {f"{k}/{s}" for k, s in cells})
    if missing:
        raise ValueError(f"answer records for character/stage cells without material: {missing}")
    out: dict[str, dict] = {}
    query_vecs = embed([r["input"] for r in recs]) if recs else np.zeros((0, 1))
    budgets = {"sources": (retrieve_k, knowledge_words), "speeches": (style_k, style_words)}
    for (key, stage), cell in cells.items():
        idx = [i for i, r in enumerate(recs) if (r["character"], r["stage"]) == (key, stage)]
        if not idx:
            continue
        q = query_vecs[idx]
        got = {}
        for part, (k, words) in budgets.items():
            texts = cell[part]
            # With a word budget every text is ranked (the budget decides how many), else the k best only.
            rank_k = None if words is not None else k
            ranked = retrieve(q, embed(texts), rank_k) if texts and k != 0 and words != 0 else \
                np.zeros((len(idx), 0), dtype=int)
            got[part] = [fill_words([texts[j] for j in row], words, k) for row in ranked]
        for row, i in enumerate(idx):
            out[recs[i]["id"]] = {"knowledge": got["sources"][row], "style": got["speeches"][row]}
    return out


def answer_messages(rec: Mapping, time: str, knowledge: Sequence[str], style: Sequence[str], template: str,
                    guided: str | None = None, analysis: str | None = None, examples: str = "",
                    error_note: str = "") -> list[dict]:
    """The teacher's chat for one answer. System: the template with the character, "Now it's {time}.", the retrieved
    knowledge and style lines; then, for an anti-induction (error) input, `error_note` (the paper warns the answerer
    that the input misleads); then `examples`, the chain-of-thought few-shot answers (each "{name}" in either is the
    character). User: the input. `guided` (cpu, a model too small for the whole form): "analysis" asks for the
    analysis alone, "response" for the reply alone (after the analysis, when one is given: the cpu teacher is not
    shown it, because it copies it)."""
    system = template.format(name=rec["name"], time=time,
                             knowledge="\n".join("- " + " / ".join(k.splitlines()) for k in knowledge) or "-",
                             style="\n".join(f'- "{s}"' for s in style) or "-")
    extras = [error_note if rec.get("type") == "error" else "", examples]
    for extra in (e.strip() for e in extras):
        if extra:
            system = system.rstrip() + "\n\n" + extra.replace("{name}", rec["name"])
    user = rec["input"]
    if guided == "analysis":
        user += f"\n\nFirst think as {rec['name']}: in one or two sentences, what do you know and feel about this?"
    elif guided == "response":
        if analysis:
            user += f"\n\nYour thoughts: {analysis}"
        user += f"\n\nNow answer as {rec['name']} would say it, in one or two sentences."
    elif guided is not None:
        raise ValueError(f"guided must be None, 'analysis' or 'response', got {guided!r}")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def parse_guided(reply: str, max_words: int = 80) -> str:
    """One guided step's text (cpu): non-empty, cut at max_words. InvalidReply("empty") otherwise."""
    words = " ".join(str(reply or "").replace(RESPONSE_TAG, " ").replace(ANALYSIS_TAG, " ").split()).split()
    if not words:
        raise InvalidReply("empty")
    return " ".join(words[:max_words])


# --------------------------------------------------------------------------------------------- dedup and split

def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), for cosines."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm == 0, 1.0, norm)


def dedup(ids: Sequence[str], groups: Sequence[str], vecs: np.ndarray, threshold: float = 0.95) -> tuple[list[str], dict]:
    """Greedy dedup by cosine: within each group (a character, pooled across stages), in the given order, an item
    whose cosine with an already kept one is >= threshold is dropped. Returns (kept ids in input order,
    {dropped id: the kept id it duplicates}). The kept ids are what later stages read (by id, not by position)."""
    if len(ids) != len(groups) or len(ids) != len(vecs):
        raise ValueError(f"dedup: {len(ids)} ids, {len(groups)} groups, {len(vecs)} vectors")
    if len(set(ids)) != len(ids):
        raise ValueError("dedup: repeated ids")
    unit = unit_rows(vecs) if len(ids) else np.zeros((0, 0))
    kept_idx: dict[str, list[int]] = {}
    kept, dropped = [], {}
    for i, (rid, grp) in enumerate(zip(ids, groups)):
        prior = kept_idx.setdefault(grp, [])
        if prior:
            sims = unit[prior] @ unit[i]
            j = int(np.argmax(sims))
            if sims[j] >= threshold:
                dropped[rid] = ids[prior[j]]
                continue
        prior.append(i)
        kept.append(rid)
    return kept, dropped


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
