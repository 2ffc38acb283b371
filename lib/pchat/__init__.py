"""PersonalityChat (arXiv 2401.07363) data logic: PersonaChat loaders, persona trait labels, trait sampling,
dialogue prompts and validation, persona leakage, and SFT rows for the P / PT / P+PT students.

The paper's pipeline: PersonaChat personas -> a teacher labels each persona per Big-Five trait ("No clues", or
"Probably low/high, given <reason>") (`05_label`) -> for each PersonaChat sample, trait levels are sampled for both
speakers and the teacher writes one whole dialogue conditioned on both personas and both speakers' traits
(single-agent generation, `06_synthesize`) -> response generators fine-tuned on PersonaChat (P), the synthesized set
(PT) and both (P+PT), with the responder's persona facts and trait labels as control text (`08_sft`). Everything here
is plain data handling, tested without a model; the metrics are in lib/pchat/evaluate.py.

    dialogues, rejects = pchat.load_personachat("../shared/data/personachat/xpersona_en_valid.json", errors="skip")
    labels, failures = pchat.parse_trait_labels(teacher_reply, facts)  # 05_label: per trait, valid or failed
    labelled = pchat.collect_labels(personas, answers)                 # 05_label: five labels per persona
    levels = pchat.sample_traits(labelled[0]["labels"], seed=0, key=pchat.persona_key(facts))   # 06_synthesize
    turns = pchat.parse_transcript(reply, names=("Sam", "Alex"), min_turns=8, max_turns=20)   # 06_synthesize
    rows, skipped = pchat.training_rows("P+PT", p_dialogues, pt_dialogues)                  # 08_sft -> lib.train.sft

One dialogue schema for every source:

    {"id", "source", "personas": {"A": [fact, ...], "B": [fact, ...]}, "turns": [{"speaker": "A"|"B", "text"}],
     "traits": {"A": {"O": "high", ...}, "B": {...}}}      # "traits" only on synthesized (or labelled) dialogues

Our reading where the paper is silent:

- XPersona (the mirror's PersonaChat) stores one side per dialogue: `persona` is the responder's. The user is "A"
  (persona []) and the responder "B"; a first user utterance "__SILENCE__" (every dialogue of the valid file) means
  the responder opened, so it is dropped and the dialogue starts with B.
- Synthetic-Persona-Chat: "User 1" is "A", "User 2" is "B"; persona facts are newline-separated. Conversations carry
  LLM debris, handled by `split_turns`: markdown around labels ("*User 1:*", "* * User 1: * *") is stripped, stage
  directions ("[Later]", "(The next day)", "* * *") and narration after a blank line are dropped, an unlabelled line
  right after an utterance continues it, and consecutive utterances by one speaker are merged (the file has such runs
  after scene breaks). A third speaker ("Adam: You too."), no conversation, or fewer than two turns is a malformed
  row.
- Trait labels: the paper's form, "No clues." or "Probably low/high, given <reason>" with a free-text reason
  ("given the statement I love spending money and that they admit to being high maintenance"). A level needs some
  reason; whether the reason cites one of the persona's facts (quoted, restated, or most of the fact's content
  words) is recorded per trait (`cited_facts`), not required. Labels are judged trait by trait: a reply with one bad
  line keeps its four good ones, and only the failed traits are asked again (`parse_trait_labels`, `label_whole`).
- Trait sampling: a labelled trait keeps its level; a "no clues" trait gets a level drawn uniformly from
  `choices` (default low/high) by a generator seeded with (seed, speaker key), so a speaker's draw does not depend on
  the order in which personas are processed.
- Persona leakage (a speaker stating the OTHER speaker's persona fact as their own): see `leaked_facts`.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import string
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lib.dialogue import dialogue_repair_prompt, strip_quotes
from lib.records import read_jsonl
from lib.teacher import InvalidReply, run_records
from lib.traits import LEVELS, NAMES, TRAITS

LABELS = ("no_clues", "low", "high")
LABELLED = LABELS[1:]  # the levels a label can name, in the label prompt's order ("Probably low/high")
SPEAKERS = ("A", "B")
SILENCE = "__SILENCE__"
SPC_COLUMNS = ("user 1 personas", "user 2 personas", "Best Generated Conversation")
SPC_LABELS = {"User 1": "A", "User 2": "B"}

# ---------------------------------------------------------------------------------------------------------------
# Turn parsing and validation

_LIST_MARKER = re.compile(r"^(?:\(?\d{1,3}[.):\]]|[-•>])\s+")
_STAGE = re.compile(r"^(?:\[.*\]|\(.*\)|[*\-=_~#.\s]+)$")
_OTHER_SPEAKER = re.compile(r"^([A-Z][\w'.-]*(?: [A-Z0-9][\w'.-]*){0,2})\s*[*_]*\s*:\s*\S")


def _label_pattern(labels: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(name) for name in sorted(labels, key=len, reverse=True))
    return re.compile(rf"^\[?({alts})\]?\s*[*_]*\s*:(.*)$", re.IGNORECASE)


def _strip_markup(text: str) -> str:
    """Drop markdown emphasis, list markers and surrounding quotes around a line or an utterance."""
    text = _LIST_MARKER.sub("", text.strip().strip("*_ \t").strip())
    return strip_quotes(text.strip("*_ \t"))


def split_turns(text: str, labels: Mapping[str, str]) -> list[dict]:
    """Labelled lines of a transcript as [{"speaker", "text"}], `labels` mapping line labels to speakers.

    "User 1: hi" with labels {"User 1": "A"} gives {"speaker": "A", "text": "hi"}. Markup around labels is
    stripped; stage directions and narration after a blank line are dropped; an unlabelled line right after an
    utterance continues it. A line in the form "Name: text" whose name is not a label raises
    InvalidReply("unknown_speaker").
    """
    pattern = _label_pattern(list(labels))
    canonical = {name.lower(): speaker for name, speaker in labels.items()}
    turns: list[dict] = []
    continuable = False
    for raw in text.splitlines():
        line = _strip_markup(raw)
        if not line:
            continuable = False
            continue
        m = pattern.match(line)
        if m:
            turns.append({"speaker": canonical[m.group(1).lower()], "text": _strip_markup(m.group(2))})
            continuable = True
        elif _STAGE.match(line):
            continuable = False
        elif (other := _OTHER_SPEAKER.match(line)) is not None:
            raise InvalidReply("unknown_speaker", f"line by {other.group(1)!r}: {line[:60]!r}")
        elif continuable and turns:
            turns[-1]["text"] = f"{turns[-1]['text']} {line}".strip()
    return turns


def merge_repeated_speakers(turns: list[dict]) -> tuple[list[dict], int]:
    """(turns, merges): consecutive utterances by the same speaker joined into one."""
    merged: list[dict] = []
    n = 0
    for turn in turns:
        if merged and merged[-1]["speaker"] == turn["speaker"]:
            merged[-1] = {**merged[-1], "text": f"{merged[-1]['text']} {turn['text']}".strip()}
            n += 1
        else:
            merged.append(dict(turn))
    return merged, n


def validate_turns(turns: list[dict], min_turns: int, max_turns: int, first: str = "A",
                   max_words: int | None = None) -> list[dict]:
    """The turns unchanged, or InvalidReply: "turn_count", "speaker_order", "empty" or "too_long"."""
    if not min_turns <= len(turns) <= max_turns:
        raise InvalidReply("turn_count", f"{len(turns)} utterances, expected {min_turns}..{max_turns}")
    order = (first, "B" if first == "A" else "A")
    for i, turn in enumerate(turns):
        if turn["speaker"] != order[i % 2]:
            raise InvalidReply("speaker_order", f"utterance {i + 1} is by {turn['speaker']}, expected {order[i % 2]}")
        if not turn["text"].strip():
            raise InvalidReply("empty", f"utterance {i + 1} is empty")
        if max_words is not None and len(turn["text"].split()) > max_words:
            raise InvalidReply("too_long", f"utterance {i + 1} has {len(turn['text'].split())} words (max {max_words})")
    return turns


def parse_transcript(reply: str, names: tuple[str, str] = ("A", "B"), min_turns: int = 8, max_turns: int = 20,
                   max_words: int | None = None) -> list[dict]:
    """A teacher-written dialogue ("A: ... / B: ...", or the display `names`) as validated turns of A and B."""
    if len(names) != 2 or names[0].lower() == names[1].lower():
        raise ValueError(f"parse_transcript needs two distinct speaker names, got {names!r}")
    turns = split_turns(reply, {names[0]: "A", names[1]: "B"})
    return validate_turns(turns, min_turns, max_turns, first="A", max_words=max_words)


# ---------------------------------------------------------------------------------------------------------------
# Loaders


def _check_errors_mode(errors: str) -> None:
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")


def _collect(items: Sequence, parse: Callable[[Any, int, str], dict], path: Path, limit: int | None,
             errors: str) -> tuple[list[dict], list[dict]]:
    """(dialogues, rejects): `parse(item, index, id)` per item, up to `limit` dialogues; a ValueError stops the load
    (errors="raise") or makes the item a reject {"id", "row", "reason"} (errors="skip")."""
    dialogues, rejects = [], []
    for i, item in enumerate(items):
        did = f"{path.stem}-{i:05d}"
        try:
            dialogues.append(parse(item, i, did))
        except ValueError as exc:
            if errors == "raise":
                raise
            rejects.append({"id": did, "row": i, "reason": str(exc)})
        if limit is not None and len(dialogues) >= limit:
            break
    return dialogues, rejects


def _facts(raw, where: str) -> list[str]:
    """Persona facts from a list or a newline-separated string; ValueError when there is none or one is blank."""
    if isinstance(raw, str):
        items = [line for line in raw.splitlines() if line.strip()]
    elif isinstance(raw, list) and all(isinstance(f, str) for f in raw):
        items = raw
    else:
        raise ValueError(f"{where}: persona is not a list of strings or a text: {str(raw)[:80]!r}")
    facts = [f.strip() for f in items]
    if not facts or not all(facts):
        raise ValueError(f"{where}: persona has no facts or a blank fact: {facts!r}")
    return facts


def _xpersona_dialogue(item, where: str, did: str) -> dict:
    if not isinstance(item, dict) or "persona" not in item or "dialogue" not in item:
        raise ValueError(f"{where}: expected an object with 'persona' and 'dialogue'")
    pairs = item["dialogue"]
    if not isinstance(pairs, list) or not pairs:
        raise ValueError(f"{where}: 'dialogue' is not a non-empty list of [user, response] pairs")
    turns = []
    for j, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(u, str) for u in pair)):
            raise ValueError(f"{where}: dialogue pair {j} is not [user, response]")
        user, response = (u.strip() for u in pair)
        if j == 0 and user == SILENCE:
            user = None  # the responder opened the conversation
        for speaker, text in (("A", user), ("B", response)):
            if text is None:
                continue
            if not text or text == SILENCE:
                raise ValueError(f"{where}: dialogue pair {j} has an empty utterance for {speaker}")
            turns.append({"speaker": speaker, "text": text})
    return {"id": did, "source": "personachat", "personas": {"A": [], "B": _facts(item["persona"], where)},
            "turns": turns}


def load_xpersona(path: str | Path, limit: int | None = None, errors: str = "raise") -> tuple[list[dict], list[dict]]:
    """(dialogues, rejects) from an XPersona English file (`personachat/xpersona_en_{valid,test}.json`).

    errors="raise" stops at the first malformed dialogue with a ValueError naming file and index; "skip" puts it in
    rejects as {"id", "row", "reason"}.
    """
    _check_errors_mode(errors)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PersonaChat (XPersona) file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, list):  # a malformed file, not a caller's type error: ValueError like the others
        raise ValueError(f"{path}: expected a list of dialogues, got {type(data).__name__}")  # noqa: TRY004
    return _collect(data, lambda item, i, did: _xpersona_dialogue(item, f"{path}: dialogue {i}", did), path, limit,
                    errors)


def _spc_dialogue(row: Mapping, where: str, did: str) -> tuple[dict, int]:
    conversation = row["Best Generated Conversation"]
    if not isinstance(conversation, str) or not conversation.strip():
        raise ValueError(f"{where}: empty 'Best Generated Conversation'")
    personas = {"A": _facts(row["user 1 personas"], where), "B": _facts(row["user 2 personas"], where)}
    try:
        turns = split_turns(conversation, SPC_LABELS)
    except InvalidReply as exc:
        raise ValueError(f"{where}: {exc}") from None
    turns, merges = merge_repeated_speakers(turns)
    turns = [t for t in turns if t["text"]]
    turns, more = merge_repeated_speakers(turns)  # dropping an empty turn can join two of one speaker
    if len(turns) < 2:
        raise ValueError(f"{where}: {len(turns)} labelled utterances ('User 1: ...' / 'User 2: ...'), need 2")
    return {"id": did, "source": "synthetic_persona_chat", "personas": personas, "turns": turns}, merges + more


def load_synthetic_persona_chat(path: str | Path, limit: int | None = None,
                                errors: str = "raise") -> tuple[list[dict], list[dict]]:
    """(dialogues, rejects) from a Synthetic-Persona-Chat CSV; rows are 0-based data rows (header excluded).

    Each dialogue gets "merged_turns", the number of same-speaker utterances joined (see the module docstring).
    """
    import pandas as pd

    _check_errors_mode(errors)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Synthetic-Persona-Chat file not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in SPC_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(df.columns)})")
    def parse(row: Mapping, i: int, did: str) -> dict:
        dialogue, merges = _spc_dialogue(row, f"{path}: row {i}", did)
        return {**dialogue, "merged_turns": merges}

    return _collect(df[list(SPC_COLUMNS)].to_dict("records"), parse, path, limit, errors)


HF_PERSONACHAT_COLUMNS = ("personality", "utterances")


def _hf_personachat_dialogue(row: Mapping, where: str, did: str) -> dict:
    """One ConvAI2 row: `utterances[-1].history` is the whole dialogue so far, its last candidate the gold reply.

    The history opens with the partner (A) and alternates with the persona's owner (B); a leading silence token
    means B opened the conversation.
    """
    utterances = list(row["utterances"])
    if not utterances:
        raise ValueError(f"{where}: no utterances")
    last = utterances[-1]
    try:
        lines = [str(u).strip() for u in last["history"]] + [str(list(last["candidates"])[-1]).strip()]
    except (KeyError, TypeError, IndexError):
        raise ValueError(f"{where}: an utterance without 'history' and 'candidates'") from None
    turns = []
    for k, text in enumerate(lines):
        if k == 0 and text.replace(" ", "") == SILENCE:
            continue
        if not text or text.replace(" ", "") == SILENCE:
            raise ValueError(f"{where}: utterance {k} is empty")
        turns.append({"speaker": "A" if k % 2 == 0 else "B", "text": text})
    facts = row["personality"]
    facts = facts.tolist() if hasattr(facts, "tolist") else facts
    return {"id": did, "source": "personachat", "personas": {"A": [], "B": _facts(facts, where)}, "turns": turns}


def load_hf_personachat(path: str | Path, limit: int | None = None,
                        errors: str = "raise") -> tuple[list[dict], list[dict]]:
    """(dialogues, rejects) from a parquet split of the Hub's PersonaChat/ConvAI2 copy (columns personality,
    utterances[{history, candidates}]), the paper profile's source; only the responder's persona, like XPersona."""
    import pandas as pd

    _check_errors_mode(errors)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PersonaChat parquet file not found: {path}")
    df = pd.read_parquet(path)
    missing = [c for c in HF_PERSONACHAT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(df.columns)})")
    sides, rejects = _collect(df[list(HF_PERSONACHAT_COLUMNS)].to_dict("records"),
                              lambda row, i, did: _hf_personachat_dialogue(row, f"{path}: row {i}", did), path, None,
                              errors)
    joined, unmatched = join_sides(sides)
    rejects += [{"id": d["id"], "row": None, "reason": "the partner's side of this conversation is not in the file"}
                for d in unmatched]
    return (joined if limit is None else joined[:limit]), rejects


def join_sides(sides: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """(dialogues with both personas, sides left unmatched): ConvAI2 stores each conversation twice, once from each
    speaker's side with only that speaker's persona; the two sides list the same utterances in the same order with
    the speakers swapped, so they are matched on their opening utterances and joined into one two-persona dialogue
    (the first side's turns, its partner's persona from the other side), as PersonalityChat's persona pairs need."""
    def key(d: dict) -> tuple:
        return tuple(t["text"] for t in d["turns"][:3])

    by_key: dict[tuple, list[int]] = defaultdict(list)
    for i, d in enumerate(sides):
        by_key[key(d)].append(i)
    used: set[int] = set()
    joined, unmatched = [], []
    for i, d in enumerate(sides):
        if i in used:
            continue
        mate = next((j for j in by_key[key(d)] if j != i and j not in used
                     and sides[j]["turns"][0]["speaker"] != d["turns"][0]["speaker"]), None)
        if mate is None:
            unmatched.append(d)
            continue
        used |= {i, mate}
        joined.append({**d, "personas": {"A": list(sides[mate]["personas"]["B"]), "B": list(d["personas"]["B"])}})
    return joined, unmatched


def load_personachat(path: str | Path, limit: int | None = None, errors: str = "raise"):
    """Any supported format by extension: .json XPersona, .csv Synthetic-Persona-Chat, .parquet ConvAI2 (Hub)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return load_xpersona(path, limit, errors)
    if suffix == ".csv":
        return load_synthetic_persona_chat(path, limit, errors)
    if suffix == ".parquet":
        return load_hf_personachat(path, limit, errors)
    raise ValueError(f"{path}: unknown PersonaChat format {suffix!r} (expected .json XPersona, .csv "
                     "Synthetic-Persona-Chat or .parquet ConvAI2)")


def persona_key(facts: Sequence[str]) -> str:
    """A stable id for a persona: the same facts (up to case, spacing and order) give the same key."""
    norm = sorted(normalize_fact(f) for f in facts)
    return "persona-" + hashlib.sha256("\n".join(norm).encode()).hexdigest()[:12]


def unique_personas(dialogues: Sequence[dict]) -> dict[str, list[str]]:
    """persona key -> facts, over every speaker with facts, in first-seen order (the units 05_label labels)."""
    out: dict[str, list[str]] = {}
    for d in dialogues:
        for speaker in SPEAKERS:
            facts = d["personas"].get(speaker) or []
            if facts:
                out.setdefault(persona_key(facts), list(facts))
    return out


# ---------------------------------------------------------------------------------------------------------------
# 05_label: persona trait labels

_TRAIT_BY_NAME = {name.lower(): t for t, name in NAMES.items()} | {"extroversion": "E"}
_TRAIT_LINE = re.compile(r"^(openness|conscientiousness|extraversion|extroversion|agreeableness|neuroticism)"
                         r"\s*[*_]*\s*[:\-–]\s*(.*)$", re.IGNORECASE)
_LEVEL = re.compile(r"^probably\s+(low|high)\b[\s,;:.(\-–]*(.*)$", re.IGNORECASE | re.DOTALL)
_CONNECTIVE = re.compile(r"^(?:given|because|since|as)\b\s*(?:that\b)?\s*:?\s*", re.IGNORECASE)
CITE_THRESHOLD = 0.75  # share of a fact's content words a reason must contain to cite it (as leakage's rule)
NO_CLUES = {"label": "no_clues", "reason": None, "evidence": [], "cites_fact": False}
# What a repair asks for, per failure reason (per-trait mode names one, whole mode one per failed trait).
_LABEL_REPAIR = {
    "missing_trait": "it has no line.",
    "duplicate_trait": "it is answered more than once, with different labels.",
    "unknown_label": "the answer must be 'No clues.', 'Probably low, given ...' or 'Probably high, given ...'.",
    "missing_reason": "a 'Probably low' or 'Probably high' answer must say what in the statements suggests it.",
    "empty": "the answer is empty.",
}


def persona_block(facts: Sequence[str]) -> str:
    """Persona facts as a bulleted list, the form every prompt here uses."""
    return "\n".join(f"- {f}" for f in facts)


def label_messages(facts: Sequence[str], template: str, system_prompt: str | None = None) -> list[dict]:
    """The teacher's chat for labelling one persona; `template` (params/prompts/pchat_label.txt) has {persona}."""
    if not facts:
        raise ValueError("label_messages: a persona needs at least one fact")
    _check_template(template, {"persona"})
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": template.format(persona=persona_block(facts)).strip()}]


def normalize_fact(text: str) -> str:
    """Light normalisation for matching a quoted fact: case, curly quotes, whitespace, trailing punctuation."""
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    text = " ".join(text.lower().split()).strip(" \"'")
    return text.rstrip(string.punctuation + " ").strip(" \"'")


def cited_facts(reason: str, facts: Sequence[str], threshold: float = CITE_THRESHOLD) -> list[str]:
    """The persona facts a free-text reason cites: quoted or restated (up to case and punctuation), or with at least
    `threshold` of the fact's content words in the reason ("given that they admit to being high maintenance" cites
    "I am high maintenance.")."""
    text = normalize_fact(reason)
    words = content_words(reason)
    out = []
    for fact in facts:
        norm, fact_words = normalize_fact(fact), content_words(fact)
        verbatim = bool(norm) and re.search(rf"(?<!\w){re.escape(norm)}(?!\w)", text) is not None
        if verbatim or (fact_words and len(fact_words & words) / len(fact_words) >= threshold):
            out.append(fact)
    return out


def _answer(text: str, facts: Sequence[str], trait: str) -> dict:
    """One answer as {"label", "reason", "evidence": [cited facts], "cites_fact"}, or InvalidReply."""
    answer = _strip_markup(text)
    if re.match(r"^no\s+clues?\b", answer, re.IGNORECASE):
        return dict(NO_CLUES)
    m = _LEVEL.match(answer)
    if not m:
        raise InvalidReply("unknown_label", f"{NAMES[trait]}: {answer[:60]!r} is not 'No clues' or "
                                            "'Probably low/high, given ...'")
    reason = _CONNECTIVE.sub("", m.group(2).strip()).strip().rstrip(")").strip()
    if not re.search(r"\w", reason):
        raise InvalidReply("missing_reason", f"{NAMES[trait]}: a low/high label needs a reason ('given ...')")
    evidence = cited_facts(reason, facts)
    return {"label": m.group(1).lower(), "reason": reason, "evidence": evidence, "cites_fact": bool(evidence)}


def parse_trait_labels(reply: str, facts: Sequence[str],
                       traits: Sequence[str] = TRAITS) -> tuple[dict[str, dict], dict[str, dict]]:
    """(labels, failures) of a reply answering several traits ("<Trait>: <answer>" lines), trait by trait.

    labels: {trait letter: {"label": "no_clues"|"low"|"high", "reason", "evidence", "cites_fact"}} for each asked
    trait answered validly; failures: {trait: {"reason", "detail"}} for each asked trait that was not, with reason
    "missing_trait", "duplicate_trait" (two different labels), "unknown_label" or "missing_reason". One bad line
    never costs the other traits their answers. Lines that name no trait (a preamble) and traits not asked are
    ignored.
    """
    unknown = [t for t in traits if t not in TRAITS]
    if unknown or not traits:
        raise ValueError(f"parse_trait_labels: traits must be a non-empty subset of {list(TRAITS)}, got {traits!r}")
    answers: dict[str, list] = defaultdict(list)
    for raw in reply.splitlines():
        m = _TRAIT_LINE.match(_strip_markup(raw))
        if m and (trait := _TRAIT_BY_NAME[m.group(1).lower()]) in traits:
            try:
                answers[trait].append(_answer(m.group(2), facts, trait))
            except InvalidReply as exc:
                answers[trait].append(exc)
    labels, failures = {}, {}
    for t in traits:
        valid = [a for a in answers[t] if isinstance(a, dict)]
        if len({a["label"] for a in valid}) > 1:
            failures[t] = {"reason": "duplicate_trait", "detail": f"{NAMES[t]} is labelled "
                                                                  f"{' and '.join(a['label'] for a in valid)}"}
        elif valid:
            labels[t] = valid[0]
        elif answers[t]:
            failures[t] = {"reason": answers[t][0].reason, "detail": str(answers[t][0])}
        else:
            failures[t] = {"reason": "missing_trait", "detail": f"no line for {NAMES[t]}"}
    return labels, failures


def trait_label_messages(facts: Sequence[str], trait: str, template: str,
                         system_prompt: str | None = None) -> list[dict]:
    """The teacher's chat for labelling one trait of one persona, for teachers too small to answer all five at
    once; `template` (params/prompts/pchat_label_trait.txt) has {persona} and {trait} (the trait's name)."""
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; expected one of {list(TRAITS)}")
    if not facts:
        raise ValueError("trait_label_messages: a persona needs at least one fact")
    _check_template(template, {"persona", "trait"})
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    content = template.format(persona=persona_block(facts), trait=NAMES[trait])
    return messages + [{"role": "user", "content": content.strip()}]


def parse_trait_label(reply: str, facts: Sequence[str], trait: str) -> dict:
    """One trait's answer (as in parse_trait_labels): the reply's first non-empty line, with or without "<Trait>:".

    Raises InvalidReply: "empty", "unknown_label" or "missing_reason".
    """
    lines = [line for line in (_strip_markup(raw) for raw in reply.splitlines()) if line]
    if not lines:
        raise InvalidReply("empty", "the reply is empty")
    m = _TRAIT_LINE.match(lines[0])
    if m and _TRAIT_BY_NAME[m.group(1).lower()] != trait:
        raise InvalidReply("unknown_label", f"asked about {NAMES[trait]}, answered about {m.group(1)}")
    return _answer(m.group(2) if m else lines[0], facts, trait)


def trait_label_records(personas: Sequence[Mapping]) -> list[dict]:
    """The questions of per-trait mode: one record per persona and trait, id "<persona id>:<trait>"."""
    return [{"id": f"{p['id']}:{t}", "persona": p["id"], "trait": t, "facts": list(p["facts"])}
            for p in personas for t in TRAITS]


def label_repair_prompt(reason: str) -> str:
    """Repair instructions for a per-trait label reply, per failure reason."""
    what = _LABEL_REPAIR.get(reason, "it does not follow the required format.")
    return f"That answer is not valid: {what} Answer again in the required format and nothing else."


def whole_repair_prompt(failures: Mapping[str, Mapping]) -> str:
    """Repair instructions for a whole-persona reply: what was wrong with each failed trait, and to answer those
    traits again (only those: the valid answers are kept)."""
    if not failures:
        raise ValueError("whole_repair_prompt: no failed traits")
    names = [NAMES[t] for t in TRAITS if t in failures]
    lines = [f"- {NAMES[t]}: {_LABEL_REPAIR.get(failures[t]['reason'], 'it does not follow the required format.')}"
             for t in TRAITS if t in failures]
    return ("Some answers are not valid:\n" + "\n".join(lines) + f"\nAnswer again for {', '.join(names)} only, "
            "one line each as '<Trait>: <answer>', in the required format and nothing else.")


def _round_id(persona: str, round_: int) -> str:
    return f"{persona}#{round_}"


def whole_round_records(personas: Sequence[Mapping], answers: Sequence[Mapping], round_: int,
                        template: str, system_prompt: str | None = None) -> list[dict]:
    """The questions of round `round_` of whole mode, given the answers of the earlier rounds.

    Round 0 asks every persona for all five traits. Round r > 0 continues the chat of each persona whose round r-1
    answer left traits failed: the teacher sees its own reply and `whole_repair_prompt`, and only those traits are
    asked (and parsed) again. The records are a function of the answers on disk, so a killed run resumes.
    """
    by_id = {a["id"]: a for a in answers}
    out = []
    for p in personas:
        messages = label_messages(p["facts"], template, system_prompt)
        asked = list(TRAITS)
        for r in range(round_):
            prev = by_id.get(_round_id(p["id"], r))
            if prev is None or not prev["failures"]:
                break  # answered (or its request failed for good): nothing to ask again
            messages = messages + [{"role": "assistant", "content": prev["reply"]},
                                   {"role": "user", "content": whole_repair_prompt(prev["failures"])}]
            asked = [t for t in TRAITS if t in prev["failures"]]
        else:
            out.append({"id": _round_id(p["id"], round_), "persona": p["id"], "round": round_, "traits": asked,
                        "facts": list(p["facts"]), "messages": messages})
    return out


def parse_whole_round(record: Mapping, reply: str) -> dict:
    """A whole-mode round's answer, never rejected: the asked traits' labels, their failures and the reply (the
    next round's chat shows it)."""
    labels, failures = parse_trait_labels(reply, record["facts"], record["traits"])
    return {"persona": record["persona"], "round": record["round"], "traits": record["traits"], "labels": labels,
            "failures": failures, "reply": reply}


def label_whole(personas: Sequence[Mapping], template: str, teacher: Any, sampling: Any, answers_path: str | Path,
                rejects_path: str | Path, max_repairs: int, batch_size: int = 16,
                system_prompt: str | None = None) -> dict:
    """Whole mode of 05_label: all five traits in one reply, then up to `max_repairs` rounds that re-ask only the
    traits that failed. Returns the run's counts ({"rounds": [RunStats.as_dict() per round], "elapsed_s"}).

    Every round's answer is appended to `answers_path` (ids "<persona>#<round>"); a failed request goes to
    `rejects_path` and ends that persona's repairs. `collect_labels` merges the rounds.
    """
    t0 = time.perf_counter()
    rounds = []
    for r in range(max_repairs + 1):
        answers = read_jsonl(answers_path) if Path(answers_path).exists() else []
        records = whole_round_records(personas, answers, r, template, system_prompt)
        if not records:
            break
        stats = run_records(records, lambda rec: rec["messages"], parse_whole_round, teacher, sampling, answers_path,
                            rejects_path, max_repairs=0, batch_size=batch_size)
        rounds.append({"round": r, "asked_traits": sum(len(rec["traits"]) for rec in records), **stats.as_dict()})
    return {"rounds": rounds, "elapsed_s": time.perf_counter() - t0}


def collect_labels(personas: Sequence[Mapping], answers: Sequence[Mapping],
                   rejects: Sequence[Mapping] = ()) -> list[dict]:
    """Every persona with five labels: {"id", "facts", "labels", "answered", "rescued", "failed"}.

    `answers` are per-trait records {"persona", "trait", "label", ..., "repairs"} (per-trait mode, run_records) or
    whole-mode round records {"persona", "round", "labels", "failures"}; `rejects` the records run_records
    rejected ({"id": "<persona>:<trait>" or "<persona>#<round>", "reason"}). A trait keeps the first valid answer it got; `answered`
    lists the traits answered validly, `rescued` those of them answered only after a repair, `failed` maps each
    other trait to its last failure reason. A trait without a valid answer counts as "no clues" (the paper's label
    when nothing suggests a level).
    """
    found: dict[str, dict[str, tuple[dict, bool]]] = defaultdict(dict)
    failed: dict[str, dict[str, str]] = defaultdict(dict)
    for a in sorted(answers, key=lambda a: a.get("round", 0)):
        if "round" in a:
            for t, lab in a["labels"].items():
                found[a["persona"]].setdefault(t, (lab, a["round"] > 0))
            for t, f in a["failures"].items():
                failed[a["persona"]][t] = f["reason"]
            continue
        if a.get("trait") not in TRAITS or a.get("label") not in LABELS:
            raise ValueError(f"answer {a.get('id', '?')!r}: bad trait {a.get('trait')!r} or label {a.get('label')!r}")
        lab = {k: a.get(k, NO_CLUES[k]) for k in NO_CLUES}
        found[a["persona"]].setdefault(a["trait"], (lab, a.get("repairs", 0) > 0))
    for r in rejects:
        rid, reason = str(r.get("id", "")), r.get("reason", "rejected")
        persona, _, trait = rid.rpartition(":")
        if trait in TRAITS:
            failed[persona][trait] = reason
        elif "#" in rid:  # a whole-mode round whose request failed: every trait still open fails with it
            persona = rid.rpartition("#")[0]
            for t in TRAITS:
                if t not in found.get(persona, {}):
                    failed[persona][t] = reason
    out = []
    for persona in personas:
        got = found.get(persona["id"], {})
        labels = {t: dict(got[t][0]) if t in got else dict(NO_CLUES) for t in TRAITS}
        out.append({"id": persona["id"], "facts": list(persona["facts"]), "labels": labels,
                    "answered": [t for t in TRAITS if t in got], "rescued": [t for t in TRAITS if t in got and got[t][1]],
                    "failed": {t: reason for t, reason in failed.get(persona["id"], {}).items() if t not in got}})
    return out


def label_summary(labelled: Sequence[Mapping]) -> dict:
    """What 05_label's metrics report about the answers: traits asked, valid at the first try, rescued by a repair,
    failed (by reason), and how many low/high labels cite one of the persona's facts."""
    asked = len(labelled) * len(TRAITS)
    answered = sum(len(r["answered"]) for r in labelled)
    rescued = sum(len(r["rescued"]) for r in labelled)
    failed = Counter(reason for r in labelled for reason in r["failed"].values())
    levels = [lab for r in labelled for lab in r["labels"].values() if lab["label"] in LEVELS]
    citing = sum(bool(lab.get("cites_fact")) for lab in levels)
    repaired = rescued + sum(failed.values())  # the traits that needed a repair (a later answer or none)
    return {"traits_asked": asked, "traits_answered": answered, "traits_valid_first_try": answered - rescued,
            "traits_rescued_by_repair": rescued, "traits_failed": sum(failed.values()), "failed_reasons": dict(failed),
            "repair_rescue_rate": rescued / repaired if repaired else None, "level_labels": len(levels),
            "level_labels_citing_fact": citing, "cites_fact_share": citing / len(levels) if levels else None}


def label_distribution(labelled: Sequence[Mapping[str, Mapping]]) -> dict:
    """Counts of each label per trait, the share of "no clues" per trait and over all trait judgements."""
    if not labelled:
        raise ValueError("label_distribution: no labelled personas")
    counts = {t: dict.fromkeys(LABELS, 0) for t in TRAITS}
    for i, labels in enumerate(labelled):
        for t in TRAITS:
            label = labels.get(t, {}).get("label")
            if label not in LABELS:
                raise ValueError(f"persona {i}: trait {t} has label {label!r}; expected one of {LABELS}")
            counts[t][label] += 1
    n = len(labelled)
    share = {t: counts[t]["no_clues"] / n for t in TRAITS}
    return {"n_personas": n, "counts": counts, "no_clues_share": share,
            "no_clues_share_overall": sum(share.values()) / len(TRAITS)}


# ---------------------------------------------------------------------------------------------------------------
# 06_synthesize: trait sampling and the single-agent dialogue prompt


def sample_traits(labels: Mapping[str, Mapping], seed: int, key: str,
                  choices: Sequence[str] = LABELLED) -> dict[str, str]:
    """{trait: "low"|"high"} for one speaker: a labelled trait keeps its level, a "no clues" one is drawn."""
    unknown = [c for c in choices if c not in LEVELS]
    if not choices or unknown:
        raise ValueError(f"sample_traits: choices must be a non-empty subset of {LEVELS}, got {list(choices)}")
    rng = random.Random(f"{seed}:{key}")
    out = {}
    for t in TRAITS:
        label = labels.get(t, {}).get("label")
        if label not in LABELS:
            raise ValueError(f"sample_traits({key!r}): trait {t} has label {label!r}; expected one of {LABELS}")
        draw = rng.choice(list(choices))  # drawn for every trait, so a label change elsewhere keeps this draw
        out[t] = label if label in LEVELS else draw
    return out


def traits_text(levels: Mapping[str, str]) -> str:
    """"Openness: high, Conscientiousness: low, ..." in trait order, for the traits present."""
    return ", ".join(f"{NAMES[t]}: {levels[t]}" for t in TRAITS if t in levels)


DIALOGUE_FIELDS = {"name_a", "name_b", "persona_a", "persona_b", "traits_a", "traits_b", "min_turns", "max_turns"}


def _check_template(template: str, allowed: set[str]) -> None:
    fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    if fields - allowed:
        raise ValueError(f"prompt template has unknown placeholders {sorted(fields - allowed)}; "
                         f"allowed: {sorted(allowed)}")


def dialogue_messages(personas: Mapping[str, Sequence[str]], traits: Mapping[str, Mapping[str, str]],
                      min_turns: int, max_turns: int, names: tuple[str, str] = ("A", "B"), *, template: str,
                      system_prompt: str | None = None) -> list[dict]:
    """The teacher's chat for one synthesized dialogue: both personas and both speakers' trait levels. `template`
    (params/prompts/pchat_whole.txt) may use the fields of DIALOGUE_FIELDS."""
    _check_template(template, DIALOGUE_FIELDS)
    for s in SPEAKERS:
        if not personas.get(s):
            raise ValueError(f"dialogue_messages: speaker {s} has no persona facts")
        if set(traits.get(s, {})) != set(TRAITS):
            raise ValueError(f"dialogue_messages: speaker {s} needs a level for each of {list(TRAITS)}")
    user = template.format(name_a=names[0], name_b=names[1], persona_a=persona_block(personas["A"]),
                           persona_b=persona_block(personas["B"]), traits_a=traits_text(traits["A"]),
                           traits_b=traits_text(traits["B"]), min_turns=min_turns, max_turns=max_turns)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user.strip()}]


def transcript_repair_prompt(min_turns: int, max_turns: int) -> Callable[[str], str]:
    """Repair instructions for a reply to the dialogue prompt (`min_turns`..`max_turns` utterances)."""
    return dialogue_repair_prompt({
        "turn_count": f"It must have between {min_turns} and {max_turns} utterances, one per line.",
        "speaker_order": "The first speaker must start and the two speakers must strictly alternate.",
        "empty": "Every utterance must contain text.",
        "too_long": "An utterance is too long.",
        "unknown_speaker": "Only the two named speakers may talk.",
    })


# ---------------------------------------------------------------------------------------------------------------
# Persona leakage

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_FIRST_PERSON = frozenset(("i", "me", "my", "mine", "myself", "i'm", "i've", "i'd", "i'll"))
_SECOND_PERSON = frozenset(("you", "your", "yours", "yourself", "you're", "you've", "you'd", "you'll", "u", "ur"))
_STOP = frozenset((
    "a", "an", "the", "and", "or", "but", "if", "so", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as",
    "is", "am", "are", "was", "were", "be", "been", "being", "do", "does", "did", "have", "has", "had", "having",
    "we", "our", "us", "he", "she", "it", "its", "they", "them", "their", "this", "that", "these", "those", "there",
    "here", "very", "really", "just", "also", "too", "not", "no", "yes", "all", "some", "any", "can", "could", "will",
    "would", "should", "may", "might", "must", "about", "into", "over", "than", "then", "out", "up", "down", "more",
    "most", "much", "many", "lot", "lots")) | _FIRST_PERSON | _SECOND_PERSON
# Negated, wished-for or hypothetical sentences do not claim a fact ("I've never met a bee farmer").
_NOT_A_CLAIM = frozenset(("never", "not", "no", "don't", "didn't", "doesn't", "haven't", "hasn't", "can't", "won't",
                          "wouldn't", "isn't", "wasn't", "aren't", "want", "wanted", "wants", "wish", "hope", "would",
                          "if", "maybe"))


def content_words(text: str) -> set[str]:
    """Lower-cased word types of a text minus function words (the units the leakage rule compares)."""
    return {w for w in _WORD.findall(text.lower().replace("’", "'")) if w not in _STOP}


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def _covers(sentence_words: set[str], fact: str, threshold: float) -> bool:
    fact_words = content_words(fact)
    return len(fact_words) >= 2 and len(fact_words & sentence_words) / len(fact_words) >= threshold


def leaked_facts(utterance: str, own: Sequence[str], other: Sequence[str], threshold: float = 0.75) -> list[str]:
    """The other speaker's facts that this utterance claims for its speaker (empty when none).

    Rule: a sentence leaks a fact of the other speaker when (1) at least `threshold` of the fact's content words
    (two or more; function words removed) occur in the sentence, (2) the sentence speaks in the first person
    ("I", "my", ...) and not to the partner (no "you"/"your": "So you are a nurse?" is engagement, not leakage),
    (3) it is not negated, wished for or hypothetical ("never", "not", "want", "wish", "would", "if", ...), and
    (4) no fact of the speaker's own persona is covered by the sentence as well (both may like dogs).
    Facts with fewer than two content words ("i am a nurse.") are never matched: one shared word is too weak a sign.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"leakage threshold must be in (0, 1], got {threshold}")
    found: list[str] = []
    for sentence in _sentences(utterance):
        tokens = set(_WORD.findall(sentence.lower().replace("’", "'")))
        if not tokens & _FIRST_PERSON or tokens & (_SECOND_PERSON | _NOT_A_CLAIM):
            continue
        words = content_words(sentence)
        if any(_covers(words, f, threshold) for f in own):
            continue
        found += [f for f in other if f not in found and _covers(words, f, threshold)]
    return found


def dialogue_leakage(dialogue: Mapping, threshold: float = 0.75) -> list[dict]:
    """[{"turn", "speaker", "facts"}] for every utterance that states the other speaker's facts.

    Only speakers with persona facts are judged (XPersona's user "A" has none).
    """
    out = []
    for i, turn in enumerate(dialogue["turns"]):
        me = turn["speaker"]
        own = dialogue["personas"].get(me) or []
        if not own:
            continue  # an unknown persona (XPersona's user) may hold any fact: nothing to judge
        other = dialogue["personas"].get("B" if me == "A" else "A") or []
        facts = leaked_facts(turn["text"], own, other, threshold)
        if facts:
            out.append({"turn": i, "speaker": me, "facts": facts})
    return out


def leakage_summary(dialogues: Sequence[Mapping], threshold: float = 0.75) -> dict:
    """Leaking utterances and dialogues with at least one, as counts and shares."""
    if not dialogues:
        raise ValueError("leakage_summary: no dialogues")
    per = [dialogue_leakage(d, threshold) for d in dialogues]
    n_utt = sum(len(d["turns"]) for d in dialogues)
    n_leak = sum(len(p) for p in per)
    return {"dialogues": len(dialogues), "utterances": n_utt, "leaking_utterances": n_leak,
            "leaking_dialogues": sum(1 for p in per if p), "utterance_share": n_leak / n_utt if n_utt else 0.0,
            "dialogue_share": sum(1 for p in per if p) / len(dialogues)}


# ---------------------------------------------------------------------------------------------------------------
# 08_sft: response generation with control text

# Fields: {persona} (bulleted facts) and {personality} (the traits line, or "" when the row has no traits).
DEFAULT_SFT_SYSTEM = "You are chatting with a new acquaintance.\nYour persona:\n{persona}\n{personality}"
TRAINING_SETS = ("P", "PT", "P+PT")


def control_text(facts: Sequence[str], levels: Mapping[str, str] | None,
                 template: str = DEFAULT_SFT_SYSTEM) -> str:
    """The responder's control text: persona facts, then "Your personality: ..." when trait levels are given."""
    _check_template(template, {"persona", "personality"})
    personality = f"Your personality: {traits_text(levels)}" if levels else ""
    return template.format(persona=persona_block(facts), personality=personality).strip()


def chat_for_turn(dialogue: Mapping, target: int, template: str = DEFAULT_SFT_SYSTEM, use_traits: bool = True,
                  max_history: int | None = None, levels: Mapping[str, str] | None = None):
    """(messages, target text): the control text as system message, then the history from the target speaker's side.

    `levels` overrides the speaker's trait levels (the trait-control probes of 12_eval); `max_history` keeps only
    the last turns before the target.
    """
    turns = dialogue["turns"]
    if not 0 < target < len(turns):
        raise ValueError(f"dialogue {dialogue['id']}: target turn {target} outside 1..{len(turns) - 1}")
    me = turns[target]["speaker"]
    facts = dialogue["personas"].get(me) or []
    if not facts:
        raise ValueError(f"dialogue {dialogue['id']}: speaker {me} of turn {target} has no persona facts")
    if levels is None and use_traits:
        levels = (dialogue.get("traits") or {}).get(me)
    history = turns[:target] if max_history is None else turns[max(0, target - max_history):target]
    messages = [{"role": "system", "content": control_text(facts, levels if use_traits else None, template)}]
    messages += [{"role": "assistant" if t["speaker"] == me else "user", "content": t["text"]} for t in history]
    return messages, turns[target]["text"]


def sft_rows(dialogues: Sequence[Mapping], template: str = DEFAULT_SFT_SYSTEM, use_traits: bool = True,
             max_history: int | None = None) -> tuple[list[dict], dict]:
    """(rows, skipped): prompt-completion rows for every turn after the first whose speaker has persona facts.

    Rows have the conversational shape of lib/jic and lib/big5chat, so lib.train.sft trains on them. The
    control text carries the speaker's trait levels when the dialogue has "traits" (PT) and `use_traits` is set.
    """
    rows, skipped = [], Counter()
    for d in dialogues:
        for t in range(len(d["turns"])):
            if t == 0:
                skipped["first_turn"] += 1
                continue
            if not d["personas"].get(d["turns"][t]["speaker"]):
                skipped["no_persona"] += 1
                continue
            prompt, target = chat_for_turn(d, t, template, use_traits, max_history)
            rows.append({"id": f"{d['id']}-t{t}", "prompt": prompt,
                         "completion": [{"role": "assistant", "content": target}]})
    return rows, dict(skipped)


def training_rows(name: str, p_dialogues: Sequence[Mapping], pt_dialogues: Sequence[Mapping],
                  **kwargs) -> tuple[list[dict], dict]:
    """The rows of one training set: "P" (PersonaChat), "PT" (synthesized) or "P+PT" (both)."""
    if name not in TRAINING_SETS:
        raise ValueError(f"unknown training set {name!r}; expected one of {TRAINING_SETS}")
    parts = {"P": [p_dialogues], "PT": [pt_dialogues], "P+PT": [p_dialogues, pt_dialogues]}[name]
    rows, skipped = [], Counter()
    for dialogues in parts:
        r, s = sft_rows(dialogues, **kwargs)
        rows += r
        skipped.update(s)
    if not rows:
        raise ValueError(f"training set {name!r} has no rows (skipped: {dict(skipped)})")
    return rows, dict(skipped)
