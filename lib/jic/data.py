"""JIC's journals as the later stages read them: entries by source, each author's journal, the pair's names.

Scraping and cleaning live in `scrape`, the paper's released dialogues in `released`; this room is what 04_filter,
08_sft, 11_generate and 12_eval read back from their outputs.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from lib.records import read_jsonl

NAMES = ("Alex", "Sam", "Jordan", "Riley", "Casey", "Morgan", "Taylor", "Jamie", "Robin", "Quinn", "Avery", "Drew")


def speaker_names(author_a: str, author_b: str) -> tuple[str, str]:
    """Two distinct, stable first names for a pair: teachers write livelier dialogue for "Sam" than for "A"."""
    i = int(hashlib.sha256(author_a.encode()).hexdigest()[:8], 16) % len(NAMES)
    j = int(hashlib.sha256(author_b.encode()).hexdigest()[:8], 16) % (len(NAMES) - 1)
    return NAMES[i], NAMES[(i + 1 + j) % len(NAMES)]  # an offset of 1..len-1 never lands on i


def journals_by_author(entries: list[dict]) -> dict[str, str]:
    """Each author's entries joined in corpus order: the journal the teacher reads and RAFt retrieves from."""
    journals: dict[str, list[str]] = {}
    for e in entries:
        journals.setdefault(e["author"], []).append(e["text"].strip())
    return {author: " ".join(texts) for author, texts in journals.items()}


def truncate_words(text: str, max_words: int) -> str:
    """The first `max_words` words of a text."""
    return " ".join(text.split()[:max_words])


def journal_entries(data_dir: Path, source: str) -> list[dict]:
    """The journal entries RAFt retrieves from and 12_eval profiles authors by: 04_filter's kept entries, or, for
    `synthesize.jic.source: released`, the released dialogues' own entries that 06_synthesize wrote."""
    if source not in ("teacher", "released"):
        raise ValueError(f"synthesize.jic.source = {source!r}: expected teacher or released")
    path = data_dir / ("06_synthesize/journals.jsonl" if source == "released" else "04_filter/entries.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (source: {source})")
    return read_jsonl(path)

