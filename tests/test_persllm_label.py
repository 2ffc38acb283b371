"""PersLLM's annotation (lib/persllm/label.py): inputs, answers, retrieval material within word budgets, the
chain-of-thought prompts and their parsing, and dedup."""
import math
from pathlib import Path

import numpy as np
import pytest

from lib.persllm import label
from lib.teacher import InvalidReply

ROOT = Path(__file__).resolve().parents[1]
ANSWER_TEMPLATE = (ROOT / "params/prompts/persllm_answer.txt").read_text()
QUESTION_TEMPLATE = (ROOT / "params/prompts/persllm_input_question.txt").read_text()
THOUGHT_TEMPLATE = (ROOT / "params/prompts/persllm_input_thought.txt").read_text()


# --------------------------------------------------------------------------------------------- inputs

def test_input_records_three_types_per_source_with_alternating_stance():
    sources = [{"id": f"s{i}", "character": "harry", "name": "Harry Potter", "stage": "early"} for i in range(3)]
    recs = label.input_records(sources)
    assert [r["id"] for r in recs[:3]] == ["s0-question", "s0-thought", "s0-error"]
    assert [r["stance"] for r in recs if r["type"] == "thought"] == ["agrees", "conflicts", "agrees"]
    assert all("stance" not in r for r in recs if r["type"] != "thought")
    msg = label.input_messages(recs[1], "Harry Potter: Hi.", THOUGHT_TEMPLATE)
    assert msg[0]["role"] == "user" and "Harry Potter: Hi." in msg[0]["content"] and "that agrees with" in msg[0][
        "content"]
    assert "{" not in label.input_messages(recs[0], "x", QUESTION_TEMPLATE)[0]["content"]


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
    assert label.parse_input(kind, reply) == expected


@pytest.mark.parametrize("reply, kind, reason", [
    ("", "question", "empty"), ("  \n \n", "thought", "empty"), (None, "question", "empty"),
    ("Question: Why me?", "question", "too_short"),
    ("Why " + "really " * 60 + "?", "question", "too_long"),
    ("Tell me about the night you met Hagrid.", "question", "not_a_question"),
    ("Tell me about the night you met Hagrid.", "error", "not_a_question"),
])
def test_parse_input_reasons(reply, kind, reason):
    with pytest.raises(InvalidReply) as err:
        label.parse_input(kind, reply)
    assert err.value.reason == reason


def test_parse_input_word_bounds_are_parameters():
    assert label.parse_input("question", "Why me?", min_words=2) == "Why me?"
    assert label.parse_input("thought", "No question mark needed here.") == "No question mark needed here."
    with pytest.raises(InvalidReply, match="too_long"):
        label.parse_input("thought", "one two three four five", max_words=4)


# --------------------------------------------------------------------------------------------- answers

def test_parse_answer_reads_the_paper_form():
    got = label.parse_answer("[Analysis] I am brave,\n  and loyal.\n[Response]: Let's go   to the forest!")
    assert got == {"analysis": "I am brave, and loyal.", "response": "Let's go to the forest!",
                   "text": "[Analysis] I am brave, and loyal. [Response] Let's go to the forest!"}
    assert label.parse_answer(got["text"]) == got  # the canonical text reads back the same


def test_parse_answer_without_analysis_tag_keeps_the_text_before_response():
    got = label.parse_answer("Thinking first. [Response] Yes.")
    assert got["analysis"] == "Thinking first." and got["text"] == "[Analysis] Thinking first. [Response] Yes."
    assert label.parse_answer("Preamble. [Analysis] real [Response] r")["analysis"] == "real"
    bare = label.parse_answer("[Response] Only this.")
    assert bare["analysis"] == "" and bare["text"] == "[Analysis] [Response] Only this."
    assert label.parse_answer("[Analysis] a [Response] first [Response] second")["response"] == "first"


@pytest.mark.parametrize("reply, reason", [("[Analysis] no reply at all", "no_response_tag"), ("", "no_response_tag"),
                                           (None, "no_response_tag"), ("[Analysis] x [Response]  \n", "empty_response"),
                                           ("[Analysis] x [Response]: ", "empty_response")])
def test_parse_answer_reasons(reply, reason):
    with pytest.raises(InvalidReply) as err:
        label.parse_answer(reply)
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
    own = label.answer_records(_inputs(), available, other_stage=False)
    assert [r["id"] for r in own] == ["h1@early", "h2@late", "p1@early"]
    both = label.answer_records(_inputs(), available, other_stage=True)
    assert [r["id"] for r in both] == ["h1@early", "h1@late", "h2@late", "h2@early", "p1@early"]
    assert both[1] == {"id": "h1@late", "input_id": "h1", "character": "harry", "name": "Harry Potter",
                       "stage": "late", "type": "question", "input": "Why?"}


def test_answer_messages_fill_the_template_and_guide_the_steps():
    rec = label.answer_records(_inputs()[:1], {}, other_stage=False)[0]
    chat = label.answer_messages(rec, "the first films", ["Harry: Hi.\nRon: Hello."], ["Blimey."], ANSWER_TEMPLATE)
    assert [m["role"] for m in chat] == ["system", "user"] and chat[1]["content"] == "Why?"
    assert "Now it's the first films." in chat[0]["content"] and "- Harry: Hi. / Ron: Hello." in chat[0]["content"]
    assert '- "Blimey."' in chat[0]["content"]
    empty = label.answer_messages(rec, "t", [], [], "{name}|{time}|{knowledge}|{style}")
    assert empty[0]["content"] == "Harry Potter|t|-|-"
    assert "First think as Harry Potter" in label.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE,
                                                                  guided="analysis")[1]["content"]
    guided = label.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE, guided="response", analysis="I wonder.")
    assert "Your thoughts: I wonder." in guided[1]["content"]
    blind = label.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE, guided="response")[1]["content"]
    assert "Your thoughts" not in blind and blind.endswith("in one or two sentences.")
    with pytest.raises(ValueError, match="guided must be"):
        label.answer_messages(rec, "t", [], [], ANSWER_TEMPLATE, guided="whole")


def test_parse_answer_refuses_a_response_that_repeats_the_analysis():
    with pytest.raises(InvalidReply) as err:
        label.parse_answer("[Analysis] I am   fine. [Response] i am fine.")
    assert err.value.reason == "response_repeats_analysis"
    assert label.parse_answer("[Analysis] I am fine. [Response] I am fine, thanks.")["response"] == "I am fine, thanks."


@pytest.mark.parametrize("reply", ["Here is a question about the scene:", "Sure! What did Harry do there?",
                                   "Here's an opinion that agrees with it", "A question for Harry about it:"])
def test_parse_input_refuses_talk_about_the_task(reply):
    with pytest.raises(InvalidReply) as err:
        label.parse_input("question", reply)
    assert err.value.reason == "meta_text"


def test_parse_guided_strips_tags_and_caps_words():
    assert label.parse_guided("[Response]  I   am here [Analysis]") == "I am here"
    assert label.parse_guided("a b c d e", max_words=3) == "a b c"
    with pytest.raises(InvalidReply, match="empty"):
        label.parse_guided(" [Response] ")


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
    got = label.retrieve(np.array([[1.0, 0.0], [0.0, 2.0]]), pool, k=2)
    assert got.tolist() == [[2, 1], [0, 1]]
    assert label.retrieve(np.ones((2, 2)), pool, k=10).shape == (2, 4)
    assert label.retrieve(np.ones((2, 2)), pool, k=0).shape == (2, 0)
    assert label.retrieve(np.ones((3, 2)), np.zeros((0, 2)), k=2).shape == (3, 0)


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
    out = label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=2, style_k=2)
    assert set(out) == {"h@early", "h@late", "r@early"}
    assert out["h@early"] == {"knowledge": ["broom broom", "aaaa bbb"], "style": ["broom!", "room"]}
    assert out["h@late"] == {"knowledge": ["broom"], "style": []}  # no own line in that cell
    assert out["r@early"] == {"knowledge": ["broom"], "style": ["broom"]}  # never harry's "zzzz zzz"
    one = label.answer_material(recs[:1], MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=1, style_k=0)
    assert one == {"h@early": {"knowledge": ["broom broom"], "style": []}}


def test_answer_material_style_pool_is_a_seeded_sample():
    recs = [{"id": "h@early", "character": "harry", "stage": "early", "input": "broom"}]
    harry = {t for t in (s["text"] for s in MATERIAL_SPEECHES[:5])}
    got = [label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, style_k=10, style_pool=2,
                                 seed=s)["h@early"]["style"] for s in range(8)]
    assert all(len(g) == 2 and set(g) <= harry for g in got)
    assert got[0] == label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, style_k=10,
                                           style_pool=2, seed=0)["h@early"]["style"]
    assert len({frozenset(g) for g in got}) > 1
    full = label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, style_k=10)
    assert sorted(full["h@early"]["style"]) == sorted(harry)


def test_answer_material_missing_cell_is_an_error():
    recs = [{"id": "r@late", "character": "ron", "stage": "late", "input": "broom"}]
    with pytest.raises(ValueError, match=r"without material: \['ron/late'\]"):
        label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, 1)
    assert label.answer_material([], MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, 1) == {}


# --------------------------------------------------------------------------------------------- dedup

def _angles(*degrees):
    return np.array([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def test_unit_rows_keep_zero_rows():
    assert label.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist() == [[0.6, 0.8], [0.0, 0.0]]


def test_dedup_is_greedy_against_kept_items_only():
    # b is within 10 degrees of a (dropped); c is 10 degrees from b but 20 from a: kept, b no longer counts
    threshold = math.cos(math.radians(15))
    kept, dropped = label.dedup(["a", "b", "c"], ["x"] * 3, _angles(0, 10, 20), threshold)
    assert kept == ["a", "c"] and dropped == {"b": "a"}
    # the dropped one maps to the most similar kept one
    kept, dropped = label.dedup(["a", "b", "c"], ["x"] * 3, _angles(0, 30, 28), threshold)
    assert kept == ["a", "b"] and dropped == {"c": "b"}


def test_dedup_threshold_boundary_and_scale():
    vecs = np.array([[1.0, 0.0], [3.0, 4.0]])  # cosine 0.6 exactly
    assert label.dedup(["a", "b"], ["g", "g"], vecs, threshold=0.6) == (["a"], {"b": "a"})
    assert label.dedup(["a", "b"], ["g", "g"], vecs, threshold=0.6000001) == (["a", "b"], {})
    same = np.array([[1.0, 2.0], [10.0, 20.0]])  # the norm does not matter
    assert label.dedup(["a", "b"], ["g", "g"], same, threshold=0.95)[0] == ["a"]


def test_dedup_groups_are_independent_and_pooled_across_stages():
    ids = ["h-early-1", "r-early-1", "h-late-1", "r-late-1", "h-late-2"]
    groups = ["harry", "ron", "harry", "ron", "harry"]  # a character pools its stages
    vecs = _angles(0, 0, 1, 90, 60)
    kept, dropped = label.dedup(ids, groups, vecs, threshold=0.95)
    assert kept == ["h-early-1", "r-early-1", "r-late-1", "h-late-2"]  # in input order
    assert dropped == {"h-late-1": "h-early-1"}
    assert label.dedup([], [], np.zeros((0, 2))) == ([], {})


def test_dedup_rejects_mismatched_or_repeated_input():
    with pytest.raises(ValueError, match="2 ids, 1 groups, 2 vectors"):
        label.dedup(["a", "b"], ["g"], _angles(0, 1))
    with pytest.raises(ValueError, match="2 ids, 2 groups, 3 vectors"):
        label.dedup(["a", "b"], ["g", "g"], _angles(0, 1, 2))
    with pytest.raises(ValueError, match="repeated ids"):
        label.dedup(["a", "a"], ["g", "h"], _angles(0, 90))


# --------------------------------------------------------------------------------------------- the documented recipe:
# word budgets, the answer prompt's anti-induction note and few-shot examples, the prompts' wording

ERROR_NOTE = (ROOT / "params/prompts/persllm_answer_error.txt").read_text()
EXAMPLES = (ROOT / "params/prompts/persllm_answer_examples.txt").read_text()
ERROR_TEMPLATE = (ROOT / "params/prompts/persllm_input_error.txt").read_text()


def test_word_count_and_cut_words_keep_lines():
    assert label.word_count("  one two\nthree ") == 3 and label.word_count("") == 0
    assert label.cut_words("Harry: a b c\nRon: d e", 5) == "Harry: a b c\nRon:"
    assert label.cut_words("a b\n\nc d", 3) == "a b\nc"
    assert label.cut_words("a b", 10) == "a b" and label.cut_words("a b", 0) == ""


def test_fill_words_takes_whole_texts_best_first_and_cuts_the_one_that_overflows():
    ranked = ["one two three", "four five", "six seven eight nine", "ten"]
    assert label.fill_words(ranked, 5) == ["one two three", "four five"]  # exactly full: stops before the third
    assert label.fill_words(ranked, 7) == ["one two three", "four five", "six seven"]
    assert label.fill_words(ranked, 2) == ["one two"]  # the best text is cut, never skipped for a shorter one
    assert label.fill_words(ranked, None, 2) == ranked[:2]  # no word budget: the k best whole
    assert label.fill_words(ranked, 100, 3) == ranked[:3]  # both limits: the tighter one
    assert label.fill_words(ranked, 0) == [] and label.fill_words(ranked, None) == ranked
    assert sum(map(label.word_count, label.fill_words(ranked * 50, 1500))) <= 1500
    with pytest.raises(ValueError, match="negative budget"):
        label.fill_words(ranked, -1)


def test_answer_material_word_budgets_rank_every_text_and_fill_to_the_budget():
    recs = [{"id": "h@early", "character": "harry", "stage": "early", "input": "broom"}]
    # knowledge: "broom broom" (2 words), then "aaaa bbb" (2), then "zzzz zzz" (2), best first
    got = label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=None,
                                style_k=None, knowledge_words=3, style_words=2)["h@early"]
    assert got["knowledge"] == ["broom broom", "aaaa"]
    assert got["style"] == ["broom!", "room"]
    capped = label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, retrieve_k=1, style_k=5,
                                   knowledge_words=100, style_words=1)["h@early"]
    assert capped == {"knowledge": ["broom broom"], "style": ["broom!"]}
    none = label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, None, None,
                                 knowledge_words=0, style_words=0)["h@early"]
    assert none == {"knowledge": [], "style": []}
    with pytest.raises(ValueError, match="knowledge material has no budget: retrieve_k and knowledge_words"):
        label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, None, 1)
    with pytest.raises(ValueError, match="style material has no budget: style_k and style_words"):
        label.answer_material(recs, MATERIAL_SOURCES, MATERIAL_SPEECHES, _letters, 1, None)


def test_retrieve_with_k_none_ranks_the_whole_pool():
    pool = np.array([[0.0, 1.0], [1.0, 0.1], [1.0, 0.0]])
    assert label.retrieve(np.array([[1.0, 0.0]]), pool, None).tolist() == [[2, 1, 0]]


def test_the_answer_prompt_says_not_to_conform_and_asks_for_the_two_parts():
    assert "Don't always conform to the user's point of view!" in ANSWER_TEMPLATE
    assert "[Analysis]" in ANSWER_TEMPLATE and "[Response]" in ANSWER_TEMPLATE and "Now it's {time}." in ANSWER_TEMPLATE


def test_answer_messages_add_the_error_note_for_error_inputs_only_and_the_examples_last():
    recs = label.answer_records(_inputs(), {}, other_stage=False)
    question, thought, error = recs  # types question, thought, error
    chats = {r["type"]: label.answer_messages(r, "t", ["k"], ["s"], ANSWER_TEMPLATE, examples=EXAMPLES,
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
    plain = label.answer_messages(question, "t", ["k"], ["s"], ANSWER_TEMPLATE)[0]["content"]
    assert chats["question"].startswith(plain.rstrip()) and "Input:" not in plain


def test_the_few_shot_examples_are_chain_of_thought_answers_the_parser_reads():
    outputs = [ln[len("Output:"):].strip() for ln in EXAMPLES.splitlines() if ln.startswith("Output:")]
    inputs = [ln for ln in EXAMPLES.splitlines() if ln.startswith("Input:")]
    assert len(outputs) == len(inputs) >= 4
    for out in outputs:
        assert out.startswith("[Analysis] ") and out.count("[Response]") == 1
        got = label.parse_answer(out)
        assert got["analysis"] and got["response"]
    # a teacher that echoes the examples' "Output:" label is still read
    assert label.parse_answer("Output: [Analysis] a b [Response] c d") == \
        {"analysis": "a b", "response": "c d", "text": "[Analysis] a b [Response] c d"}


def test_the_input_prompts_keep_their_markers_and_fill():
    recs = label.input_records([{"id": "s", "character": "harry", "name": "Harry Potter", "stage": "early"}])
    for rec, template, marker in zip(recs, (QUESTION_TEMPLATE, THOUGHT_TEMPLATE, ERROR_TEMPLATE),
                                     ("Write one question", "Write one opinion", "deliberate mistake")):
        msg = label.input_messages(rec, "Harry: Hi.", template)[0]["content"]
        assert marker in msg and "{" not in msg and "Harry: Hi." in msg
    assert "deliberate mistake" not in QUESTION_TEMPLATE + THOUGHT_TEMPLATE  # the fake teacher tells them apart so


def test_the_fake_teacher_still_answers_every_persllm_prompt_in_a_parsable_form():
    from tests.fake_teacher import scripted_dialogue_reply

    for rec, template in zip(label.input_records([{"id": "s", "character": "harry", "name": "Harry Potter",
                                                   "stage": "early"}]),
                             (QUESTION_TEMPLATE, THOUGHT_TEMPLATE, ERROR_TEMPLATE)):
        reply = scripted_dialogue_reply(label.input_messages(rec, "Harry: Hi.", template))
        text = label.parse_input(rec["type"], reply)
        answer_rec = {"name": "Harry Potter", "type": rec["type"], "input": text}
        chat = label.answer_messages(answer_rec, "t", ["k"], ["s"], ANSWER_TEMPLATE, examples=EXAMPLES,
                                     error_note=ERROR_NOTE)
        assert label.parse_answer(scripted_dialogue_reply(chat))["response"]
