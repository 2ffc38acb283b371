"""Labelled Big-Five corpora that several papers read: Essays and PANDORA, plus author pseudonyms.

- Essays (the `../shared/data` mirror, offline): one stream-of-consciousness essay per author with binary Big-Five
  labels. The trait classifier (03_classifier) trains on it on cpu/tiny; JIC's 01_scrape cuts it into journal-like
  entries on cpu/tiny; BIG5-CHAT's 01_scrape takes each trait's high and low texts for its experts.
- PANDORA (paper profile, Hugging Face Hub): Reddit comments with Big-Five scores, labelled high when a score > 40,
  as JIC's classifier.

Authors are replaced by salted hashes (`pseudonymise`) before anything is written.
"""
from __future__ import annotations

import hashlib
import html as _html
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from lib.traits import TRAITS

# ---------------------------------------------------------------------------------------------- pseudonyms


def pseudonymise(author: str, salt: str) -> str:
    """Replace a username by a salted hash so raw names never reach disk but one author stays one id."""
    if not salt:
        # An unsalted hash of a public username is reversible by hashing the subreddit's user list.
        raise ValueError("pseudonymise needs a non-empty salt (e.g. from the PSEUDONYM_SALT environment variable)")
    return "u_" + hashlib.sha256(f"{salt}\x00{author}".encode()).hexdigest()[:16]



# ---------------------------------------------------------------------------------------------- Essays

ESSAYS_LABELS = {"cOPN": "O", "cCON": "C", "cEXT": "E", "cAGR": "A", "cNEU": "N"}
ESSAYS_COLUMNS = ["split", "TEXT", *ESSAYS_LABELS]


def load_essays(path: str | Path, folds: Iterable[int], limit: int | None = None,
                salt: str = "essays") -> pd.DataFrame:
    """The Essays corpus rows in `folds` as columns author, text, O, C, E, A, N, fold (first `limit` rows)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Essays corpus not found: {path} (expected the mirror's essays/essays.csv)")
    df = pd.read_csv(path, encoding="utf-8")  # the mirror is UTF-8 (curly quotes, some Mac-Roman mojibake)
    missing = [c for c in ESSAYS_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(df.columns)}")
    folds = sorted({int(f) for f in folds})
    bad_folds = [f for f in folds if not 0 <= f <= 9]
    if bad_folds or not folds:
        raise ValueError(f"folds must be a non-empty subset of 0..9, got {folds}")
    for col in ESSAYS_LABELS:
        bad = df.index[~df[col].isin([0, 1])].tolist()
        if bad:
            raise ValueError(f"{path}: column {col} must be 0/1; bad rows {bad[:10]}")
    # The key uses the row index of the whole file, so an author's id does not depend on folds or limit.
    authors = [pseudonymise(f"essay-{i}", salt) for i in df.index]
    out = pd.DataFrame({"author": authors, "text": df["TEXT"].fillna("").astype(str)}, index=df.index)
    for src, dst in ESSAYS_LABELS.items():
        out[dst] = df[src].astype(int)
    out["fold"] = df["split"].astype(int)
    out = out[out["fold"].isin(folds)]
    if limit is not None:
        out = out.head(limit)
    return out


# --- PANDORA (paper profile) ----------------------------------------------------------------------------------------

PANDORA_ID = "Fatima0923/Automated-Personality-Prediction"
_TRAIT_PREFIXES = dict(zip(TRAITS, ("open", "consc", "extra", "agree", "neuro")))


def pandora_frame(df: pd.DataFrame, cutoff: float = 40.0, split: str = "") -> pd.DataFrame:
    """PANDORA rows as columns text, O, C, E, A, N (label = trait score > cutoff, as JIC's classifier)."""
    cols = {c.lower(): c for c in df.columns}
    text_col = next((cols[c] for c in ("body", "text", "comment", "post") if c in cols), None)
    traits = {}
    for trait, prefix in _TRAIT_PREFIXES.items():
        found = [c for low, c in cols.items() if low.startswith(prefix)]
        if len(found) != 1:
            traits = None
            break
        traits[trait] = found[0]
    if text_col is None or traits is None:
        raise ValueError(f"PANDORA {split or 'data'}: expected a text column (body/text/comment/post) and one score "
                         f"column per trait (openness…neuroticism); found {list(df.columns)}")
    out = pd.DataFrame({"text": df[text_col].astype(str)})
    for trait, col in traits.items():
        scores = pd.to_numeric(df[col], errors="coerce")
        if scores.isna().any():
            raise ValueError(f"PANDORA {split or 'data'}: column {col!r} has {int(scores.isna().sum())} non-numeric scores")
        out[trait] = (scores > cutoff).astype(int)
    return out[out.text.str.strip() != ""].reset_index(drop=True)


def load_pandora(path: str | Path, cutoff: float = 40.0, split: str = "") -> pd.DataFrame:
    """One split of the PANDORA subset (a CSV of the Hub dataset PANDORA_ID, fetched by lib.hub) as pandora_frame."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PANDORA {split or 'file'} not found: {path}")
    return pandora_frame(pd.read_csv(path), cutoff, split)


# --- FriendsPersona (offline mirror) ---------------------------------------------------------------------------------

FRIENDS_LABELS = {"cOPN": "O", "cCON": "C", "cEXT": "E", "cAGR": "A", "cNEU": "N"}
_FRIENDS_HEADER = re.compile(r"^<b>\s*(?P<scene>[^<]*?)\s+for\s+(?P<focus>[^<]+?)\s*</b>$")
_FRIENDS_LINE = re.compile(r"^<b>(?P<speaker>[^<]+)</b>:\s*(?P<text>.*)$", re.DOTALL)


def parse_friends_scene(html: str) -> tuple[str, list[dict]]:
    """(focus character, turns) of one FriendsPersona scene: `<b>sNN_eNN_cNN(k) for Name</b><br><br><b>Speaker</b>:
    line<br><br>(stage direction)...`; turns are {"speaker", "text"}, stage directions (lines without a speaker)
    are dropped. Raises ValueError when the header naming the focus character is missing."""
    parts = [p.strip() for p in re.split(r"(?:<br>\s*)+", html) if p.strip()]
    header = _FRIENDS_HEADER.match(parts[0]) if parts else None
    if not header:
        raise ValueError(f"scene does not start with '<b>... for <character></b>': {html[:120]!r}")
    turns = []
    for part in parts[1:]:
        m = _FRIENDS_LINE.match(part)
        if m:
            text = _html.unescape(re.sub(r"<[^>]+>", "", m["text"])).strip()
            if text:
                turns.append({"speaker": _html.unescape(m["speaker"]).strip(), "text": text})
    return header["focus"].strip(), turns


def load_friends_persona(path: str | Path) -> pd.DataFrame:
    """FriendsPersona scenes as columns scene_id, character (the focus character's full name), text (the focus
    character's own lines, joined), turns (every speaker's lines), O, C, E, A, N (0/1, the focus character's labels).
    Scenes where the focus character says nothing are dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FriendsPersona not found: {path} (expected the mirror's friends_persona/"
                                f"friends_personality.csv)")
    df = pd.read_csv(path, encoding="utf-8")
    missing = [c for c in ("scene_id", "text", *FRIENDS_LABELS) if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(df.columns)}")
    rows = []
    for i, r in df.iterrows():
        try:
            focus, turns = parse_friends_scene(str(r["text"]))
        except ValueError as e:
            raise ValueError(f"{path}, row {i} ({r['scene_id']}): {e}") from None
        own = [t["text"] for t in turns if t["speaker"] == focus]
        if own:
            rows.append({"scene_id": r["scene_id"], "character": focus, "text": " ".join(own), "turns": turns,
                         **{dst: int(r[src]) for src, dst in FRIENDS_LABELS.items()}})
    return pd.DataFrame(rows, columns=["scene_id", "character", "text", "turns", *TRAITS])
