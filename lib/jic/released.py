"""JIC's published dialogues (Hugging Face `chocokiddo/jic`) as 06_synthesize output, for `synthesize.jic.source:
released`: 08/11/12 then train and evaluate on the paper's own Llama-3-70B dialogues, with no teacher call.

The Hub repository holds `train.json.zip` and `test.json.zip`. Their record layout could not be opened here (the
Hub is unreachable from the machines this repository is built on); it is read as the paper's own scripts read it:
its dialogue generator writes one JSON list per batch of records

    {"author_fullname1", "author_fullname2", "author1", "author2", "id1", "id2",
     "journal_entry1", "journal_entry2", "dialogue", ...}

and its fine-tuning and inference scripts take `dialogue` as a list of utterances, the first author first, the
speakers alternating. A record whose `dialogue` is still the teacher's text (one "Name: utterance" per line) is
split into utterances here. The reader accepts a .json list, a .jsonl file or a .zip holding one of them, and says
which field is missing where the layout turns out to differ.

Each record becomes {"id", "speaker_a", "speaker_b", "turns": [{"speaker": "A"|"B", "speaker_id", "text"}], "split",
"source": "released"}: the file it came from is its split (the paper's own train/test), and the two journal entries
become the journal entries RAFt retrieves from and 12_eval profiles the authors by.
"""
from __future__ import annotations

import json
import re
import zipfile
from collections import Counter
from pathlib import Path

RELEASED_ID = "chocokiddo/jic"
AUTHOR_KEYS = (("author_fullname1", "author1"), ("author_fullname2", "author2"))  # the first present names the author
ENTRY_KEYS = ("id1", "id2")
JOURNAL_KEYS = ("journal_entry1", "journal_entry2")
_LABEL = re.compile(r"^\s*[*_]*([^:\n]{1,40}?)[*_]*\s*:\s*(.*)$")  # "Author 1: …", "**Sam**: …"


def read_records(path: str | Path) -> list[dict]:
    """The records of one released file: a JSON list, JSON lines, or a zip holding exactly one such file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"released JIC file not found: {path}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            members = [n for n in z.namelist() if n.endswith((".json", ".jsonl"))
                       and not n.startswith("__MACOSX/") and not n.endswith("/")]
            if len(members) != 1:
                raise ValueError(f"{path}: expected one .json or .jsonl file inside the zip, "
                                 f"found {members or z.namelist()}")
            text, name = z.read(members[0]).decode("utf-8"), members[0]
    else:
        text, name = path.read_text(encoding="utf-8"), path.name
    where = f"{path}" + (f" ({name})" if name != path.name else "")
    stripped = text.lstrip()
    if not stripped:
        raise ValueError(f"{where}: empty file")
    try:
        if stripped.startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not a JSON list nor JSON lines: {exc}") from exc
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{where}: expected a list of objects (one per dialogue)")
    return records


def utterances(dialogue) -> list[str]:
    """A released `dialogue` as its utterances: a list is taken as it is. The teacher's text keeps the lines labelled
    by one of its first two speakers, without the label; a line without one ends the dialogue's utterances there."""
    if isinstance(dialogue, list):
        return [str(u).strip() for u in dialogue if str(u).strip()]
    if not isinstance(dialogue, str):
        return []
    labelled = [_LABEL.match(line) for line in dialogue.splitlines() if line.strip()]
    speakers = list(dict.fromkeys(m.group(1).strip().lower() for m in labelled if m))[:2]
    out = []
    for m in labelled:
        if not m or m.group(1).strip().lower() not in speakers:
            break
        if m.group(2).strip():
            out.append(m.group(2).strip())
    return out


def _author(record: dict, side: int) -> str | None:
    for key in AUTHOR_KEYS[side]:
        if record.get(key):
            return str(record[key])
    return None


def convert(records: list[dict], split: str | None, min_turns: int = 2) -> tuple[list[dict], list[dict], list[dict]]:
    """(dialogues, journal entries, rejects) of one released file's records; a bad record is a reject, with why.
    `split` None: the dialogues carry no split (08 splits them by hash)."""
    dialogues, entries, rejects, ids = [], [], [], set()
    for i, r in enumerate(records):
        authors = (_author(r, 0), _author(r, 1))
        turns = utterances(r.get("dialogue"))
        post_ids = [str(r.get(k) or f"row{i}") for k in ENTRY_KEYS]
        did = f"{split or 'all'}-{post_ids[0]}__{post_ids[1]}"
        reason = ("no_dialogue" if "dialogue" not in r else "missing_author" if None in authors
                  else "same_author" if authors[0] == authors[1]
                  else "too_few_turns" if len(turns) < min_turns else "duplicate" if did in ids else None)
        if reason:
            rejects.append({"split": split, "row": i, "reason": reason, "keys": sorted(r)[:12]})
            continue
        ids.add(did)
        dialogues.append({
            "id": did, "speaker_a": authors[0], "speaker_b": authors[1],
            "turns": [{"speaker": "AB"[t % 2], "speaker_id": authors[t % 2], "text": u} for t, u in enumerate(turns)],
            "split": split, "source": "released"})
        for side in (0, 1):
            text = str(r.get(JOURNAL_KEYS[side]) or "").strip()
            if text:
                entries.append({"id": f"{authors[side]}-{post_ids[side]}", "author": authors[side], "text": text})
    return dialogues, entries, rejects


def load_released(train_path: str | Path, test_path: str | Path | None = None, max_train: int | None = None,
                  min_turns: int = 2) -> tuple[list[dict], list[dict], list[dict]]:
    """(dialogues, journal entries, rejects) of the released train file and, if given, test file.

    Without a test file, every dialogue is `split: null` and 08's hashed split decides. Journal entries are kept
    once per (author, text); a second dialogue on the same two entries (id1, id2) is a `duplicate` reject.
    `max_train` keeps the first that many train dialogues.
    """
    dialogues, entries, rejects = [], [], []
    for path, split in ((train_path, "train" if test_path else None), (test_path, "test")):
        if path is None:
            continue
        records = read_records(path)
        d, e, r = convert(records, split, min_turns)
        if split != "test" and max_train is not None:
            d = d[:max_train]
        if not d:
            raise ValueError(f"{path}: no usable dialogue in {len(records)} records; "
                             f"reasons {dict(Counter(x['reason'] for x in r))}")
        dialogues, entries, rejects = dialogues + d, entries + e, rejects + r
    speakers = {a for d in dialogues for a in (d["speaker_a"], d["speaker_b"])}
    unique = {(e["author"], e["text"]): e for e in entries if e["author"] in speakers}
    return dialogues, list(unique.values()), rejects
