"""The Harry Potter film dialogue of the offline mirror, read once for the papers that personify its characters.

`load_hp_lines(folder)` reads `hp_movies_{Dialogue,Characters,Chapters,Movies}.csv` (the mirror's README gives their
schema) into one table of every line in film order with its speaker's information. DPG assesses the characters'
windows from it; PersLLM cuts it into five-turn segments by temporal stage.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

# The mirror's Harry Potter film-script tables (Kaggle "Harry Potter Movies Dataset"): file stem -> columns we read.
HP_FILES = {
    "Dialogue": ("Dialogue_ID", "Chapter_ID", "Character_ID", "Dialogue"),
    "Characters": ("Character_ID", "Character_Name", "Species", "Gender", "House"),
    "Chapters": ("Chapter_ID", "Movie_ID", "Movie_Chapter"),
    "Movies": ("Movie_ID",),
}
HP_COLUMNS = ["dialogue_id", "chapter_id", "movie", "position", "character", "species", "gender", "house", "text"]
INFO_FIELDS = ("house", "species", "gender")  # character information beside the name, in prompt order


def clean_text(text) -> str:
    """One text field: mojibake repaired, non-breaking and repeated whitespace collapsed.

    The mirror's Dialogue.csv is latin-1 but a few lines hold UTF-8 byte sequences (an en dash, a closing quote, an
    accented letter) that latin-1 decoding turns into "â\\x80\\x9d": where a field re-encodes to valid UTF-8 it is
    decoded as such; genuine latin-1 characters ("9&¾") fail that round trip and stay as they are.
    """
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = str(text)
    if any("\x80" <= ch <= "\xff" for ch in text):
        try:
            text = text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return " ".join(text.replace("\xa0", " ").split())


def _read_table(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A CSV of the mirror, as UTF-8 (a BOM allowed; Movies.csv has one) or else latin-1 (Dialogue, Characters and
    Chapters are), with the named columns checked."""
    if not path.is_file():
        raise FileNotFoundError(f"Harry Potter script table not found: {path}")
    try:
        df = pd.read_csv(path, encoding="utf-8-sig", dtype=str, keep_default_na=False)
    except UnicodeDecodeError:
        df = pd.read_csv(path, encoding="latin-1", dtype=str, keep_default_na=False)
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {list(df.columns)}")
    return df


def _int_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """A column of integer ids; a ValueError names the file, column and first bad value."""
    values = pd.to_numeric(df[column].str.strip(), errors="coerce")
    bad = values.isna() | (values != values.round())
    if bad.any():
        raise ValueError(f"{path}: column {column} has non-integer values, e.g. {df[column][bad].iloc[0]!r}")
    return values.astype(int)


def load_hp_lines(root: str | Path) -> pd.DataFrame:
    """Every dialogue line of the eight films, in film order, with its speaker's character information.

    `root` is the folder with hp_movies_{Dialogue,Characters,Chapters,Movies}.csv. Columns: dialogue_id, chapter_id,
    movie (1-8 in film order: by release year, then Movie_ID), position (1, 2, ... within the film, by chapter order
    and then dialogue id), character, species, gender, house (as the table gives them, "" where empty), text.
    Lines whose text is empty are dropped.
    """
    root = Path(root)
    tables, paths = {}, {}
    for stem, columns in HP_FILES.items():
        paths[stem] = root / f"hp_movies_{stem}.csv"
        tables[stem] = _read_table(paths[stem], columns)
    dialogue, characters, chapters, movies = (tables[s] for s in ("Dialogue", "Characters", "Chapters", "Movies"))

    for stem, df, key in (("Characters", characters, "Character_ID"), ("Chapters", chapters, "Chapter_ID"),
                          ("Movies", movies, "Movie_ID")):
        df[key] = _int_column(df, key, paths[stem])
        dup = df[key][df[key].duplicated()]
        if len(dup):
            raise ValueError(f"{paths[stem]}: {key} repeated: {sorted(set(dup))[:5]}")
    for column in ("Dialogue_ID", "Chapter_ID", "Character_ID"):
        dialogue[column] = _int_column(dialogue, column, paths["Dialogue"])
    chapters["Movie_ID"] = _int_column(chapters, "Movie_ID", paths["Chapters"])
    chapters["Movie_Chapter"] = _int_column(chapters, "Movie_Chapter", paths["Chapters"])

    if "Release_Year" in movies.columns:
        movies["_year"] = pd.to_numeric(movies["Release_Year"], errors="coerce")
        movies = movies.sort_values(["_year", "Movie_ID"], na_position="last")
    else:
        movies = movies.sort_values("Movie_ID")
    film_order = {mid: n for n, mid in enumerate(movies["Movie_ID"], start=1)}

    unknown = sorted(set(chapters["Movie_ID"]) - set(film_order))
    if unknown:
        raise ValueError(f"{paths['Chapters']}: Movie_ID {unknown[:5]} not in {paths['Movies']}")
    for column, table, stem in (("Chapter_ID", chapters, "Chapters"), ("Character_ID", characters, "Characters")):
        unknown = sorted(set(dialogue[column]) - set(table[column]))
        if unknown:
            raise ValueError(f"{paths['Dialogue']}: {column} {unknown[:5]} not in {paths[stem]}")

    people = characters.set_index("Character_ID")
    chapter = chapters.set_index("Chapter_ID")
    df = pd.DataFrame({
        "dialogue_id": dialogue["Dialogue_ID"],
        "chapter_id": dialogue["Chapter_ID"],
        "movie": dialogue["Chapter_ID"].map(chapter["Movie_ID"]).map(film_order),
        "_chapter_order": dialogue["Chapter_ID"].map(chapter["Movie_Chapter"]),
        "character": dialogue["Character_ID"].map(people["Character_Name"]).map(clean_text),
        **{f: dialogue["Character_ID"].map(people[f.capitalize()]).map(clean_text) for f in INFO_FIELDS},
        "text": dialogue["Dialogue"].map(clean_text),
    })
    empty = df["text"] == ""
    if empty.any():
        log.info("load_hp_lines: %d lines with empty text dropped", int(empty.sum()))
        df = df[~empty]
    df = df.sort_values(["movie", "_chapter_order", "dialogue_id"], kind="stable").reset_index(drop=True)
    df["position"] = df.groupby("movie").cumcount() + 1
    return df[HP_COLUMNS]
