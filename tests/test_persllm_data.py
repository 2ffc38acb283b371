"""PersLLM's source material (lib/persllm/data.py) and the shared film tables (lib/films.py): stages, character lines,
five-turn segments, sources, speeches, and the split and items of 05_label."""
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from lib import films
from lib.persllm import data
from lib.records import split_of

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "characters"

RAW_STAGES = [{"name": "early", "token": "<TIME-I>", "films": [1, 2], "time": "the first films", "init": "early years"},
              {"name": "late", "token": "<TIME-II>", "films": [3], "time": "the last film"}]
STAGES = data.check_stages(RAW_STAGES)
CHARACTERS = {"harry": "Harry Potter", "ron": "Ron Weasley", "petunia": "Petunia Dursley"}


def _raw_lines(rows) -> pd.DataFrame:
    """A film-lines table with the columns character_lines reads: rows of (movie, chapter_id, character, text)."""
    return pd.DataFrame(rows, columns=["movie", "chapter_id", "character", "text"])


def _labelled(rows, characters=CHARACTERS, stages=STAGES) -> pd.DataFrame:
    return data.character_lines(_raw_lines(rows), characters, stages)


def _chapter(movie, chapter, speakers, tag=""):
    return [(movie, chapter, who, f"{tag}line {i} of m{movie}c{chapter}") for i, who in enumerate(speakers)]


# --------------------------------------------------------------------------------------------- lib/films.py

def test_clean_text_repairs_mojibake_keeps_latin1_and_collapses_space():
    assert films.clean_text("Ok\xe2\x80\x93 fine.") == "Ok\u2013 fine."  # UTF-8 bytes read as latin-1
    assert films.clean_text("Platform 9&\xbe?") == "Platform 9&\xbe?"  # a genuine latin-1 character stays
    assert films.clean_text("  a\xa0\xa0b \n c ") == "a b c"
    assert films.clean_text(None) == "" and films.clean_text(float("nan")) == ""
    assert films.clean_text(12) == "12"


def _write_tables(root: Path, dialogue, characters="1,Harry Potter,Human,Male,Gryffindor\n2,Ron Weasley,Human,Male,"
                  "Gryffindor\n3,Petunia Dursley,Human,Female,\n4,Vernon Dursley,Human,Male,\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hp_movies_Movies.csv").write_text("Movie_ID,Movie_Title,Release_Year\n1,One,2001\n2,Two,2002\n"
                                               "3,Three,2004\n", encoding="utf-8-sig")
    (root / "hp_movies_Chapters.csv").write_text("Chapter_ID,Movie_ID,Movie_Chapter\n1,1,1\n2,2,1\n3,3,1\n",
                                                 encoding="latin-1")
    (root / "hp_movies_Characters.csv").write_text("Character_ID,Character_Name,Species,Gender,House\n" + characters,
                                                   encoding="latin-1")
    rows = "".join(f'{d},{c},{who},"{text}"\n' for d, c, who, text in dialogue)
    (root / "hp_movies_Dialogue.csv").write_text("Dialogue_ID,Chapter_ID,Character_ID,Dialogue\n" + rows,
                                                 encoding="latin-1")
    return root


def test_load_material_reads_the_tables_and_labels_key_and_stage(tmp_path):
    dialogue = [(1, 1, 1, "Hello."), (2, 1, 2, "Hi."), (3, 1, 3, ""), (4, 2, 4, "Boy!"), (5, 3, 1, "Later."),
                (6, 3, 2, "Much later.")]
    root = _write_tables(tmp_path / "hp", dialogue)
    lines = films.load_hp_lines(root)
    assert list(lines.columns) == films.HP_COLUMNS
    assert lines["text"].tolist() == ["Hello.", "Hi.", "Boy!", "Later.", "Much later."]  # the empty line dropped
    labelled = data.load_material(root, {"harry": "Harry Potter", "ron": "Ron Weasley"}, STAGES)
    assert labelled["key"].tolist() == ["harry", "ron", "", "harry", "ron"]
    assert labelled["stage"].tolist() == ["early", "early", "early", "late", "late"]


def test_load_hp_lines_names_bad_ids(tmp_path):
    root = _write_tables(tmp_path / "hp", [(1, 1, 1, "Hello."), ("x", 1, 2, "Hi.")])
    with pytest.raises(ValueError, match=r"hp_movies_Dialogue.csv: column Dialogue_ID has non-integer values.*'x'"):
        films.load_hp_lines(root)
    root = _write_tables(tmp_path / "dup", [(1, 1, 1, "Hello.")],
                         characters="1,Harry Potter,Human,Male,G\n1,Ron Weasley,Human,Male,G\n")
    with pytest.raises(ValueError, match=r"Character_ID repeated: \[1\]"):
        films.load_hp_lines(root)


@pytest.mark.skipif(not (MIRROR / "hp_movies_Dialogue.csv").is_file(), reason="no offline mirror")
def test_the_mirror_has_every_paper_character_in_both_stages():
    characters = {"harry": "Harry Potter", "hermione": "Hermione Granger", "ron": "Ron Weasley",
                  "dumbledore": "Albus Dumbledore", "voldemort": "Voldemort", "petunia": "Petunia Dursley"}
    stages = data.check_stages([{"name": "early", "token": "<TIME-I>", "films": [1, 2, 3, 4], "time": "a"},
                                {"name": "late", "token": "<TIME-II>", "films": [5, 6, 7, 8], "time": "b"}])
    lines = data.load_material(MIRROR, characters, stages)
    assert set(lines["movie"]) == set(range(1, 9)) and set(lines["stage"]) == {"early", "late"}
    cells = lines[lines["key"] != ""].groupby(["key", "stage"]).size()
    assert len(cells) == 12 and (cells > 0).all()
    sources, report = data.character_sources(data.segments(lines), characters, stages, max_per_stage=3)
    assert report["empty_cells"] == [] and len(sources) == 36
    assert all(len(s["turns"]) <= 5 for s in sources)


# --------------------------------------------------------------------------------------------- stages

def test_check_stages_normalises_and_defaults_init():
    out = data.check_stages([{"name": "a", "token": "<A-1>", "films": ["1", 2], "time": "t"}])
    assert out == [{"name": "a", "token": "<A-1>", "films": [1, 2], "time": "t", "init": "a"}]
    assert STAGES[0]["init"] == "early years" and STAGES[1]["init"] == "late"


def test_check_stages_rejects_bad_profiles():
    with pytest.raises(ValueError, match="empty"):
        data.check_stages([])
    with pytest.raises(ValueError, match=r"stages\[1\] lacks \['time'\]"):
        data.check_stages([RAW_STAGES[0], {"name": "late", "token": "<TIME-II>", "films": [3]}])
    for token in ("TIME-I", "<time-i>", "<TIME I>", "<>", "<1TIME>"):
        with pytest.raises(ValueError, match="is not of the form"):
            data.check_stages([dict(RAW_STAGES[0], token=token)])
    with pytest.raises(ValueError, match="film 2 is in stages 'early' and 'late'"):
        data.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], films=[2, 3])])
    with pytest.raises(ValueError, match="repeated name"):
        data.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], name="early")])
    with pytest.raises(ValueError, match="repeated token"):
        data.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], token="<TIME-I>")])


def test_check_stages_sees_a_film_given_as_text_and_number_as_one_film():
    with pytest.raises(ValueError, match="film 2 is in stages"):
        data.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], films=["2", 3])])


def test_character_lines_names_a_missing_character():
    with pytest.raises(ValueError, match=r"\['Neville Longbottom'\] speak no line"):
        _labelled(_chapter(1, 1, ["Harry Potter", "Ron Weasley", "Petunia Dursley"]),
                  characters={**CHARACTERS, "neville": "Neville Longbottom"})


def test_character_lines_assigns_key_and_stage_by_film():
    rows = (_chapter(1, 1, ["Harry Potter", "Vernon Dursley"]) + _chapter(3, 9, ["Ron Weasley", "Petunia Dursley"])
            + _chapter(4, 12, ["Harry Potter"]))
    raw = _raw_lines(rows)
    out = data.character_lines(raw, CHARACTERS, STAGES)
    assert out["key"].tolist() == ["harry", "", "ron", "petunia", "harry"]
    assert out["stage"].tolist() == ["early", "early", "late", "late", ""]  # film 4 is in no stage
    assert "key" not in raw.columns  # the input is not modified


def test_segments_cut_five_turn_pieces_per_chapter_and_drop_a_single_line():
    rows = (_chapter(1, 1, ["Harry Potter"] * 11)  # 5 + 5 + 1: the lone last line is dropped
            + _chapter(1, 2, ["Ron Weasley"] * 7)  # 5 + 2: a two-line remainder is kept
            + _chapter(3, 5, ["Petunia Dursley"]))  # a one-line chapter gives nothing
    segs = data.segments(_labelled(rows))
    assert [(s["movie"], s["chapter_id"], s["part"], len(s["turns"])) for s in segs] == [
        (1, 1, 0, 5), (1, 1, 1, 5), (1, 2, 0, 5), (1, 2, 1, 2)]
    assert [t["text"] for t in segs[1]["turns"]] == [f"line {i} of m1c1" for i in range(5, 10)]
    assert segs[0]["turns"][0] == {"speaker": "Harry Potter", "key": "harry", "text": "line 0 of m1c1"}
    assert all(s["stage"] == "early" for s in segs)
    assert [len(s["turns"]) for s in data.segments(_labelled(rows), turns=2)] == [2] * 5 + [2] * 3
    with pytest.raises(ValueError, match="segment_turns must be >= 2"):
        data.segments(_labelled(rows), turns=1)


def test_segments_never_mix_chapters_and_carry_the_stage():
    rows = _chapter(1, 1, ["Harry Potter"] * 3) + _chapter(3, 2, ["Ron Weasley"] * 3)
    segs = data.segments(_labelled(rows, characters={"harry": "Harry Potter", "ron": "Ron Weasley"}))
    assert [(s["chapter_id"], s["stage"], len(s["turns"])) for s in segs] == [(1, "early", 3), (2, "late", 3)]
    assert data.render_segment(segs[1]["turns"]) == "\n".join(f"Ron Weasley: line {i} of m3c2" for i in range(3))


# --------------------------------------------------------------------------------------------- sources

def _segs():
    """Ten early chapters with Harry (and Ron in the even ones), two late ones with Harry; Petunia early only."""
    rows = []
    for ch in range(10):
        rows += _chapter(1 + ch % 2, ch, ["Harry Potter", "Ron Weasley" if ch % 2 == 0 else "Vernon Dursley",
                                          "Harry Potter"])
    rows += _chapter(3, 20, ["Harry Potter", "Ron Weasley"]) + _chapter(3, 21, ["Vernon Dursley", "Harry Potter"])
    rows += _chapter(2, 30, ["Petunia Dursley", "Vernon Dursley"])
    return data.segments(_labelled(rows))


def test_character_sources_sample_is_seeded_capped_and_sorted():
    segs = _segs()
    a, report = data.character_sources(segs, CHARACTERS, STAGES, max_per_stage=3, seed=0)
    b, _ = data.character_sources(segs, CHARACTERS, STAGES, max_per_stage=3, seed=0)
    assert a == b
    harry_early = [s for s in a if s["character"] == "harry" and s["stage"] == "early"]
    assert len(harry_early) == 3 and report["cells"]["harry/early"] == 3
    assert harry_early == sorted(harry_early, key=lambda s: (s["movie"], s["id"]))
    picks = {tuple(s["id"] for s in data.character_sources(segs, CHARACTERS, STAGES, 3, seed=k)[0]
                   if s["character"] == "harry" and s["stage"] == "early") for k in range(6)}
    assert len(picks) > 1  # the seed matters
    everything, report_all = data.character_sources(segs, CHARACTERS, STAGES, max_per_stage=None)
    assert report_all["cells"]["harry/early"] == 10 and report_all["cells"]["ron/early"] == 5
    assert len({s["id"] for s in everything}) == len(everything)


def test_character_sources_fields_and_min_own_turns():
    harry = {"harry": "Harry Potter"}
    sources, report = data.character_sources(_segs(), harry, STAGES, max_per_stage=None, min_own_turns=2)
    assert report["cells"]["harry/early"] == 10 and report["cells"]["harry/late"] == 0  # one own line per late chapter
    assert "harry/late" in report["empty_cells"]
    src = next(s for s in sources if s["character"] == "harry")
    assert src["id"] == "harry-early-m1c0p0" and src["name"] == "Harry Potter" and src["kind"] == "dialogue"
    assert src["text"] == data.render_segment(src["turns"]) and src["movie"] == 1


def test_character_sources_count_an_empty_cell_and_fail_a_character_without_any():
    lines = pd.DataFrame({"movie": [1, 1, 1, 3, 3], "chapter_id": [1, 1, 1, 2, 2],
                          "character": ["Harry Potter", "Petunia Dursley", "Harry Potter", "Harry Potter",
                                        "Ron Weasley"],
                          "text": ["a", "b", "c", "d", "e"], "key": ["harry", "petunia", "harry", "harry", "ron"],
                          "stage": ["early", "early", "early", "late", "late"]})
    segs = data.segments(lines)
    sources, report = data.character_sources(segs, CHARACTERS, STAGES, max_per_stage=None)
    assert report["cells"] == {"harry/early": 1, "harry/late": 1, "ron/early": 0, "ron/late": 1, "petunia/early": 1,
                               "petunia/late": 0}
    assert report["empty_cells"] == ["ron/early", "petunia/late"]
    assert Counter((s["character"], s["stage"]) for s in sources) == {
        ("harry", "early"): 1, ("harry", "late"): 1, ("ron", "late"): 1, ("petunia", "early"): 1}
    with pytest.raises(ValueError, match=r"character vernon \(Vernon Dursley\) has no segment"):
        data.character_sources(segs, {**CHARACTERS, "vernon": "Vernon Dursley"}, STAGES, max_per_stage=None)


def test_knowledge_sources_are_checked_and_numbered_per_cell():
    rows = [{"character": "harry", "stage": "early", "text": " Lives under the stairs. "},
            {"character": "harry", "stage": "early", "text": "Goes to Hogwarts."},
            {"character": "ron", "stage": "late", "text": "Has a rat."}]
    out = data.knowledge_sources(rows, CHARACTERS, STAGES)
    assert [s["id"] for s in out] == ["harry-early-k1", "harry-early-k2", "ron-late-k1"]
    assert out[0]["text"] == "Lives under the stairs." and out[0]["kind"] == "knowledge" and out[0]["turns"] == []
    assert out[2]["name"] == "Ron Weasley" and out[2]["movie"] is None
    with pytest.raises(ValueError, match=r"row 0: character 'draco'"):
        data.knowledge_sources([{"character": "draco", "stage": "early", "text": "x"}], CHARACTERS, STAGES)
    with pytest.raises(ValueError, match=r"row 1: stage 'middle'"):
        data.knowledge_sources([rows[0], {"character": "ron", "stage": "middle", "text": "x"}], CHARACTERS, STAGES)
    for text in ("", "   ", None):
        with pytest.raises(ValueError, match="row 0: empty text"):
            data.knowledge_sources([{"character": "ron", "stage": "late", "text": text}], CHARACTERS, STAGES)


def test_speeches_are_own_lines_with_a_stage():
    rows = (_chapter(1, 1, ["Harry Potter", "Vernon Dursley"]) + _chapter(3, 2, ["Ron Weasley"])
            + _chapter(4, 3, ["Harry Potter"]))
    out = data.speeches(_labelled(rows, characters={"harry": "Harry Potter", "ron": "Ron Weasley"}))
    assert out == [{"character": "harry", "stage": "early", "movie": 1, "text": "line 0 of m1c1"},
                   {"character": "ron", "stage": "late", "movie": 3, "text": "line 0 of m3c2"}]


# --------------------------------------------------------------------------------------------- split and items

def test_split_inputs_is_seeded_and_by_id():
    ids = [f"in{i}" for i in range(400)]
    split = data.split_inputs(ids, 0.2, seed=0)
    assert split == data.split_inputs(list(reversed(ids)), 0.2, seed=0)  # by id, not position
    assert all(split[i] == split_of(i, 0.2, 0) for i in ids)
    assert 0.12 < Counter(split.values())["test"] / len(ids) < 0.28
    assert split != data.split_inputs(ids, 0.2, seed=1)
    assert set(data.split_inputs(ids, 0.0, seed=0).values()) == {"train"}


INPUT = {"id": "h1", "character": "harry", "name": "Harry Potter", "stage": "early", "type": "question",
         "text": "Why?", "source": "s1"}


def _answer(input_id, stage, tag):
    return {"id": f"{input_id}@{stage}", "input_id": input_id, "stage": stage, "character": "harry",
            "analysis": f"a-{tag}", "response": f"r-{tag}", "text": f"[Analysis] a-{tag} [Response] r-{tag}"}


def test_build_items_keep_the_kept_inputs_with_an_own_stage_answer():
    inputs = [dict(INPUT, id=i, stage=st) for i, st in (("a", "early"), ("b", "early"), ("c", "early"),
                                                         ("d", "late"))]
    answers = [_answer("a", "early", 1), _answer("a", "late", 2), _answer("b", "late", 3),  # b: own answer rejected
               _answer("c", "early", 4), _answer("d", "late", 5)]
    split = {"a": "train", "b": "train", "c": "test", "d": "test"}
    items = data.build_items(inputs, answers, kept=["a", "b", "d"], split=split)
    assert [it["id"] for it in items] == ["a", "d"]
    a = items[0]
    assert a["answers"] == {"early": {"analysis": "a-1", "response": "r-1", "text": "[Analysis] a-1 [Response] r-1"},
                            "late": {"analysis": "a-2", "response": "r-2", "text": "[Analysis] a-2 [Response] r-2"}}
    assert (a["split"], a["input"], a["source"], a["stance"], a["type"]) == ("train", "Why?", "s1", None, "question")
    assert list(items[1]["answers"]) == ["late"] and items[1]["split"] == "test"
    summary = data.item_summary(items)
    assert summary.to_dict("records") == [
        {"character": "harry", "stage": "early", "split": "train", "items": 1, "both_stages": 1},
        {"character": "harry", "stage": "late", "split": "test", "items": 1, "both_stages": 0}]
    assert list(data.item_summary([]).columns) == ["character", "stage", "split", "items", "both_stages"]

