"""PersonalityChat's source corpora (01_scrape): PersonaChat loaders that read XPersona, Synthetic-Persona-Chat and
the Hub's ConvAI2 copy into the package's dialogue schema, and the persona keys and unique personas 05_label labels.

    dialogues, rejects = data.load_personachat("../shared/data/personachat/xpersona_en_valid.json", errors="skip")
    personas = data.unique_personas(dialogues)      # persona key -> facts, the units 05_label labels

Our reading where the paper is silent:

- XPersona (the mirror's PersonaChat) stores one side per dialogue: `persona` is the responder's. The user is "A"
  (persona []) and the responder "B"; a first user utterance "__SILENCE__" (every dialogue of the valid file) means
  the responder opened, so it is dropped and the dialogue starts with B.
- Synthetic-Persona-Chat: "User 1" is "A", "User 2" is "B"; persona facts are newline-separated. Conversations carry
  LLM debris, handled by `split_turns` (lib/pchat/synthesize.py, the parser of the teacher's transcripts too):
  markdown around labels ("*User 1:*", "* * User 1: * *") is stripped, stage directions ("[Later]", "(The next
  day)", "* * *") and narration after a blank line are dropped, an unlabelled line right after an utterance continues
  it, and consecutive utterances by one speaker are merged (the file has such runs after scene breaks). A third
  speaker ("Adam: You too."), no conversation, or fewer than two turns is a malformed row.
"""
from __future__ import annotations

import hashlib
import json
import string
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lib.pchat import SPEAKERS
from lib.pchat.synthesize import merge_repeated_speakers, split_turns
from lib.teacher import InvalidReply

SILENCE = "__SILENCE__"
SPC_COLUMNS = ("user 1 personas", "user 2 personas", "Best Generated Conversation")
SPC_LABELS = {"User 1": "A", "User 2": "B"}

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


# ---------------------------------------------------------------------------------------------------------------
# Personas


def normalize_fact(text: str) -> str:
    """Light normalisation for matching a quoted fact: case, curly quotes, whitespace, trailing punctuation."""
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    text = " ".join(text.lower().split()).strip(" \"'")
    return text.rstrip(string.punctuation + " ").strip(" \"'")


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

