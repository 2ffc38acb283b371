"""PersLLM data logic (lib/persllm/__init__.py) and the shared film tables (lib/films.py): stages, character lines,
five-turn segments, sources, inputs, answers, retrieval material, dedup, split and items."""
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import films, persllm
from lib.records import split_of
from lib.teacher import InvalidReply

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "characters"
ANSWER_TEMPLATE = (ROOT / "params/prompts/persllm_answer.txt").read_text()
QUESTION_TEMPLATE = (ROOT / "params/prompts/persllm_input_question.txt").read_text()
THOUGHT_TEMPLATE = (ROOT / "params/prompts/persllm_input_thought.txt").read_text()

RAW_STAGES = [{"name": "early", "token": "<TIME-I>", "films": [1, 2], "time": "the first films", "init": "early years"},
              {"name": "late", "token": "<TIME-II>", "films": [3], "time": "the last film"}]
STAGES = persllm.check_stages(RAW_STAGES)
CHARACTERS = {"harry": "Harry Potter", "ron": "Ron Weasley", "petunia": "Petunia Dursley"}


def _raw_lines(rows) -> pd.DataFrame:
    """A film-lines table with the columns character_lines reads: rows of (movie, chapter_id, character, text)."""
    return pd.DataFrame(rows, columns=["movie", "chapter_id", "character", "text"])


def _labelled(rows, characters=CHARACTERS, stages=STAGES) -> pd.DataFrame:
    return persllm.character_lines(_raw_lines(rows), characters, stages)


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
    labelled = persllm.load_material(root, {"harry": "Harry Potter", "ron": "Ron Weasley"}, STAGES)
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
    stages = persllm.check_stages([{"name": "early", "token": "<TIME-I>", "films": [1, 2, 3, 4], "time": "a"},
                                   {"name": "late", "token": "<TIME-II>", "films": [5, 6, 7, 8], "time": "b"}])
    lines = persllm.load_material(MIRROR, characters, stages)
    assert set(lines["movie"]) == set(range(1, 9)) and set(lines["stage"]) == {"early", "late"}
    cells = lines[lines["key"] != ""].groupby(["key", "stage"]).size()
    assert len(cells) == 12 and (cells > 0).all()
    sources, report = persllm.character_sources(persllm.segments(lines), characters, stages, max_per_stage=3)
    assert report["empty_cells"] == [] and len(sources) == 36
    assert all(len(s["turns"]) <= 5 for s in sources)


# --------------------------------------------------------------------------------------------- stages

def test_check_stages_normalises_and_defaults_init():
    out = persllm.check_stages([{"name": "a", "token": "<A-1>", "films": ["1", 2], "time": "t"}])
    assert out == [{"name": "a", "token": "<A-1>", "films": [1, 2], "time": "t", "init": "a"}]
    assert STAGES[0]["init"] == "early years" and STAGES[1]["init"] == "late"


def test_check_stages_rejects_bad_profiles():
    with pytest.raises(ValueError, match="empty"):
        persllm.check_stages([])
    with pytest.raises(ValueError, match=r"stages\[1\] lacks \['time'\]"):
        persllm.check_stages([RAW_STAGES[0], {"name": "late", "token": "<TIME-II>", "films": [3]}])
    for token in ("TIME-I", "<time-i>", "<TIME I>", "<>", "<1TIME>"):
        with pytest.raises(ValueError, match="is not of the form"):
            persllm.check_stages([dict(RAW_STAGES[0], token=token)])
    with pytest.raises(ValueError, match="film 2 is in stages 'early' and 'late'"):
        persllm.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], films=[2, 3])])
    with pytest.raises(ValueError, match="repeated name"):
        persllm.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], name="early")])
    with pytest.raises(ValueError, match="repeated token"):
        persllm.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], token="<TIME-I>")])


def test_check_stages_sees_a_film_given_as_text_and_number_as_one_film():
    with pytest.raises(ValueError, match="film 2 is in stages"):
        persllm.check_stages([RAW_STAGES[0], dict(RAW_STAGES[1], films=["2", 3])])


def test_character_lines_names_a_missing_character():
    with pytest.raises(ValueError, match=r"\['Neville Longbottom'\] speak no line"):
        _labelled(_chapter(1, 1, ["Harry Potter", "Ron Weasley", "Petunia Dursley"]),
                  characters={**CHARACTERS, "neville": "Neville Longbottom"})


def test_character_lines_assigns_key_and_stage_by_film():
    rows = (_chapter(1, 1, ["Harry Potter", "Vernon Dursley"]) + _chapter(3, 9, ["Ron Weasley", "Petunia Dursley"])
            + _chapter(4, 12, ["Harry Potter"]))
    raw = _raw_lines(rows)
    out = persllm.character_lines(raw, CHARACTERS, STAGES)
    assert out["key"].tolist() == ["harry", "", "ron", "petunia", "harry"]
    assert out["stage"].tolist() == ["early", "early", "late", "late", ""]  # film 4 is in no stage
    assert "key" not in raw.columns  # the input is not modified


def test_segments_cut_five_turn_pieces_per_chapter_and_drop_a_single_line():
    rows = (_chapter(1, 1, ["Harry Potter"] * 11)  # 5 + 5 + 1: the lone last line is dropped
            + _chapter(1, 2, ["Ron Weasley"] * 7)  # 5 + 2: a two-line remainder is kept
            + _chapter(3, 5, ["Petunia Dursley"]))  # a one-line chapter gives nothing
    segs = persllm.segments(_labelled(rows))
    assert [(s["movie"], s["chapter_id"], s["part"], len(s["turns"])) for s in segs] == [
        (1, 1, 0, 5), (1, 1, 1, 5), (1, 2, 0, 5), (1, 2, 1, 2)]
    assert [t["text"] for t in segs[1]["turns"]] == [f"line {i} of m1c1" for i in range(5, 10)]
    assert segs[0]["turns"][0] == {"speaker": "Harry Potter", "key": "harry", "text": "line 0 of m1c1"}
    assert all(s["stage"] == "early" for s in segs)
    assert [len(s["turns"]) for s in persllm.segments(_labelled(rows), turns=2)] == [2] * 5 + [2] * 3
    with pytest.raises(ValueError, match="segment_turns must be >= 2"):
        persllm.segments(_labelled(rows), turns=1)


def test_segments_never_mix_chapters_and_carry_the_stage():
    rows = _chapter(1, 1, ["Harry Potter"] * 3) + _chapter(3, 2, ["Ron Weasley"] * 3)
    segs = persllm.segments(_labelled(rows, characters={"harry": "Harry Potter", "ron": "Ron Weasley"}))
    assert [(s["chapter_id"], s["stage"], len(s["turns"])) for s in segs] == [(1, "early", 3), (2, "late", 3)]
    assert persllm.render_segment(segs[1]["turns"]) == "\n".join(f"Ron Weasley: line {i} of m3c2" for i in range(3))


# --------------------------------------------------------------------------------------------- sources

def _segs():
    """Ten early chapters with Harry (and Ron in the even ones), two late ones with Harry; Petunia early only."""
    rows = []
    for ch in range(10):
        rows += _chapter(1 + ch % 2, ch, ["Harry Potter", "Ron Weasley" if ch % 2 == 0 else "Vernon Dursley",
                                          "Harry Potter"])
    rows += _chapter(3, 20, ["Harry Potter", "Ron Weasley"]) + _chapter(3, 21, ["Vernon Dursley", "Harry Potter"])
    rows += _chapter(2, 30, ["Petunia Dursley", "Vernon Dursley"])
    return persllm.segments(_labelled(rows))


def test_character_sources_sample_is_seeded_capped_and_sorted():
    segs = _segs()
    a, report = persllm.character_sources(segs, CHARACTERS, STAGES, max_per_stage=3, seed=0)
    b, _ = persllm.character_sources(segs, CHARACTERS, STAGES, max_per_stage=3, seed=0)
    assert a == b
    harry_early = [s for s in a if s["character"] == "harry" and s["stage"] == "early"]
    assert len(harry_early) == 3 and report["cells"]["harry/early"] == 3
    assert harry_early == sorted(harry_early, key=lambda s: (s["movie"], s["id"]))
    picks = {tuple(s["id"] for s in persllm.character_sources(segs, CHARACTERS, STAGES, 3, seed=k)[0]
                   if s["character"] == "harry" and s["stage"] == "early") for k in range(6)}
    assert len(picks) > 1  # the seed matters
    everything, report_all = persllm.character_sources(segs, CHARACTERS, STAGES, max_per_stage=None)
    assert report_all["cells"]["harry/early"] == 10 and report_all["cells"]["ron/early"] == 5
    assert len({s["id"] for s in everything}) == len(everything)


def test_character_sources_fields_and_min_own_turns():
    harry = {"harry": "Harry Potter"}
    sources, report = persllm.character_sources(_segs(), harry, STAGES, max_per_stage=None, min_own_turns=2)
    assert report["cells"]["harry/early"] == 10 and report["cells"]["harry/late"] == 0  # one own line per late chapter
    assert "harry/late" in report["empty_cells"]
    src = next(s for s in sources if s["character"] == "harry")
    assert src["id"] == "harry-early-m1c0p0" and src["name"] == "Harry Potter" and src["kind"] == "dialogue"
    assert src["text"] == persllm.render_segment(src["turns"]) and src["movie"] == 1


def test_character_sources_count_an_empty_cell_and_fail_a_character_without_any():
    lines = pd.DataFrame({"movie": [1, 1, 1, 3, 3], "chapter_id": [1, 1, 1, 2, 2],
                          "character": ["Harry Potter", "Petunia Dursley", "Harry Potter", "Harry Potter",
                                        "Ron Weasley"],
                          "text": ["a", "b", "c", "d", "e"], "key": ["harry", "petunia", "harry", "harry", "ron"],
                          "stage": ["early", "early", "early", "late", "late"]})
    segs = persllm.segments(lines)
    sources, report = persllm.character_sources(segs, CHARACTERS, STAGES, max_per_stage=None)
    assert report["cells"] == {"harry/early": 1, "harry/late": 1, "ron/early": 0, "ron/late": 1, "petunia/early": 1,
                               "petunia/late": 0}
    assert report["empty_cells"] == ["ron/early", "petunia/late"]
    assert Counter((s["character"], s["stage"]) for s in sources) == {
        ("harry", "early"): 1, ("harry", "late"): 1, ("ron", "late"): 1, ("petunia", "early"): 1}
    with pytest.raises(ValueError, match=r"character vernon \(Vernon Dursley\) has no segment"):
        persllm.character_sources(segs, {**CHARACTERS, "vernon": "Vernon Dursley"}, STAGES, max_per_stage=None)


def test_knowledge_sources_are_checked_and_numbered_per_cell():
    rows = [{"character": "harry", "stage": "early", "text": " Lives under the stairs. "},
            {"character": "harry", "stage": "early", "text": "Goes to Hogwarts."},
            {"character": "ron", "stage": "late", "text": "Has a rat."}]
    out = persllm.knowledge_sources(rows, CHARACTERS, STAGES)
    assert [s["id"] for s in out] == ["harry-early-k1", "harry-early-k2", "ron-late-k1"]
    assert out[0]["text"] == "Lives under the stairs." and out[0]["kind"] == "knowledge" and out[0]["turns"] == []
    assert out[2]["name"] == "Ron Weasley" and out[2]["movie"] is None
    with pytest.raises(ValueError, match=r"row 0: character 'draco'"):
        persllm.knowledge_sources([{"character": "draco", "stage": "early", "text": "x"}], CHARACTERS, STAGES)
    with pytest.raises(ValueError, match=r"row 1: stage 'middle'"):
        persllm.knowledge_sources([rows[0], {"character": "ron", "stage": "middle", "text": "x"}], CHARACTERS, STAGES)
    for text in ("", "   ", None):
        with pytest.raises(ValueError, match="row 0: empty text"):
            persllm.knowledge_sources([{"character": "ron", "stage": "late", "text": text}], CHARACTERS, STAGES)


def test_speeches_are_own_lines_with_a_stage():
    rows = (_chapter(1, 1, ["Harry Potter", "Vernon Dursley"]) + _chapter(3, 2, ["Ron Weasley"])
            + _chapter(4, 3, ["Harry Potter"]))
    out = persllm.speeches(_labelled(rows, characters={"harry": "Harry Potter", "ron": "Ron Weasley"}))
    assert out == [{"character": "harry", "stage": "early", "movie": 1, "text": "line 0 of m1c1"},
                   {"character": "ron", "stage": "late", "movie": 3, "text": "line 0 of m3c2"}]


# --------------------------------------------------------------------------------------------- inputs

def test_input_records_three_types_per_source_with_alternating_stance():
    sources = [{"id": f"s{i}", "character": "harry", "name": "Harry Potter", "stage": "early"} for i in range(3)]
    recs = persllm.input_records(sources)
    assert [r["id"] for r in recs[:3]] == ["s0-question", "s0-thought", "s0-error"]
    assert [r["stance"] for r in recs if r["type"] == "thought"] == ["agrees", "conflicts", "agrees"]
    assert all("stance" not in r for r in recs if r["type"] != "thought")
    msg = persllm.input_messages(recs[1], "Harry Potter: Hi.", THOUGHT_TEMPLATE)
    assert msg[0]["role"] == "user" and "Harry Potter: Hi." in msg[0]["content"] and "that agrees with" in msg[0][
        "content"]
    assert "{" not in persllm.input_messages(recs[0], "x", QUESTION_TEMPLATE)[0]["content"]


@pytest.mark.parametrize("reply, kind, expected", [
    ("Question: What did you see in the mirror that night?", "question", "What did you see in the mirror that night?"),
    ('1. "Why did you trust Snape for so long?"', "question", "Why did you trust Snape for so long?"),
    ("\n\n  - Q: How did you feel at the Yule Ball?\nSecond line ignored.", "question",
     "How did you feel at the Yule Ball?"),
    ("2) Error question: Why did you fly the dragon to Azkaban?", "error", "Why did you fly the dragon to Azkaban?"),
    ("Thought: \u201cQuidditch is the best part of school.\u201d", "thought", "Quidditch is the best part of school."),
    ("Opinion: I think Ron was unfair to you.", "thought", "I think Ron was unfair to you."),
])
def test_parse_input_strips_labels_numbers_and_quotes(reply, kind, expected):
    assert persllm.parse_input(kind, reply) == expected


@pytest.mark.parametrize("reply, kind, reason", [
    ("", "question", "empty"), ("  \n \n", "thought", "empty"), (None, "question", "empty"),
    ("Question: Why me?", "question", "too_short"),
    ("Why " + "really " * 60 + "?", "question", "too_long"),
    ("Tell me about the night you met Hagrid.", "question", "not_a_question"),
    ("Tell me about the night you met Hagrid.", "error", "not_a_question"),
])
def test_parse_input_reasons(reply, kind, reason):
    with pytest.raises(InvalidReply) as err:
        persllm.parse_input(kind, reply)
    assert err.value.reason == reason


def test_parse_input_word_bounds_are_parameters():
    assert persllm.parse_input("question", "Why me?", min_words=2) == "Why me?"
    assert persllm.parse_input("thought", "No question mark needed here.") == "No question mark needed here."
    with pytest.raises(InvalidReply, match="too_long"):
        persllm.parse_input("thought", "one two three four five", max_words=4)


# --------------------------------------------------------------------------------------------- answers

def test_parse_answer_reads_the_paper_form():
    got = persllm.parse_answer("[Analysis] I am brave,\n  and loyal.\n[Response]: Let's go   to the forest!")
    assert got == {"analysis": "I am brave, and loyal.", "response": "Let's go to the forest!",
                   "text": "[Analysis] I am brave, and loyal. [Response] Let's go to the forest!"}
    assert persllm.parse_answer(got["text"]) == got  # the canonical text reads back the same


def test_parse_answer_without_analysis_tag_keeps_the_text_before_response():
    got = persllm.parse_answer("Thinking first. [Response] Yes.")
    assert got["analysis"] == "Thinking first." and got["text"] == "[Analysis] Thinking first. [Response] Yes."
    assert persllm.parse_answer("Preamble. [Analysis] real [Response] r")["analysis"] == "real"
    bare = persllm.parse_answer("[Response] Only this.")
    assert bare["analysis"] == "" and bare["text"] == "[Analysis] [Response] Only this."
    assert persllm.parse_answer("[Analysis] a [Response] first [Response] second")["response"] == "first"


@pytest.mark.parametrize("reply, reason", [("[Analysis] no reply at all", "no_response_tag"), ("", "no_response_tag"),
                                           (None, "no_response_tag"), ("[Analysis] x [Response]  \n", "empty_response"),
                                           ("[Analysis] x [Response]: ", "empty_response")])
def test_parse_answer_reasons(reply, reason):
    with pytest.raises(InvalidReply) as err:
        persllm.parse_answer(reply)
    assert err.value.reason == reason


def _inputs():
    return [{"id": "h1", "character": "harry", "name": "Harry Potter", "stage": "early", "type": "question",
             "text": "Why?", "source": "s1"},
            {"id": "h2", "character": "harry", "name": "Harry Potter", "stage": "late", "type": "thought",
             "stance": "agrees", "text": "Nice.", "source": "s2"},
            {"id": "p1", "character": "petunia", "name": "Petunia Dursley", "stage": "early", "type": "error",
             "text": "When?", "source": "s3"}]


def test_answer_records_own_stage_and_other_stage_where_available():
    available = {"harry": {"early", "late"}, "petunia": {"early"}}
    own = persllm.answer_records(_inputs(), available, other_stage=False)
    assert [r["id"] for r in own] == ["h1@early", "h2@late", "p1@early"]
    both = persllm.answer_records(_inputs(), available, other_stage=True)
    assert [r["id"] for r in both] == ["h1@early", "h1@late", "h2@late", "h2@early", "p1@early"]
    assert both[1] == {"id": "h1@late", "input_id": "h1", "character": "harry", "name": "Harry Potter",
                       "stage": "late", "type": "question", "input": "Why?"}


def test_answer_messages_fill_the_template_and_guide_the_steps():
    rec = persllm.answer_records(_inputs()[:1], {}, other_stage=False)[0]
    chat = persllm.answer_messages(rec, "the first films", ["Harry: Hi.\nRon: Hello."], ["Blimey."], ANSWER_TEMPLATE)
    assert [m["role"] for m in chat] == ["system", "user"] and chat[1]["content"] == "Why?"
    assert "Now it's the first films." in chat[0]["content"] and "- Harry: Hi. / Ron: Hello." in chat[0]["content"]
    assert '- "Blimey."' in chat[0]["content"]
    empty = persllm.answer_messages(rec, "t", [], [], "{name}|{time}|{knowledge}|{style}")
    assert empty[0]["content"] == "Harry Potter|t|-|-"
    assert "First think as Harry Potter" in persllm.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE,
                                                                    guided="analysis")[1]["content"]
    guided = persllm.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE, guided="response", analysis="I wonder.")
    assert "Your thoughts: I wonder." in guided[1]["content"]
    blind = persllm.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE, guided="response")[1]["content"]
    assert "Your thoughts" not in blind and blind.endswith("in one or two sentences.")
    with pytest.raises(ValueError, match="guided must be"):
        persllm.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE, guided="whole")


def test_parse_answer_refuses_a_response_that_repeats_the_analysis():
    with pytest.raises(InvalidReply) as err:
        persllm.parse_answer("[Analysis] I am   fine. [Response] i am fine.")
    assert err.value.reason == "response_repeats_analysis"
    assert persllm.parse_answer("[Analysis] I am fine. [Response] I am fine, thanks.")["response"] == "I am fine, thanks."


@pytest.mark.parametrize("reply", ["Here is a question about the scene:", "Sure! What did Harry do there?",
                                   "Here's an opinion that agrees with it", "A question for Harry about it:"])
def test_parse_input_refuses_talk_about_the_task(reply):
    with pytest.raises(InvalidReply) as err:
        persllm.parse_input("question", reply)
    assert err.value.reason == "meta_text"


def test_parse_guided_strips_tags_and_caps_words():
    assert persllm.parse_guided("[Response]  I   am here [Analysis]") == "I am here"
    assert persllm.parse_guided("a b c d e", max_words=3) == "a b c"
    with pytest.raises(InvalidReply, match="empty"):
        persllm.parse_guided(" [Response] ")


# --------------------------------------------------------------------------------------------- retrieval material

def _letters(texts):
    """A deterministic toy embedding: letter counts."""
    out = np.zeros((len(texts), 26))
    for i, t in enumerate(texts):
        for ch in t.lower():
            if "a" <= ch <= "z":
                out[i, ord(ch) - 97] += 1
    return out


def test_retrieve_ranks_by_cosine_and_caps_k():
    pool = np.array([[0.0, 1.0], [1.0, 0.1], [1.0, 0.0], [-1.0, 0.0]])
    got = persllm.retrieve(np.array([[1.0, 0.0], [0.0, 2.0]]), pool, k=2)
    assert got.tolist() == [[2, 1], [0, 1]]
    assert persllm.retrieve(np.ones((2, 2)), pool, k=10).shape == (2, 4)
    assert persllm.retrieve(np.ones((2, 2)), pool, k=0).shape == (2, 0)
    assert persllm.retrieve(np.ones((3, 2)), np.zeros((0, 2)), k=2).shape == (3, 0)


MATERIAL_SOURCES = [
    {"character": "harry", "stage": "early", "text": "zzzz zzz"},
    {"character": "harry", "stage": "early", "text": "broom broom"},
    {"character": "harry", "stage": "early", "text": "aaaa bbb"},
    {"character": "harry", "stage": "late", "text": "broom"},
    {"character": "ron", "stage": "early", "text": "broom"},
]
MATERIAL_SPEECHES = [{"character": "harry", "stage": "early", "text": t} for t in
                     ("broom!", "room", "xyz", "qqq", "bob")] + [
    {"character": "ron", "stage": "early", "text": "broom"}, {"character": "ron", "stage": "late", "text": "broom"}]


def test_answer_material_retrieves_from_the_record_cell_only():
    recs = [{"id": "h@early", "character": "harry", "stage": "early", "input": "broom"},
            {"id": "h@late", "character": "harry", "stage": "late", "input": "broom"},
            {"id": "r@early", "character": "ron", "stage": "early", "input": "zzz"}]
    out = persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=2, style_k=2)
    assert set(out) == {"h@early", "h@late", "r@early"}
    assert out["h@early"] == {"knowledge": ["broom broom", "aaaa bbb"], "style": ["broom!", "room"]}
    assert out["h@late"] == {"knowledge": ["broom"], "style": []}  # no own line in that cell
    assert out["r@early"] == {"knowledge": ["broom"], "style": ["broom"]}  # never harry's "zzzz zzz"
    one = persllm.answer_material(recs[:1], MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=1, style_k=0)
    assert one == {"h@early": {"knowledge": ["broom broom"], "style": []}}


def test_answer_material_style_pool_is_a_seeded_sample():
    recs = [{"id": "h@early", "character": "harry", "stage": "early", "input": "broom"}]
    harry = {t for t in (s["text"] for s in MATERIAL_SPEECHES[:5])}
    got = [persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, style_k=10, style_pool=2,
                                   seed=s)["h@early"]["style"] for s in range(8)]
    assert all(len(g) == 2 and set(g) <= harry for g in got)
    assert got[0] == persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, style_k=10,
                                             style_pool=2, seed=0)["h@early"]["style"]
    assert len({frozenset(g) for g in got}) > 1
    full = persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, style_k=10)
    assert sorted(full["h@early"]["style"]) == sorted(harry)


def test_answer_material_missing_cell_is_an_error():
    recs = [{"id": "r@late", "character": "ron", "stage": "late", "input": "broom"}]
    with pytest.raises(ValueError, match=r"without material: \['ron/late'\]"):
        persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, 1)
    assert persllm.answer_material([], MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, 1) == {}


# --------------------------------------------------------------------------------------------- dedup and split

def _angles(*degrees):
    return np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def test_unit_rows_keep_zero_rows():
    assert persllm.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist() == [[0.6, 0.8], [0.0, 0.0]]


def test_dedup_is_greedy_against_kept_items_only():
    # b is within 10 degrees of a (dropped); c is 10 degrees from b but 20 from a: kept, b no longer counts
    threshold = math.cos(math.radians(15))
    kept, dropped = persllm.dedup(["a", "b", "c"], ["x"] * 3, _angles(0, 10, 20), threshold)
    assert kept == ["a", "c"] and dropped == {"b": "a"}
    # the dropped one maps to the most similar kept one
    kept, dropped = persllm.dedup(["a", "b", "c"], ["x"] * 3, _angles(0, 30, 28), threshold)
    assert kept == ["a", "b"] and dropped == {"c": "b"}


def test_dedup_threshold_boundary_and_scale():
    vecs = np.array([[1.0, 0.0], [3.0, 4.0]])  # cosine 0.6 exactly
    assert persllm.dedup(["a", "b"], ["g", "g"], vecs, threshold=0.6) == (["a"], {"b": "a"})
    assert persllm.dedup(["a", "b"], ["g", "g"], vecs, threshold=0.6000001) == (["a", "b"], {})
    same = np.array([[1.0, 2.0], [10.0, 20.0]])  # the norm does not matter
    assert persllm.dedup(["a", "b"], ["g", "g"], same, threshold=0.95)[0] == ["a"]


def test_dedup_groups_are_independent_and_pooled_across_stages():
    ids = ["h-early-1", "r-early-1", "h-late-1", "r-late-1", "h-late-2"]
    groups = ["harry", "ron", "harry", "ron", "harry"]  # a character pools its stages
    vecs = _angles(0, 0, 1, 90, 60)
    kept, dropped = persllm.dedup(ids, groups, vecs, threshold=0.95)
    assert kept == ["h-early-1", "r-early-1", "r-late-1", "h-late-2"]  # in input order
    assert dropped == {"h-late-1": "h-early-1"}
    assert persllm.dedup([], [], np.zeros((0, 2))) == ([], {})


def test_dedup_rejects_mismatched_or_repeated_input():
    with pytest.raises(ValueError, match="2 ids, 1 groups, 2 vectors"):
        persllm.dedup(["a", "b"], ["g"], _angles(0, 1))
    with pytest.raises(ValueError, match="2 ids, 2 groups, 3 vectors"):
        persllm.dedup(["a", "b"], ["g", "g"], _angles(0, 1, 2))
    with pytest.raises(ValueError, match="repeated ids"):
        persllm.dedup(["a", "a"], ["g", "h"], _angles(0, 90))


def test_split_inputs_is_seeded_and_by_id():
    ids = [f"in{i}" for i in range(400)]
    split = persllm.split_inputs(ids, 0.2, seed=0)
    assert split == persllm.split_inputs(list(reversed(ids)), 0.2, seed=0)  # by id, not position
    assert all(split[i] == split_of(i, 0.2, 0) for i in ids)
    assert 0.12 < Counter(split.values())["test"] / len(ids) < 0.28
    assert split != persllm.split_inputs(ids, 0.2, seed=1)
    assert set(persllm.split_inputs(ids, 0.0, seed=0).values()) == {"train"}


def _answer(input_id, stage, tag):
    return {"id": f"{input_id}@{stage}", "input_id": input_id, "stage": stage, "character": "harry",
            "analysis": f"a-{tag}", "response": f"r-{tag}", "text": f"[Analysis] a-{tag} [Response] r-{tag}"}


def test_build_items_keep_the_kept_inputs_with_an_own_stage_answer():
    inputs = [dict(_inputs()[0], id=i, stage=st) for i, st in (("a", "early"), ("b", "early"), ("c", "early"),
                                                                  ("d", "late"))]
    answers = [_answer("a", "early", 1), _answer("a", "late", 2), _answer("b", "late", 3),  # b: own answer rejected
               _answer("c", "early", 4), _answer("d", "late", 5)]
    split = {"a": "train", "b": "train", "c": "test", "d": "test"}
    items = persllm.build_items(inputs, answers, kept=["a", "b", "d"], split=split)
    assert [it["id"] for it in items] == ["a", "d"]
    a = items[0]
    assert a["answers"] == {"early": {"analysis": "a-1", "response": "r-1", "text": "[Analysis] a-1 [Response] r-1"},
                            "late": {"analysis": "a-2", "response": "r-2", "text": "[Analysis] a-2 [Response] r-2"}}
    assert (a["split"], a["input"], a["source"], a["stance"], a["type"]) == ("train", "Why?", "s1", None, "question")
    assert list(items[1]["answers"]) == ["late"] and items[1]["split"] == "test"
    summary = persllm.item_summary(items)
    assert summary.to_dict("records") == [
        {"character": "harry", "stage": "early", "split": "train", "items": 1, "both_stages": 1},
        {"character": "harry", "stage": "late", "split": "test", "items": 1, "both_stages": 0}]
    assert list(persllm.item_summary([]).columns) == ["character", "stage", "split", "items", "both_stages"]


# --------------------------------------------------------------------------------------------- the documented recipe:
# word budgets, the answer prompt's anti-induction note and few-shot examples, the prompts' wording

ERROR_NOTE = (ROOT / "params/prompts/persllm_answer_error.txt").read_text()
EXAMPLES = (ROOT / "params/prompts/persllm_answer_examples.txt").read_text()
ERROR_TEMPLATE = (ROOT / "params/prompts/persllm_input_error.txt").read_text()


def test_word_count_and_cut_words_keep_lines():
    assert persllm.word_count("  one two\nthree ") == 3 and persllm.word_count("") == 0
    assert persllm.cut_words("Harry: a b c\nRon: d e", 5) == "Harry: a b c\nRon:"
    assert persllm.cut_words("a b\n\nc d", 3) == "a b\nc"
    assert persllm.cut_words("a b", 10) == "a b" and persllm.cut_words("a b", 0) == ""


def test_fill_words_takes_whole_texts_best_first_and_cuts_the_one_that_overflows():
    ranked = ["one two three", "four five", "six seven eight nine", "ten"]
    assert persllm.fill_words(ranked, 5) == ["one two three", "four five"]  # exactly full: stops before the third
    assert persllm.fill_words(ranked, 7) == ["one two three", "four five", "six seven"]
    assert persllm.fill_words(ranked, 2) == ["one two"]  # the best text is cut, never skipped for a shorter one
    assert persllm.fill_words(ranked, None, 2) == ranked[:2]  # no word budget: the k best whole
    assert persllm.fill_words(ranked, 100, 3) == ranked[:3]  # both limits: the tighter one
    assert persllm.fill_words(ranked, 0) == [] and persllm.fill_words(ranked, None) == ranked
    assert sum(map(persllm.word_count, persllm.fill_words(ranked * 50, 1500))) <= 1500
    with pytest.raises(ValueError, match="negative budget"):
        persllm.fill_words(ranked, -1)


def test_answer_material_word_budgets_rank_every_text_and_fill_to_the_budget():
    recs = [{"id": "h@early", "character": "harry", "stage": "early", "input": "broom"}]
    # knowledge: "broom broom" (2 words), then "aaaa bbb" (2), then "zzzz zzz" (2), best first
    got = persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=None,
                                  style_k=None, knowledge_words=3, style_words=2)["h@early"]
    assert got["knowledge"] == ["broom broom", "aaaa"]
    assert got["style"] == ["broom!", "room"]
    capped = persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=1, style_k=5,
                                     knowledge_words=100, style_words=1)["h@early"]
    assert capped == {"knowledge": ["broom broom"], "style": ["broom!"]}
    none = persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, None, None,
                                   knowledge_words=0, style_words=0)["h@early"]
    assert none == {"knowledge": [], "style": []}
    with pytest.raises(ValueError, match="knowledge material has no budget: retrieve_k and knowledge_words"):
        persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, None, 1)
    with pytest.raises(ValueError, match="style material has no budget: style_k and style_words"):
        persllm.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, None)


def test_retrieve_with_k_none_ranks_the_whole_pool():
    pool = np.array([[0.0, 1.0], [1.0, 0.1], [1.0, 0.0]])
    assert persllm.retrieve(np.array([[1.0, 0.0]]), pool, None).tolist() == [[2, 1, 0]]


def test_the_answer_prompt_says_not_to_conform_and_asks_for_the_two_parts():
    assert "Don't always conform to the user's point of view!" in ANSWER_TEMPLATE
    assert "[Analysis]" in ANSWER_TEMPLATE and "[Response]" in ANSWER_TEMPLATE and "Now it's {time}." in ANSWER_TEMPLATE


def test_answer_messages_add_the_error_note_for_error_inputs_only_and_the_examples_last():
    recs = persllm.answer_records(_inputs(), {}, other_stage=False)
    question, thought, error = recs  # types question, thought, error
    chats = {r["type"]: persllm.answer_messages(r, "t", ["k"], ["s"], ANSWER_TEMPLATE, examples=EXAMPLES,
                                                error_note=ERROR_NOTE)[0]["content"] for r in (question, thought, error)}
    note = ERROR_NOTE.strip().replace("{name}", "Petunia Dursley")
    assert note in chats["error"] and "this input is misleading" in chats["error"]
    assert all("misleading" not in chats[t] for t in ("question", "thought"))
    for system in chats.values():
        assert "{name}" not in system and "Don't always conform" in system
        assert system.index("Don't always conform") < system.index("Input:")  # the examples come after the task
        assert system.rstrip().endswith("always write the analysis of the input first.")
    assert chats["error"].index("misleading") < chats["error"].index("Input:")  # the note before the examples
    # without the optional parts the prompt is the template alone, as before
    plain = persllm.answer_messages(question, "t", ["k"], ["s"], ANSWER_TEMPLATE)[0]["content"]
    assert chats["question"].startswith(plain.rstrip()) and "Input:" not in plain


def test_the_few_shot_examples_are_chain_of_thought_answers_the_parser_reads():
    outputs = [ln[len("Output:"):].strip() for ln in EXAMPLES.splitlines() if ln.startswith("Output:")]
    inputs = [ln for ln in EXAMPLES.splitlines() if ln.startswith("Input:")]
    assert len(outputs) == len(inputs) >= 4
    for out in outputs:
        assert out.startswith("[Analysis] ") and out.count("[Response]") == 1
        got = persllm.parse_answer(out)
        assert got["analysis"] and got["response"]
    # a teacher that echoes the examples' "Output:" label is still read
    assert persllm.parse_answer("Output: [Analysis] a b [Response] c d") == \
        {"analysis": "a b", "response": "c d", "text": "[Analysis] a b [Response] c d"}


def test_the_input_prompts_keep_their_markers_and_fill():
    recs = persllm.input_records([{"id": "s", "character": "harry", "name": "Harry Potter", "stage": "early"}])
    for rec, template, marker in zip(recs, (QUESTION_TEMPLATE, THOUGHT_TEMPLATE, ERROR_TEMPLATE),
                                     ("Write one question", "Write one opinion", "deliberate mistake")):
        msg = persllm.input_messages(rec, "Harry: Hi.", template)[0]["content"]
        assert marker in msg and "{" not in msg and "Harry: Hi." in msg
    assert "deliberate mistake" not in QUESTION_TEMPLATE + THOUGHT_TEMPLATE  # the fake teacher tells them apart so


def test_the_fake_teacher_still_answers_every_persllm_prompt_in_a_parsable_form():
    from tests.fake_teacher import scripted_dialogue_reply

    for rec, template in zip(persllm.input_records([{"id": "s", "character": "harry", "name": "Harry Potter",
                                                     "stage": "early"}]),
                             (QUESTION_TEMPLATE, THOUGHT_TEMPLATE, ERROR_TEMPLATE)):
        reply = scripted_dialogue_reply(persllm.input_messages(rec, "Harry: Hi.", template))
        text = persllm.parse_input(rec["type"], reply)
        answer_rec = {"name": "Harry Potter", "type": rec["type"], "input": text}
        chat = persllm.answer_messages(answer_rec, "t", ["k"], ["s"], ANSWER_TEMPLATE, examples=EXAMPLES,
                                       error_note=ERROR_NOTE)
        assert persllm.parse_answer(scripted_dialogue_reply(chat))["response"]
