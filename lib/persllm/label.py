"""PersLLM's annotation (05_label): what the teacher writes and how its replies are read. Inputs of three types, the
answer prompts with their retrieved material within word budgets, the chain-of-thought answers and their parsing,
and the dedup of inputs.

1. Inputs. From each source (`data`) the annotation teacher writes one input of each type: an ordinary
   *question*, a *thought* (an opinion that agrees or conflicts with the source) and an *error* question with a
   planted factual or commonsense mistake (the paper's anti-induction inputs).
2. Answers. The teacher answers each input in character, in the paper's form `[Analysis] ... [Response] ...`,
   after "Now it's {time}." and with retrieved sources and speeches of that stage in the prompt (the paper: ~1,500
   words of experience and knowledge, ~500 of conversation, retrieved with gtr-t5-base; `fill_words`), warned
   that an error input misleads, and shown chain-of-thought examples. Only answers with a `[Response]` are kept.
   Every input is answered in its own stage and, where the character has material there, in the other stage too:
   these are the stage pairs of the automatic DPO.
3. Dedup. Inputs are deduplicated greedily by cosine >= 0.95 of their sentence embeddings, per character and
   pooled across stages (an input goes with all its answers); the kept ones are split in `data`.
"""
from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

import numpy as np

from lib.teacher import InvalidReply

INPUT_TYPES = ("question", "thought", "error")
STANCES = ("agrees", "conflicts")  # a thought passage agrees or conflicts with its source
RESPONSE_TAG, ANALYSIS_TAG = "[Response]", "[Analysis]"


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

# --------------------------------------------------------------------------------------------- dedup

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
