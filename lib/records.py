"""Append-only JSON Lines record store shared by every teacher stage.

Each stage appends one record per accepted (or rejected) item as soon as it exists, so a stage that is
killed (Ctrl-C, OOM, SIGKILL, a dropped SSH session) resumes where it stopped: `done_ids` lists what is
already on disk and the stage skips it. A kill in the middle of a write can leave a truncated last line;
`read_jsonl` ignores it and the next `append_jsonl` cuts it off before writing.

    from lib.records import append_jsonl, done_ids, read_jsonl
    done = done_ids("data/out.jsonl", "data/rejects.jsonl")
    append_jsonl("data/out.jsonl", {"id": "x1", "text": "..."})
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_TAIL_CHUNK = 64 * 1024


class RecordError(ValueError):
    """A record file or record that breaks the JSONL store's contract (malformed line, missing or repeated id)."""


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file of dicts; an unterminated, unparsable last line (a killed write) is ignored."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    # After a final newline split() yields one empty trailing element; anything else there is an
    # unterminated line, which is the only place a killed append can leave garbage.
    unterminated = lines[-1] != b""
    records: list[dict] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if unterminated and lineno == len(lines):
                log.warning("%s: ignoring truncated last line %d (%d bytes)", path, lineno, len(raw))
                continue
            raise RecordError(f"{path}:{lineno}: malformed JSON line: {exc}") from None
        if not isinstance(obj, dict):
            raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        records.append(obj)
    return records


def _last_newline_offset(f, size: int) -> int:
    """Byte offset of the last b"\\n" in an open binary file of `size` bytes, or -1 when there is none."""
    end = size
    while end > 0:
        start = max(0, end - _TAIL_CHUNK)
        f.seek(start)
        chunk = f.read(end - start)
        idx = chunk.rfind(b"\n")
        if idx >= 0:
            return start + idx
        end = start
    return -1


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a line and fsync it, first cutting a partial last line left by a kill."""
    if not isinstance(record, dict):
        raise RecordError(f"{path}: record must be a dict, got {type(record).__name__}")
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as f:
        size = f.seek(0, os.SEEK_END)
        if size > 0:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                keep = _last_newline_offset(f, size) + 1
                log.warning("%s: cutting %d bytes of a truncated last line before appending", path, size - keep)
                f.truncate(keep)
        # "a" mode always writes at the end, which is now just after the last complete line.
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """Write records as JSON Lines atomically (a temporary file renamed over `path`): a kill leaves the old or the new
    file, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    os.replace(tmp, path)
    return path


def done_ids(*paths: str | Path) -> set[str]:
    """Ids already recorded in any of `paths` (missing files count as empty), to skip them on resume."""
    ids: set[str] = set()
    for path in paths:
        if not Path(path).exists():
            continue
        for i, rec in enumerate(read_jsonl(path)):
            rid = rec.get("id")
            if not isinstance(rid, str):
                raise RecordError(f"{path}: record {i} has no string 'id' (got {rid!r})")
            ids.add(rid)
    return ids


def run_in_chunks(folder: str | Path, items: Sequence, size: int,
                  work: Callable[[Sequence, int], list[dict]]) -> tuple[list[dict], int]:
    """(records, chunks run now): `work(chunk, first_index)` over consecutive chunks of `size` items, each chunk's
    records written whole to folder/chunk-NNNNN.jsonl as soon as it finishes. A chunk whose file exists is read back,
    not run again, so a killed run resumes at the first unfinished chunk. Chunks are fixed by position in `items`
    (the caller's output directory must be keyed to `items` and `size`, as lib.report.resumable_dir is), and `work`
    gets the chunk's first index so that it can seed from it: a resumed run then writes what one run would have."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records, ran = [], 0
    for k, first in enumerate(range(0, len(items), size)):
        path = folder / f"chunk-{k:05d}.jsonl"
        if not path.exists():
            write_jsonl(path, work(items[first:first + size], first))
            ran += 1
        records += read_jsonl(path)
    return records, ran


def check_ids(records: list[dict]) -> None:
    """Raise RecordError unless every record has a string "id" and no id repeats (resume relies on both)."""
    seen: set[str] = set()
    for n, rec in enumerate(records):
        rid = rec.get("id")
        if not isinstance(rid, str):
            raise RecordError(f"record {n} has no string 'id' (got {rid!r})")
        if rid in seen:
            raise RecordError(f"duplicate record id {rid!r}")
        seen.add(rid)


def split_of(record_id: str, test_fraction: float, seed: int = 0) -> str:
    """'train' or 'test', stable for an id whatever else is in the corpus (hash-based, not positional)."""
    h = int(hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "train"


def require_nonempty(records: list, what: str, hint: str | None = None) -> list:
    """Stop a stage early, with a pointer to the parameters, when filtering left nothing."""
    if len(records) == 0:
        hint = hint or ("check scrape params: the date range (after/before) or folds/max_authors, "
                        "min_words, sentences_per_entry and max_entries_per_author")
        raise ValueError(f"empty corpus: {what} has no records; {hint}")
    return records
