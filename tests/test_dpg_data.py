"""DPG source data and training rows (lib.dpg.data, lib.dpg.rows): the Harry Potter script tables, character
windows, FriendsPersona samples, the personality prompt and the SFT rows."""
import math
from pathlib import Path

import pandas as pd
import pytest

from lib.dpg import data, rows

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"
PERSONA = (ROOT / "params/prompts/dpg_persona.txt").read_text()
VECTOR = {"O": 3, "C": -1, "E": 0, "A": 2.5, "N": -4.333}

# Film order differs from Movie_ID order (Movie_ID 2 came out first), and chapter 21 opens film 1 before chapter 20.
MOVIES = "Movie_ID,Movie_Title,Release_Year,Runtime\n1,Second Film,2003,150\n2,First Film,2001,140\n"
CHAPTERS = "Chapter_ID,Chapter_Name,Movie_ID,Movie_Chapter\n10,Back,1,1\n20,Platform,2,2\n21,Sorting,2,1\n"
CHARACTERS = ("Character_ID,Character_Name,Species,Gender,House,Patronus\n1,Harry Potter,Human,Male,Gryffindor,Stag\n"
              "2,Ron Weasley,Human,Male,unknown,unknown\n3,Sorting Hat,,,Unknown,mouse\n")
DIALOGUE = [(1, 21, 2, "Hi."), (2, 21, 1, "Hello Ron."), (3, 21, 3, "Hmm."), (4, 21, 3, "Difficult. Very difficult."),
            (5, 21, 1, "Not Slytherin."), (6, 21, 2, "Bloody hell."), (7, 20, 1, "Platform 9&\xbe?"),
            # a UTF-8 en dash inside the latin-1 file, as the mirror has: it must come back as "–"
            (8, 20, 2, "Ok\xe2\x80\x93 fine."), (9, 10, 1, "Back again.")]


def _write_hp(root: Path, characters: str = CHARACTERS, dialogue=DIALOGUE) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hp_movies_Movies.csv").write_text(MOVIES, encoding="utf-8-sig")
    (root / "hp_movies_Chapters.csv").write_text(CHAPTERS, encoding="latin-1")
    (root / "hp_movies_Characters.csv").write_text(characters, encoding="latin-1")
    body = "".join(f'{d},{c},8,{who},"{text}"\r\n' for d, c, who, text in dialogue)
    (root / "hp_movies_Dialogue.csv").write_bytes(
        ("Dialogue_ID,Chapter_ID,Place_ID,Character_ID,Dialogue\r\n" + body).encode("latin-1"))
    return root


@pytest.fixture
def hp_root(tmp_path) -> Path:
    return _write_hp(tmp_path / "characters")


def test_hp_lines_are_in_film_order_with_repaired_text(hp_root):
    lines = data.load_hp_lines(hp_root)
    assert list(lines.columns) == data.HP_COLUMNS
    assert lines["dialogue_id"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert lines["movie"].tolist() == [1] * 8 + [2]
    assert lines["position"].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 1]
    assert lines.loc[6, "text"] == "Platform 9&¾?"
    assert lines.loc[7, "text"] == "Ok– fine."
    assert lines.loc[0, ["character", "species", "gender", "house"]].tolist() == ["Ron Weasley", "Human", "Male",
                                                                                 "unknown"]


def test_hp_chapter_order_follows_movie_chapter_not_id(tmp_path):
    # chapter 20 lines get lower dialogue ids but chapter 21 comes first in the film
    dialogue = [(1, 20, 1, "Later."), (2, 21, 2, "Earlier.")]
    lines = data.load_hp_lines(_write_hp(tmp_path, dialogue=dialogue))
    assert lines["text"].tolist() == ["Earlier.", "Later."]
    assert lines["position"].tolist() == [1, 2]


def test_hp_missing_file_and_columns_are_named(tmp_path, hp_root):
    (hp_root / "hp_movies_Movies.csv").unlink()
    with pytest.raises(FileNotFoundError, match="hp_movies_Movies.csv"):
        data.load_hp_lines(hp_root)
    bad = _write_hp(tmp_path / "bad", characters="Character_ID,Character_Name,Species,Gender\n1,Harry Potter,H,M\n")
    with pytest.raises(ValueError, match=r"hp_movies_Characters.csv: missing columns \['House'\]"):
        data.load_hp_lines(bad)


def test_hp_unknown_speaker_is_an_error(tmp_path):
    root = _write_hp(tmp_path, dialogue=[(1, 21, 9, "Who am I?")])
    with pytest.raises(ValueError, match=r"Character_ID \[9\] not in .*hp_movies_Characters.csv"):
        data.load_hp_lines(root)


def test_hp_windows_ids_context_and_drops(hp_root):
    lines = data.load_hp_lines(hp_root)
    samples, stats = data.hp_windows(lines, None, min_lines=2, context_turns=1)
    assert [s["sample_id"] for s in samples] == ["hp:21:ron-weasley", "hp:21:harry-potter", "hp:21:sorting-hat"]
    # chapter 20 (Harry 1 line, Ron 1 line) and chapter 10 (Harry 1 line) fall below min_lines
    assert stats["dropped_min_lines"] == 3 and stats["windows"] == 3 and stats["characters"] == 3
    ron, harry, hat = samples
    # Ron speaks at 0 and 5 of 6 lines: with one turn of context either side, lines 0, 1, 4, 5
    assert ron["turns"] == [{"speaker": "Ron Weasley", "text": "Hi."},
                            {"speaker": "Harry Potter", "text": "Hello Ron."},
                            {"speaker": "Harry Potter", "text": "Not Slytherin."},
                            {"speaker": "Ron Weasley", "text": "Bloody hell."}]
    assert ron["lines"] == ["Hi.", "Bloody hell."]
    assert len(harry["turns"]) == 6 and [t["text"] for t in hat["turns"]] == [
        "Hello Ron.", "Hmm.", "Difficult. Very difficult.", "Not Slytherin."]
    assert ron["info"] == {"name": "Ron Weasley", "species": "Human", "gender": "Male"}  # house "unknown" dropped
    assert hat["info"] == {"name": "Sorting Hat"}  # NaN species and gender, "Unknown" house
    assert harry["info"]["house"] == "Gryffindor"
    assert all(s["source"] == "hp" and s["labels"] is None and s["window"] == 21 and s["movie"] == 1 for s in samples)


def test_hp_windows_are_stable_and_filter_characters(hp_root):
    lines = data.load_hp_lines(hp_root)
    shuffled = lines.sample(frac=1.0, random_state=3)
    a, _ = data.hp_windows(lines, ["Harry Potter"], min_lines=1, context_turns=0)
    b, _ = data.hp_windows(shuffled, ["Harry Potter"], min_lines=1, context_turns=0)
    assert a == b
    assert [s["sample_id"] for s in a] == ["hp:21:harry-potter", "hp:20:harry-potter", "hp:10:harry-potter"]
    assert a[0]["turns"] == [{"speaker": "Harry Potter", "text": "Hello Ron."},
                             {"speaker": "Harry Potter", "text": "Not Slytherin."}]  # no context: own lines only
    whole, _ = data.hp_windows(lines, ["Sorting Hat"], min_lines=1, context_turns=None)
    assert len(whole[0]["turns"]) == 6
    with pytest.raises(ValueError, match=r"characters \['Dobby'\] never speak"):
        data.hp_windows(lines, ["Dobby"], 1, 1)
    with pytest.raises(ValueError, match="min_lines"):
        data.hp_windows(lines, None, 0, 1)


@pytest.mark.skipif(not (MIRROR / "characters" / "hp_movies_Dialogue.csv").is_file(), reason="no offline mirror")
def test_real_hp_scripts():
    lines = data.load_hp_lines(MIRROR / "characters")
    assert sorted(lines["movie"].unique()) == list(range(1, 9))
    harry = lines[lines["character"] == "Harry Potter"]
    assert sorted(harry["movie"].unique()) == list(range(1, 9))
    assert not lines["text"].str.contains("\u00e2\u0080").any()  # no UTF-8 read as latin-1 left
    assert (lines.groupby("movie")["position"].apply(lambda p: p.tolist() == list(range(1, len(p) + 1)))).all()
    samples, stats = data.hp_windows(lines, ["Harry Potter", "Hermione Granger"], min_lines=3, context_turns=2)
    assert stats["windows"] == len(samples) > 100 and stats["dropped_min_lines"] > 0
    assert len({s["sample_id"] for s in samples}) == len(samples)
    harry = next(s for s in samples if s["character"] == "Harry Potter")
    assert harry["info"] == {"name": "Harry Potter", "house": "Gryffindor", "species": "Human", "gender": "Male"}


def test_friends_windows_keep_human_labels():
    df = pd.DataFrame([
        {"scene_id": "s01e01c01", "character": "Joey", "text": "a b",
         "turns": [{"speaker": "Ross", "text": "Hi."}, {"speaker": "Joey", "text": "a"},
                   {"speaker": "Joey", "text": "b"}], "O": 1, "C": 0, "E": 1, "A": 1, "N": 0},
        {"scene_id": "s01e01c02", "character": "Ross", "text": "c",
         "turns": [{"speaker": "Ross", "text": "c"}, {"speaker": "Joey", "text": "d"}],
         "O": 0, "C": 0, "E": 0, "A": 0, "N": 1},
    ])
    samples, stats = data.friends_windows(df, min_lines=2)
    assert stats == {"windows": 1, "dropped_min_lines": 1, "characters": 1}
    (s,) = samples
    assert s["sample_id"] == "friends:s01e01c01:joey:1" and s["source"] == "friends" and s["info"] == {"name": "Joey"}
    assert s["labels"] == {"O": 1, "C": 0, "E": 1, "A": 1, "N": 0} and s["lines"] == ["a", "b"]
    both = pd.concat([df, df.iloc[[0]].assign(character="Ross")], ignore_index=True)  # one scene, two focus characters
    assert len(data.friends_windows(both, min_lines=1)[0]) == 3
    parts = data.friends_windows(pd.concat([df, df.iloc[[0]]]), min_lines=1)[0]  # one scene in two labelled parts
    assert [s["sample_id"] for s in parts] == ["friends:s01e01c01:joey:1", "friends:s01e01c02:ross:1",
                                               "friends:s01e01c01:joey:2"]
    df.loc[1, "N"] = 2
    with pytest.raises(ValueError, match="label N is 2"):
        data.friends_windows(df, min_lines=1)


def test_personality_prompt_fills_scores_and_known_info():
    info = {"name": "Ron Weasley", "house": "Gryffindor", "species": "unknown"}
    text = rows.personality_prompt(VECTOR, info, "{name}|{info}|{O}{N}\n{scores}")
    assert text == ("Ron Weasley|Character information: House: Gryffindor.|+3-4.33\n"
                    "Openness: +3\nConscientiousness: -1\nExtraversion: 0\nAgreeableness: +2.5\nNeuroticism: -4.33")
    real = rows.personality_prompt(VECTOR, {"name": "Sorting Hat"}, PERSONA)
    assert real.startswith("You are Sorting Hat.\n") and "Agreeableness: +2.5" in real and "{" not in real


@pytest.mark.parametrize("change, message", [
    ({"N": None}, r"N = None is not a finite number"),
    ({"O": 6}, r"O = 6 is not a finite number in \[-5, 5\]"),
    ({"C": -5.5}, r"C = -5.5"),
    ({"E": math.nan}, r"E = nan"),
    ({"A": True}, r"A = True"),
    ({"A": "3"}, r"A = '3'"),
    ({"X": 1}, r"missing \[\], unexpected \['X'\]"),
])
def test_personality_vector_is_validated(change, message):
    vector = {**VECTOR, **change}
    with pytest.raises(ValueError, match=message):
        rows.personality_prompt(vector, {"name": "Ron"}, PERSONA)


def test_personality_prompt_rejects_missing_keys_unknown_fields_and_names():
    with pytest.raises(ValueError, match=r"missing \['N'\]"):
        rows.personality_prompt({t: 0 for t in "OCEA"}, {"name": "Ron"}, PERSONA)
    with pytest.raises(ValueError, match=r"unknown placeholders \['mood'\]"):
        rows.personality_prompt(VECTOR, {"name": "Ron"}, "{name} {mood}")
    with pytest.raises(ValueError, match="no name"):
        rows.personality_prompt(VECTOR, {"house": "Gryffindor"}, PERSONA)


def test_reply_rows_one_per_reply_to_someone_else():
    def turn(speaker, text):
        return {"speaker": speaker, "text": text}

    sample = {"sample_id": "hp:1:harry-potter", "character": "Harry Potter", "info": {"name": "Harry Potter"},
              "turns": [turn("Harry Potter", "h0"), turn("Ron Weasley", "r1"), turn("Harry Potter", "h2"),
                        turn("Harry Potter", "h3"), turn("Ron Weasley", "r4"), turn("Hermione Granger", "m5"),
                        turn("Harry Potter", "h6")]}
    other = {**sample, "sample_id": "hp:2:harry-potter"}
    got, stats = rows.reply_rows([sample, other], {"hp:1:harry-potter": VECTOR}, PERSONA, context_turns=2)
    assert stats == {"rows": 2, "no_preceding_turn": 2, "samples_without_vector": 1}
    system = rows.personality_prompt(VECTOR, sample["info"], PERSONA)
    assert got[0] == {"prompt": [{"role": "system", "content": system},
                                 {"role": "user", "content": "Harry Potter: h0\nRon Weasley: r1"}],
                      "completion": [{"role": "assistant", "content": "h2"}], "sample_id": "hp:1:harry-potter",
                      "turn": 2}
    assert got[1]["prompt"][1]["content"] == "Ron Weasley: r4\nHermione Granger: m5"
    assert got[1]["completion"][0]["content"] == "h6"
    one, _ = rows.reply_rows([sample], {"hp:1:harry-potter": VECTOR}, PERSONA, context_turns=1)
    assert one[1]["prompt"][1]["content"] == "Hermione Granger: m5"


def test_training_rows_split_and_cap_each_split_with_a_seeded_sample():
    """08_sft_dpg and 10_hypernet_dpg call this one function: the same rows for the baseline and the hypernetwork."""
    def sample(k, split):
        return {"sample_id": f"hp:{k}:harry-potter", "character": "Harry Potter", "info": {"name": "Harry Potter"},
                "split": split, "turns": [{"speaker": "Ron Weasley", "text": f"r{k}"},
                                          {"speaker": "Harry Potter", "text": f"h{k}"}]}

    samples = [sample(k, "train" if k < 6 else "heldout") for k in range(8)]
    vectors = {s["sample_id"]: VECTOR for s in samples}
    sft = {"context_turns": 1, "max_rows": 4, "seed": 0}
    split_rows, stats = rows.training_rows(samples, vectors, PERSONA, sft)
    assert len(split_rows["train"]) == 4 and len(split_rows["heldout"]) == 2 and stats["train"]["rows"] == 6
    assert {r["sample_id"] for r in split_rows["heldout"]} == {"hp:6:harry-potter", "hp:7:harry-potter"}
    assert split_rows == rows.training_rows(samples, vectors, PERSONA, sft)[0]  # seeded: the same rows every call
    other = rows.training_rows(samples, vectors, PERSONA, {**sft, "seed": 1})[0]["train"]
    assert {r["sample_id"] for r in other} != {r["sample_id"] for r in split_rows["train"]}
    uncapped = rows.training_rows(samples, vectors, PERSONA, {**sft, "max_rows": None})[0]
    assert len(uncapped["train"]) == 6


def _named(counts: dict[str, int]) -> list[dict]:
    return [{"sample_id": f"{c}:{i}", "character": c} for c, n in counts.items() for i in range(n)]


def test_select_windows_keeps_the_most_frequent_characters_and_caps_each():
    samples = _named({"Harry": 5, "Ron": 3, "Dobby": 1, "Hermione": 3})
    picked = data.select_windows(samples, max_characters=2, max_per_character=2, seed=0)
    assert sorted({s["character"] for s in picked}) == ["Harry", "Hermione"]  # Hermione beats Ron on the name tie
    assert [s["character"] for s in picked].count("Harry") == 2
    harry = [int(s["sample_id"].split(":")[1]) for s in picked if s["character"] == "Harry"]
    assert harry == sorted(harry)  # script order kept
    assert picked == data.select_windows(samples, 2, 2, seed=0)
    assert len(data.select_windows(samples, None, None)) == 12


def test_heldout_characters_leave_one_for_training():
    samples = _named({"Harry": 2, "Ron": 1, "Hermione": 1})
    held = data.heldout_characters(samples, 2, seed=0)
    assert len(held) == 2 and set(held) < {"Harry", "Ron", "Hermione"}
    assert data.heldout_characters(samples, 0) == []
    with pytest.raises(ValueError, match="at least one must stay"):
        data.heldout_characters(samples, 3)


def test_heldout_characters_come_from_those_with_enough_windows():
    samples = _named({"Harry": 9, "Ron": 8, "Hermione": 1, "Neville": 2, "Luna": 3})
    for seed in range(5):
        held = data.heldout_characters(samples, 2, seed=seed, min_windows=8)
        assert held == ["Harry", "Ron"]  # the only two with >= 8 windows, whatever the seed
    assert len({data.heldout_characters(samples, 1, seed=s, min_windows=2)[0] for s in range(20)}) > 1
    with pytest.raises(ValueError, match=r"only 1 have that many \(Harry\)"):
        data.heldout_characters(samples, 2, min_windows=9)
