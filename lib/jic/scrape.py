"""JIC's raw-corpus acquisition for stage 01_scrape_jic: journal-like entries per (pseudonymous) author.

Two sources produce the same record shape, so every later stage is source-agnostic:

* `pullpush` (paper scale, needs internet): r/Journaling submissions from the PullPush Reddit archive.
  `scrape_subreddit(PullPushClient(), "Journaling", after, before, out_path, salt)` writes JSON Lines
  resumably; authors are replaced by salted hashes *before* anything is written.
* `essays` (cpu/tiny profiles, offline): the Essays corpus (one stream-of-consciousness essay per
  author, binary Big-Five labels). `lib.corpora.load_essays` reads it, `essays_to_journal` cuts each essay into
  several consecutive "journal entries" so that per-author clustering has something to cluster.

Both then go through `clean_entries` and `drop_single_entry_authors`; every dropped record is counted
by reason in a `collections.Counter`, never dropped silently.

Record: {"id", "author", "text", "source", ...} plus "created_utc" (pullpush) or "entry_index" (essays).
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pandas as pd

from lib.corpora import pseudonymise

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- PullPush


class PullPushError(RuntimeError):
    """A PullPush request that failed for good (after retries, or with a non-retryable status)."""


RETRYABLE_STATUS = {429, 500, 502, 503, 504}


class PullPushClient:
    """Minimal PullPush submission-search client: retries with exponential backoff, pages backwards in time."""

    def __init__(self, base_url: str = "https://api.pullpush.io", client: httpx.Client | None = None,
                 max_retries: int = 5, backoff_s: float = 2.0, sleep: Callable[[float], None] = time.sleep):
        self.base_url = base_url.rstrip("/")
        self.client = client if client is not None else httpx.Client(timeout=60.0)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.sleep = sleep  # injectable so tests pay nothing for backoff

    def search(self, subreddit: str, after: int, before: int, size: int = 100) -> list[dict]:
        """One page of submissions with after < created_utc < before, newest first."""
        url = f"{self.base_url}/reddit/search/submission/"
        params = {"subreddit": subreddit, "size": size, "before": int(before), "after": int(after),
                  "sort": "desc", "sort_type": "created_utc"}
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = self.client.get(url, params=params)
            except httpx.TransportError as e:  # connection refused/reset, timeouts
                problem = f"{type(e).__name__}: {e}"
                log.warning("PullPush %s failed (%s), attempt %d", url, problem, attempt + 1)
                continue
            if resp.status_code in RETRYABLE_STATUS:
                problem = f"HTTP {resp.status_code}"
                log.warning("PullPush %s returned %s, attempt %d", resp.url, problem, attempt + 1)
                continue
            if resp.status_code != 200:
                raise PullPushError(f"GET {resp.url} returned HTTP {resp.status_code} (not retryable): "
                                    f"{resp.text[:200]}")
            try:
                data = resp.json()["data"]
            except (ValueError, KeyError, TypeError) as e:
                raise PullPushError(f"GET {resp.url} returned no JSON 'data' list: {resp.text[:200]}") from e
            if not isinstance(data, list):
                raise PullPushError(f"GET {resp.url}: 'data' is {type(data).__name__}, expected a list")
            return data
        raise PullPushError(f"GET {url} with {params} failed after {self.max_retries + 1} attempts; last: {problem}")

    def pages(self, subreddit: str, after: int, before: int, size: int = 100) -> Iterator[list[dict]]:
        """Yield pages newest to oldest until an empty page or the `after` bound; each page's oldest sets `before`."""
        cursor = int(before)
        while True:
            page = self.search(subreddit, after, cursor, size)
            if not page:
                return
            times = [_created(p) for p in page]
            # Only the lower bound is enforced: a post at a page boundary may come twice; callers dedupe by id.
            inside = [p for p, t in zip(page, times) if t > after]
            if inside:
                yield inside
            oldest = min(times)
            if oldest <= after:
                return
            if oldest >= cursor:
                # The API ignored `before`: continuing would fetch this page forever.
                raise PullPushError(f"PullPush page did not advance: before={cursor} but oldest created_utc={oldest} "
                                    f"(subreddit={subreddit}, size={size})")
            cursor = oldest


def _created(post: dict) -> int:
    try:
        return int(float(post["created_utc"]))
    except (KeyError, TypeError, ValueError) as e:
        raise PullPushError(f"post {post.get('id')!r} has no usable created_utc: {post.get('created_utc')!r}") from e


def _drop_reason(post: dict) -> str | None:
    """Why a submission cannot be a journal entry, or None if it can."""
    author = post.get("author")
    selftext = post.get("selftext")
    if not post.get("id"):
        return "missing_id"
    if author == "AutoModerator":
        return "automoderator"
    if not author or author == "[deleted]":
        return "deleted_author"  # all deleted authors would otherwise collapse into one pseudo-author
    if selftext == "[deleted]":
        return "deleted"
    if selftext == "[removed]":
        return "removed"
    if not selftext or not str(selftext).strip():
        return "empty_selftext"
    return None


def _read_existing(out_path: Path) -> tuple[list[dict], int]:
    """Records already written; a torn last line (crash mid-write) is cut off and counted, others are errors."""
    records: list[dict] = []
    raw = out_path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    torn = 0
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:  # no trailing newline: the write was interrupted
                out_path.write_text("\n".join(lines[:i]) + ("\n" if i else ""), encoding="utf-8")
                log.warning("%s: removed a torn last line from an interrupted write", out_path)
                torn = 1
            else:
                raise ValueError(f"{out_path}:{i + 1}: not valid JSON ({e}); fix or delete the file") from e
    return records, torn


def scrape_subreddit(client: PullPushClient, subreddit: str, after: int, before: int, out_path: str | Path,
                     salt: str, max_items: int | None = None, size: int = 100) -> dict:
    """Append a subreddit's usable submissions to `out_path` as pseudonymised JSONL, resuming where it stopped."""
    if not salt:
        raise ValueError("scrape_subreddit needs a non-empty salt; raw usernames must never be written")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    existing, torn = _read_existing(out_path) if out_path.exists() else ([], 0)
    seen = {r["id"] for r in existing}
    dropped: Counter = Counter()
    if torn:
        dropped["torn_line"] += torn
    start = int(before)
    if existing:
        # +1 because `before` is exclusive: posts sharing the oldest timestamp may be unsaved; ids dedupe them.
        start = min(int(r["created_utc"]) for r in existing) + 1
    stats = {"resumed": bool(existing), "before": start, "existing": len(existing), "written": 0, "received": 0,
             "pages": 0}
    total = len(existing)
    if max_items is not None and total >= max_items:
        return {**stats, "total": total, "dropped": dict(dropped)}
    with out_path.open("a", encoding="utf-8") as fh:
        for page in client.pages(subreddit, after, start, size):
            stats["pages"] += 1
            for post in page:
                stats["received"] += 1
                reason = _drop_reason(post)
                if reason is None and post.get("id") in seen:
                    reason = "duplicate_id"
                if reason is not None:
                    dropped[reason] += 1
                    continue
                seen.add(post["id"])
                text = "\n\n".join(s.strip() for s in (post.get("title") or "", post["selftext"]) if s.strip())
                record = {"id": str(post["id"]), "author": pseudonymise(post["author"], salt),
                          "created_utc": _created(post), "text": text, "source": "pullpush"}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                stats["written"] += 1
                total += 1
                if max_items is not None and total >= max_items:
                    break
            fh.flush()  # one page at a time reaches disk, so a crash loses at most the page in flight
            if max_items is not None and total >= max_items:
                break
    log.info("scraped r/%s: %d new, %d total, dropped %s", subreddit, stats["written"], total, dict(dropped))
    return {**stats, "total": total, "dropped": dict(dropped)}


# A sentence ends at . ! ? (plus closing quotes/brackets) followed by space and a non-punctuation character,
# so ". . . ." ellipses, common in the essays, stay inside one sentence.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[^\s.!?])")


def split_sentences(text: str) -> list[str]:
    """Regex sentence split that tolerates the essays' spaced ellipses."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text.strip())) if s]


def split_into_entries(text: str, sentences_per_entry: int = 5, min_words: int = 20,
                       max_words: int = 120) -> list[str]:
    """Cut one long essay into consecutive journal-like entries; every word lands in exactly one entry.

    An entry closes after `sentences_per_entry` sentences once it has `min_words` words, or before it would
    exceed `max_words`; a run-on "sentence" longer than `max_words` is cut into word windows first. A short
    tail is merged into the previous entry when that stays within `max_words`; otherwise it is returned
    as is and `clean_entries` counts it as too short.
    """
    if sentences_per_entry < 1 or min_words < 0 or max_words < 1:
        raise ValueError(f"bad split params: sentences_per_entry={sentences_per_entry}, min_words={min_words}, "
                         f"max_words={max_words}")
    pieces: list[list[str]] = []
    for sentence in split_sentences(text):
        words = sentence.split()
        pieces.extend(words[i:i + max_words] for i in range(0, len(words), max_words))
    entries: list[list[str]] = []
    current: list[str] = []
    n_sentences = 0
    for words in pieces:
        if current and len(current) + len(words) > max_words:
            entries.append(current)
            current, n_sentences = [], 0
        current = current + words
        n_sentences += 1
        if n_sentences >= sentences_per_entry and len(current) >= min_words:
            entries.append(current)
            current, n_sentences = [], 0
    if current:
        if entries and len(current) < min_words and len(entries[-1]) + len(current) <= max_words:
            entries[-1] = entries[-1] + current
        else:
            entries.append(current)
    return [" ".join(words) for words in entries]


def essays_to_journal(df: pd.DataFrame, sentences_per_entry: int = 5, min_words: int = 20,
                      max_entries_per_author: int | None = None) -> list[dict]:
    """Records for every essay's entries, so an essay writer looks like a journal author with several entries."""
    missing = [c for c in ("author", "text") if c not in df.columns]
    if missing:
        raise ValueError(f"essays_to_journal needs columns {missing} (use load_essays)")
    records = []
    for author, text in zip(df["author"], df["text"]):
        entries = split_into_entries(text, sentences_per_entry, min_words)
        if max_entries_per_author is not None:
            entries = entries[:max_entries_per_author]
        records.extend({"id": f"{author}-{i:03d}", "author": author, "entry_index": i, "text": entry,
                        "source": "essays"} for i, entry in enumerate(entries))
    return records


# ---------------------------------------------------------------------------------------------- cleaning


def _detect_language(text: str) -> str | None:
    from langdetect import DetectorFactory, detect
    from langdetect.lang_detect_exception import LangDetectException

    DetectorFactory.seed = 0  # langdetect is randomised; a fixed seed makes the drop list reproducible
    try:
        return detect(text)
    except LangDetectException:
        return None


def clean_entries(records: list[dict], min_words: int = 20, lang: str | None = "en",
                  lang_min_words: int = 20) -> tuple[list[dict], Counter]:
    """Drop blank, too-short, duplicate and non-`lang` entries, counting each reason.

    Duplicates compare whitespace-normalised text and keep the first occurrence. Language detection runs
    only on texts of at least `lang_min_words` words, where langdetect is reliable; `lang=None` skips it.
    """
    kept: list[dict] = []
    dropped: Counter = Counter()
    seen_texts: set[str] = set()
    for rec in records:
        text = rec.get("text")
        if not isinstance(text, str):
            raise TypeError(f"record {rec.get('id')!r} has no string 'text' field")
        words = text.split()
        norm = " ".join(words)
        if not words:
            reason = "blank"
        elif len(words) < min_words:
            reason = "too_short"
        elif norm in seen_texts:
            reason = "duplicate"
        else:
            reason = None
            if lang is not None and len(words) >= lang_min_words:
                detected = _detect_language(text)
                if detected is None:  # no letters at all, e.g. "0, 0. 0, 0." after digit anonymisation
                    reason = "undetected_language"
                elif detected != lang:
                    reason = "non_english" if lang == "en" else f"not_{lang}"
        if reason is None:
            seen_texts.add(norm)
            kept.append(rec)
        else:
            dropped[reason] += 1
    if dropped:
        log.info("clean_entries kept %d of %d; dropped %s", len(kept), len(records), dict(dropped))
    return kept, dropped


def drop_single_entry_authors(records: list[dict], min_entries: int = 2) -> tuple[list[dict], Counter]:
    """Drop entries of authors with fewer than `min_entries` entries: one entry cannot be clustered."""
    counts = Counter(r["author"] for r in records)
    kept = [r for r in records if counts[r["author"]] >= min_entries]
    dropped: Counter = Counter()
    for r in records:
        if counts[r["author"]] < min_entries:
            dropped["single_entry_author" if counts[r["author"]] == 1 else "too_few_entries"] += 1
    return kept, dropped
