"""PersonalityChat's lib/pchat: loaders (data), trait labels (label), trait sampling, prompts, dialogue validation and
leakage (synthesize), SFT rows (rows)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from lib.pchat import data, label, rows, synthesize
from lib.records import read_jsonl
from lib.teacher import InvalidReply
from lib.train import check_rows
from lib.traits import NAMES, TRAITS

PROMPTS = Path(__file__).resolve().parents[1] / "params" / "prompts"  # the templates the pipeline runs
LABEL = (PROMPTS / "pchat_label.txt").read_text()
LABEL_TRAIT = (PROMPTS / "pchat_label_trait.txt").read_text()
WHOLE = (PROMPTS / "pchat_whole.txt").read_text()

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "personachat"
FACTS = ["I love spending money.", "I am high maintenance.", "I diet a lot.", "I listen to Britney Spears."]


# ---------------------------------------------------------------------------------------------------------------
# Loaders


def _write_xpersona(tmp_path, items) -> Path:
    path = tmp_path / "xpersona_en_valid.json"
    path.write_text(json.dumps(items))
    return path


def test_xpersona_responder_is_b_and_silence_is_dropped(tmp_path):
    path = _write_xpersona(tmp_path, [
        {"persona": [" i'm a nurse. ", "i surf."], "dialogue": [["__SILENCE__", "hi there !"], ["hey .", "what's up ?"]]},
        {"persona": ["i bake."], "dialogue": [["hello", "hi"]]},
    ])
    dialogues, rejects = data.load_xpersona(path)
    assert rejects == []
    assert dialogues[0] == {"id": "xpersona_en_valid-00000", "source": "personachat",
                            "personas": {"A": [], "B": ["i'm a nurse.", "i surf."]},
                            "turns": [{"speaker": "B", "text": "hi there !"}, {"speaker": "A", "text": "hey ."},
                                      {"speaker": "B", "text": "what's up ?"}]}
    assert [t["speaker"] for t in dialogues[1]["turns"]] == ["A", "B"]
    assert data.load_xpersona(path, limit=1)[0] == dialogues[:1]


@pytest.mark.parametrize("item, message", [
    ({"persona": ["x."], "dialogue": [["hi", "yo"], ["only one"]]}, r"dialogue 1: dialogue pair 1 is not \[user, response\]"),
    ({"persona": ["x."], "dialogue": [["hi", "  "]]}, r"dialogue 1: dialogue pair 0 has an empty utterance for B"),
    ({"persona": ["x."], "dialogue": [["hi", "yo"], ["__SILENCE__", "yo"]]}, r"dialogue 1: dialogue pair 1 has an empty utterance for A"),
    ({"persona": [], "dialogue": [["hi", "yo"]]}, r"dialogue 1: persona has no facts"),
    ({"dialogue": [["hi", "yo"]]}, r"dialogue 1: expected an object with 'persona' and 'dialogue'"),
])
def test_xpersona_malformed_dialogue_names_file_and_index(tmp_path, item, message):
    good = {"persona": ["i bake."], "dialogue": [["hello", "hi"]]}
    path = _write_xpersona(tmp_path, [good, item])
    with pytest.raises(ValueError, match=r"xpersona_en_valid\.json: " + message):
        data.load_xpersona(path)
    dialogues, rejects = data.load_xpersona(path, errors="skip")
    assert len(dialogues) == 1 and [(r["id"], r["row"]) for r in rejects] == [("xpersona_en_valid-00001", 1)]


def test_xpersona_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="PersonaChat \\(XPersona\\) file not found: .*nope.json"):
        data.load_xpersona(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not JSON"):
        data.load_xpersona(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="obj.json: expected a list of dialogues, got dict"):
        data.load_xpersona(tmp_path / "obj.json")
    with pytest.raises(ValueError, match="errors must be 'raise' or 'skip'"):
        data.load_xpersona(tmp_path / "obj.json", errors="ignore")


MESSY = (
    "*User 1:* Hi! How are you?\n\n"
    "* * User 2: * * Fine, thanks.\n"
    "I just got back from the gym.\n\n"
    "[A few minutes later]\n"
    "(The next day)\n"
    "* * *\n"
    "The next day:\n"
    "User 2: Want to go hiking?\n"
    "User 1: \"Sure!\"\n"
    "User 1: Let's go at noon. *"
)


def _write_spc(tmp_path, lines, columns=data.SPC_COLUMNS) -> Path:
    path = tmp_path / "synthetic_persona_chat_valid.csv"
    pd.DataFrame(lines, columns=list(columns)).to_csv(path, index=False)
    return path


def test_spc_turns_are_cleaned_and_merged(tmp_path):
    path = _write_spc(tmp_path, [["I bake.\nI knit.\n", "I surf.\nI am a boy.", MESSY]])
    (d,), rejects = data.load_synthetic_persona_chat(path)
    assert rejects == []
    assert d["id"] == "synthetic_persona_chat_valid-00000" and d["source"] == "synthetic_persona_chat"
    assert d["personas"] == {"A": ["I bake.", "I knit."], "B": ["I surf.", "I am a boy."]}
    assert d["turns"] == [
        {"speaker": "A", "text": "Hi! How are you?"},
        {"speaker": "B", "text": "Fine, thanks. I just got back from the gym. Want to go hiking?"},
        {"speaker": "A", "text": "Sure! Let's go at noon."},
    ]
    assert d["merged_turns"] == 2


@pytest.mark.parametrize("conversation, message", [
    ("", r"row 1: empty 'Best Generated Conversation'"),
    ("Hi there.\n\nHello!", r"row 1: 0 labelled utterances"),
    ("User 1: Hi.\nUser 1: Anyone?", r"row 1: 1 labelled utterances"),
    ("User 1: Hi.\nAdam: You too.\nUser 2: Yo.", r"row 1: unknown_speaker: line by 'Adam'"),
])
def test_spc_malformed_rows_name_file_and_row(tmp_path, conversation, message):
    path = _write_spc(tmp_path, [["I bake.", "I surf.", "User 1: Hi.\nUser 2: Hey."], ["I bake.", "I surf.", conversation]])
    with pytest.raises(ValueError, match=r"synthetic_persona_chat_valid\.csv: " + message):
        data.load_synthetic_persona_chat(path)
    dialogues, rejects = data.load_synthetic_persona_chat(path, errors="skip")
    assert len(dialogues) == 1 and [r["row"] for r in rejects] == [1]


def test_spc_missing_column_or_file(tmp_path):
    path = _write_spc(tmp_path, [["I bake.", "x"]], columns=["user 1 personas", "Best Generated Conversation"])
    with pytest.raises(ValueError, match=r"missing columns \['user 2 personas'\]"):
        data.load_synthetic_persona_chat(path)
    with pytest.raises(FileNotFoundError, match="Synthetic-Persona-Chat file not found"):
        data.load_synthetic_persona_chat(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match=r"unknown PersonaChat format '\.txt'"):
        data.load_personachat(tmp_path / "x.txt")


def test_persona_keys_ignore_case_spacing_and_order():
    assert data.persona_key(["I bake.", "I surf"]) == data.persona_key(["i  surf.", "i bake"])
    assert data.persona_key(["I bake."]) != data.persona_key(["I surf."])
    d1 = {"personas": {"A": [], "B": ["I bake."]}}
    d2 = {"personas": {"A": ["i bake"], "B": ["I surf."]}}
    assert list(data.unique_personas([d1, d2]).values()) == [["I bake."], ["I surf."]]


@pytest.mark.skipif(not MIRROR.is_dir(), reason="data mirror not beside the repository")
def test_the_mirror_loads():
    valid, rejects = data.load_personachat(MIRROR / "xpersona_en_valid.json")
    assert len(valid) == 1000 and rejects == []
    assert {d["turns"][0]["speaker"] for d in valid} == {"B"}  # every valid dialogue opens with __SILENCE__
    assert valid[0]["personas"]["B"][0] == "i'm a nurse."
    test, _ = data.load_personachat(MIRROR / "xpersona_en_test.json")
    assert {d["turns"][0]["speaker"] for d in test} == {"A"}
    spc, rejects = data.load_personachat(MIRROR / "synthetic_persona_chat_test.csv", errors="skip")
    assert len(spc) == 965 and [r["row"] for r in rejects] == [320, 465, 510]
    assert spc[0]["personas"]["A"][0] == "I just bought a brand new house."
    assert spc[0]["turns"][0] == {"speaker": "A", "text": "Hi, I'm [User 1's name]. What's your name?"}


# ---------------------------------------------------------------------------------------------------------------
# Teacher-written dialogues


def test_parse_transcript_with_names_and_preamble():
    reply = ("Sure! Here is the conversation:\n\n**Sam:** Hi, I'm Sam.\n2. Alex: Hello Sam!\nI love surfing.\n"
             "Sam: Cool.\n\nI hope this helps.")
    turns = synthesize.parse_transcript(reply, names=("Sam", "Alex"), min_turns=3, max_turns=3)
    assert turns == [{"speaker": "A", "text": "Hi, I'm Sam."}, {"speaker": "B", "text": "Hello Sam! I love surfing."},
                     {"speaker": "A", "text": "Cool."}]


@pytest.mark.parametrize("reply, reason", [
    ("A: hi\nB: yo", "turn_count"),
    ("A: hi\nB: yo\nA: so\nB: ok\nA: bye", "turn_count"),
    ("B: hi\nA: yo\nB: so", "speaker_order"),
    ("A: hi\nA: yo\nB: so", "speaker_order"),
    ("A: hi\nB:\nA: so", "empty"),
    ("A: hi\nB: one two three four five six\nA: so", "too_long"),
    ("A: hi\nCarol: hey all\nB: yo\nA: so", "unknown_speaker"),
])
def test_parse_transcript_rejects_with_a_reason(reply, reason):
    with pytest.raises(InvalidReply) as err:
        synthesize.parse_transcript(reply, min_turns=3, max_turns=4, max_words=5)
    assert err.value.reason == reason


def test_parse_transcript_needs_two_names():
    with pytest.raises(ValueError, match="two distinct speaker names"):
        synthesize.parse_transcript("a: x", names=("Sam", "sam"))


# ---------------------------------------------------------------------------------------------------------------
# 05_label


def test_label_messages_list_the_facts():
    (msg,) = label.label_messages(FACTS, LABEL)
    assert msg["role"] == "user"
    assert "- I love spending money.\n- I am high maintenance." in msg["content"]
    assert "Probably low, given" in msg["content"]
    with pytest.raises(ValueError, match=r"unknown placeholders \['traits'\]"):
        label.label_messages(FACTS, template="{persona} {traits}")
    with pytest.raises(ValueError, match="at least one fact"):
        label.label_messages([], LABEL)


GOOD_REPLY = (
    "Here are my judgements:\n"
    "1. **Openness:** No clues.\n"
    "Conscientiousness: Probably low, given “i love spending money”\n"
    "Extraversion - probably high, given the statement: \"I listen to  Britney Spears!\"\n"
    "Agreeableness: no clue\n"
    "Neuroticism: Probably high (given I am high maintenance.)\n"
)
NO = {"label": "no_clues", "reason": None, "evidence": [], "cites_fact": False}


def test_parse_trait_labels_reads_reasons_and_the_facts_they_cite():
    labels, failures = label.parse_trait_labels(GOOD_REPLY, FACTS)
    assert failures == {}
    assert labels == {
        "O": NO,
        "C": {"label": "low", "reason": "“i love spending money”", "evidence": ["I love spending money."],
              "cites_fact": True},
        "E": {"label": "high", "reason": "the statement: \"I listen to  Britney Spears!\"",
              "evidence": ["I listen to Britney Spears."], "cites_fact": True},
        "A": NO,
        "N": {"label": "high", "reason": "I am high maintenance.", "evidence": ["I am high maintenance."],
              "cites_fact": True},
    }


def test_the_papers_free_text_label_is_valid_and_cites_two_facts():
    """The paper's own example label (Lotfi et al. 2024, §3.1) was rejected when it did not quote a fact verbatim."""
    reply = ("Openness: No clues.\n"
             "Conscientiousness: Probably low, given the statement I love spending money and that they admit to "
             "being high maintenance.\n"
             "Extraversion: Probably high, given their love for pop music and shopping.\n"
             "Agreeableness: No clues.\nNeuroticism: No clues.")
    labels, failures = label.parse_trait_labels(reply, FACTS)
    assert failures == {} and labels["C"]["label"] == "low"
    assert labels["C"]["evidence"] == ["I love spending money.", "I am high maintenance."] and labels["C"]["cites_fact"]
    assert labels["E"] == {"label": "high", "reason": "their love for pop music and shopping.", "evidence": [],
                           "cites_fact": False}  # valid, but it cites none of the persona's facts


@pytest.mark.parametrize("reason, cited", [
    ("given I diet a lot", ["I diet a lot."]),
    ("because they are always on a diet", ["I diet a lot."]),  # its one content word ("a lot" is a function phrase)
    ("given that she listens to Britney Spears", []),          # "listens" is not "listen": 2 of 3 content words
    ("the spending of money they love", ["I love spending money."]),  # all content words, in another order
    ("they go on diets", []),                                 # no stemming: "diets" is not "diet"
])
def test_cited_facts(reason, cited):
    assert label.cited_facts(reason, FACTS) == cited


@pytest.mark.parametrize("old, new, reason, detail", [
    ("Agreeableness: no clue\n", "", "missing_trait", "no line for Agreeableness"),
    ("Agreeableness: no clue\n", "Agreeableness: no clue\nOpenness: Probably high, given I diet a lot.\n",
     "duplicate_trait",
     "Openness is labelled no_clues and high"),
    ("Agreeableness: no clue", "Agreeableness: Maybe high", "unknown_label", "Agreeableness: 'Maybe high'"),
    ("given “i love spending money”", "", "missing_reason", "Conscientiousness: a low/high label needs a reason"),
])
def test_one_bad_trait_keeps_the_other_four(old, new, reason, detail):
    labels, failures = label.parse_trait_labels(GOOD_REPLY.replace(old, new), FACTS)
    (bad,) = failures
    assert failures[bad]["reason"] == reason and detail in failures[bad]["detail"]
    good, _ = label.parse_trait_labels(GOOD_REPLY, FACTS)
    assert labels == {t: lab for t, lab in good.items() if t != bad}  # the four valid answers survive
    assert f"Answer again for {NAMES[bad]} only" in label.whole_repair_prompt(failures)


def test_parse_trait_labels_reads_only_the_asked_traits_and_agrees_on_repeats():
    labels, failures = label.parse_trait_labels(GOOD_REPLY + "Openness: no clues\n", FACTS, traits=["O", "N"])
    assert set(labels) == {"O", "N"} and failures == {}
    with pytest.raises(ValueError, match="non-empty subset"):
        label.parse_trait_labels(GOOD_REPLY, FACTS, traits=["X"])


def test_whole_repair_prompt_names_each_failed_trait():
    text = label.whole_repair_prompt({"C": {"reason": "missing_reason"}, "A": {"reason": "missing_trait"}})
    assert "- Conscientiousness: a 'Probably low'" in text and "- Agreeableness: it has no line." in text
    assert "Answer again for Conscientiousness, Agreeableness only" in text
    with pytest.raises(ValueError, match="no failed traits"):
        label.whole_repair_prompt({})
    assert label.label_repair_prompt("missing_reason").startswith("That answer is not valid:")


def _labels(**levels):
    out = {t: dict(NO) for t in TRAITS}
    out.update({t: {"label": lvl, "reason": FACTS[0], "evidence": [FACTS[0]], "cites_fact": True}
                for t, lvl in levels.items()})
    return out


def test_label_distribution():
    dist = label.label_distribution([_labels(C="low"), _labels(C="high", E="high"), _labels(), _labels(C="low")])
    assert dist["n_personas"] == 4
    assert dist["counts"]["C"] == {"no_clues": 1, "low": 2, "high": 1}
    assert dist["counts"]["E"] == {"no_clues": 3, "low": 0, "high": 1}
    assert dist["no_clues_share"] == {"O": 1.0, "C": 0.25, "E": 0.75, "A": 1.0, "N": 1.0}
    assert dist["no_clues_share_overall"] == pytest.approx(4.0 / 5)
    with pytest.raises(ValueError, match="persona 1: trait O has label 'maybe'"):
        label.label_distribution([_labels(), {**_labels(), "O": {"label": "maybe"}}])
    with pytest.raises(ValueError, match="no labelled personas"):
        label.label_distribution([])


# ---------------------------------------------------------------------------------------------------------------
# 06_synthesize


def test_sample_traits_keeps_labels_and_is_seeded_per_key():
    labels = _labels(C="low", E="high")
    a = synthesize.sample_traits(labels, seed=0, key="persona-1")
    assert a["C"] == "low" and a["E"] == "high" and set(a.values()) <= {"low", "high"}
    assert synthesize.sample_traits(labels, seed=0, key="persona-1") == a
    draws = {tuple(synthesize.sample_traits(labels, seed=0, key=f"p{i}").values()) for i in range(20)}
    assert len(draws) > 1
    assert synthesize.sample_traits(_labels(), 0, "k", choices=("high",)) == dict.fromkeys(TRAITS, "high")
    # relabelling one trait leaves the other traits' draws alone
    b = synthesize.sample_traits(_labels(O="high", C="low", E="high"), seed=0, key="persona-1")
    assert {t: b[t] for t in "AN"} == {t: a[t] for t in "AN"}
    with pytest.raises(ValueError, match="choices must be a non-empty subset"):
        synthesize.sample_traits(labels, 0, "k", choices=("medium",))
    with pytest.raises(ValueError, match="trait O has label None"):
        synthesize.sample_traits({}, 0, "k")


def test_dialogue_messages_carry_both_personas_and_traits():
    traits = {"A": dict.fromkeys(TRAITS, "high"), "B": dict.fromkeys(TRAITS, "low")}
    (msg,) = synthesize.dialogue_messages({"A": ["I bake."], "B": ["I surf."]}, traits, 8, 12, names=("Sam", "Alex"),
                                         template=WHOLE)
    assert "Sam's persona:\n- I bake.\nSam's personality: Openness: high, Conscientiousness: high" in msg["content"]
    assert "Alex's personality: Openness: low" in msg["content"] and "between 8 and 12 utterances" in msg["content"]
    with pytest.raises(ValueError, match="speaker B needs a level for each"):
        synthesize.dialogue_messages({"A": ["x"], "B": ["y"]}, {"A": traits["A"], "B": {"O": "low"}}, 8, 12,
                                     template=WHOLE)
    with pytest.raises(ValueError, match="speaker A has no persona facts"):
        synthesize.dialogue_messages({"A": [], "B": ["y"]}, traits, 8, 12, template=WHOLE)


# ---------------------------------------------------------------------------------------------------------------
# Persona leakage


@pytest.mark.parametrize("utterance, own, expected", [
    ("Me too! I love playing softball.", ["I am a nurse."], ["I love playing softball."]),
    ("So you love playing softball?", ["I am a nurse."], []),                      # addresses the partner
    ("I do not love playing softball.", ["I am a nurse."], []),                   # negated
    ("I love playing softball too.", ["I love playing softball on weekends."], []),  # own fact covers it
    ("I am a nurse too.", [], []),                                                 # one content word: too weak
    ("Nice. My favorite color is yellow!", [], ["My favorite color is yellow."]),
])
def test_leaked_facts(utterance, own, expected):
    other = ["I love playing softball.", "I am a nurse.", "My favorite color is yellow."]
    assert synthesize.leaked_facts(utterance, own, other) == expected


def test_leakage_per_dialogue_and_summary():
    d = {"id": "d", "personas": {"A": ["I love playing softball."], "B": ["My favorite color is yellow."]},
         "turns": [{"speaker": "A", "text": "Hi! My favorite color is yellow."},
                   {"speaker": "B", "text": "Mine is yellow too. I love playing softball."},
                   {"speaker": "A", "text": "Cool."}]}
    assert synthesize.dialogue_leakage(d) == [{"turn": 0, "speaker": "A", "facts": ["My favorite color is yellow."]},
                                              {"turn": 1, "speaker": "B", "facts": ["I love playing softball."]}]
    unknown = {"id": "x", "personas": {"A": [], "B": ["I love playing softball."]},
               "turns": [{"speaker": "A", "text": "I love playing softball."}]}
    assert synthesize.dialogue_leakage(unknown) == []  # A's persona is unknown: not judged
    assert synthesize.leakage_summary([d, unknown]) == {
        "dialogues": 2, "utterances": 4, "leaking_utterances": 2, "leaking_dialogues": 1, "utterance_share": 0.5,
        "dialogue_share": 0.5}
    with pytest.raises(ValueError, match=r"threshold must be in \(0, 1\]"):
        synthesize.leaked_facts("x", [], [], threshold=0)


# ---------------------------------------------------------------------------------------------------------------
# 08_sft


def _synth():
    return {"id": "pt-1", "personas": {"A": ["I bake."], "B": ["I surf."]},
            "traits": {"A": dict.fromkeys(TRAITS, "low"), "B": {"O": "high", "E": "low"}},
            "turns": [{"speaker": "A", "text": "Hi."}, {"speaker": "B", "text": "Hey!"},
                      {"speaker": "A", "text": "Do you surf?"}, {"speaker": "B", "text": "Every day."}]}


def test_sft_rows_carry_persona_and_traits_of_the_responder():
    out, skipped = rows.sft_rows([_synth()])
    assert skipped == {"first_turn": 1}
    assert [r["id"] for r in out] == ["pt-1-t1", "pt-1-t2", "pt-1-t3"]
    assert out[2] == {"id": "pt-1-t3", "prompt": [
        {"role": "system", "content": "You are chatting with a new acquaintance.\nYour persona:\n- I surf.\n"
                                      "Your personality: Openness: high, Extraversion: low"},
        {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hey!"},
        {"role": "user", "content": "Do you surf?"}],
        "completion": [{"role": "assistant", "content": "Every day."}]}
    assert check_rows(out, "train")  # the shape lib.train.sft accepts
    plain, _ = rows.sft_rows([_synth()], use_traits=False, max_history=1)
    assert plain[2]["prompt"] == [{"role": "system", "content": "You are chatting with a new acquaintance.\n"
                                                                "Your persona:\n- I surf."},
                                  {"role": "user", "content": "Do you surf?"}]


def test_personachat_rows_skip_the_speaker_without_persona():
    p = {"id": "p-1", "personas": {"A": [], "B": ["i surf."]},
         "turns": [{"speaker": "A", "text": "hi ."}, {"speaker": "B", "text": "hey !"},
                   {"speaker": "A", "text": "how are you ?"}, {"speaker": "B", "text": "good ."}]}
    out, skipped = rows.sft_rows([p])
    assert [r["id"] for r in out] == ["p-1-t1", "p-1-t3"] and skipped == {"first_turn": 1, "no_persona": 1}
    assert "Your personality" not in out[0]["prompt"][0]["content"]
    both, _ = rows.training_rows("P+PT", [p], [_synth()])
    assert len(both) == 5
    assert len(rows.training_rows("P", [p], [_synth()])[0]) == 2
    assert len(rows.training_rows("PT", [p], [_synth()])[0]) == 3
    with pytest.raises(ValueError, match=r"unknown training set 'T'; expected one of \('P', 'PT', 'P\+PT'\)"):
        rows.training_rows("T", [p], [])
    with pytest.raises(ValueError, match="training set 'PT' has no rows"):
        rows.training_rows("PT", [p], [])


def test_chat_for_turn_errors_and_trait_override():
    with pytest.raises(ValueError, match=r"dialogue pt-1: target turn 0 outside 1\.\.3"):
        rows.chat_for_turn(_synth(), 0)
    d = {**_synth(), "personas": {"A": ["I bake."], "B": []}}
    with pytest.raises(ValueError, match="speaker B of turn 1 has no persona facts"):
        rows.chat_for_turn(d, 1)
    messages, target = rows.chat_for_turn(_synth(), 3, levels={"E": "high"})
    assert messages[0]["content"].endswith("Your personality: Extraversion: high") and target == "Every day."


# ---------------------------------------------------------------------------------------------------------------
# Per-trait labelling (small teachers)

TRAIT_FACTS = ["I love to bake cookies.", "Knitting is my passion."]


def test_trait_label_messages_name_the_trait_and_list_the_facts():
    (msg,) = label.trait_label_messages(TRAIT_FACTS, "E", LABEL_TRAIT)
    assert "person's Extraversion?" in msg["content"] and "- Knitting is my passion." in msg["content"]
    with pytest.raises(ValueError, match="unknown trait 'X'"):
        label.trait_label_messages(TRAIT_FACTS, "X", LABEL_TRAIT)
    with pytest.raises(ValueError, match="unknown placeholders"):
        label.trait_label_messages(TRAIT_FACTS, "E", template="{persona} {level}")


@pytest.mark.parametrize("reply,expected", [
    ("No clues.", NO),
    ("\n**Extraversion:** Probably low, given \"knitting is my passion\"\nbecause...",
     {"label": "low", "reason": "\"knitting is my passion\"", "evidence": ["Knitting is my passion."],
      "cites_fact": True}),
    ("Probably high, because they knit and bake", {"label": "high", "reason": "they knit and bake",
                                                    "evidence": [], "cites_fact": False}),
])
def test_parse_trait_label(reply, expected):
    assert label.parse_trait_label(reply, TRAIT_FACTS, "E") == expected


@pytest.mark.parametrize("reply,reason", [
    ("  \n ", "empty"), ("Openness: No clues.", "unknown_label"), ("Maybe.", "unknown_label"),
    ("Probably high.", "missing_reason"), ("Probably high, given", "missing_reason"),
])
def test_parse_trait_label_rejects(reply, reason):
    with pytest.raises(InvalidReply) as err:
        label.parse_trait_label(reply, TRAIT_FACTS, "E")
    assert err.value.reason == reason


def test_collect_labels_per_trait_answers_and_rejects():
    personas = [{"id": "p1", "facts": TRAIT_FACTS}, {"id": "p2", "facts": ["I fish."]}]
    records = label.trait_label_records(personas)
    assert [r["id"] for r in records[:2]] == ["p1:O", "p1:C"] and len(records) == 10
    low = {"label": "low", "reason": "knitting", "evidence": [TRAIT_FACTS[1]], "cites_fact": True}
    answers = [{"id": "p1:E", "persona": "p1", "trait": "E", **low, "repairs": 1},
               {"id": "p1:O", "persona": "p1", "trait": "O", **NO, "repairs": 0}]
    out = label.collect_labels(personas, answers, rejects=[{"id": "p2:N", "reason": "unknown_label"}])
    assert [o["answered"] for o in out] == [["O", "E"], []] and out[0]["rescued"] == ["E"]
    assert out[0]["labels"]["E"] == low and out[1]["failed"] == {"N": "unknown_label"}
    assert {o["labels"]["C"]["label"] for o in out} == {"no_clues"}
    summary = label.label_summary(out)
    assert summary["traits_asked"] == 10 and summary["traits_answered"] == 2
    assert summary["traits_rescued_by_repair"] == 1 and summary["traits_failed"] == 1
    assert summary["repair_rescue_rate"] == 0.5 and summary["level_labels_citing_fact"] == 1
    with pytest.raises(ValueError, match="bad trait 'X'"):
        label.collect_labels(personas, [{"persona": "p1", "trait": "X", "label": "low"}])


class ScriptedTeacher:
    """A teacher whose first reply gets Conscientiousness wrong and leaves out Neuroticism; a repair fixes C only."""

    name = "scripted"

    def __init__(self):
        self.chats = []

    def generate(self, prompts, sampling):
        self.chats += prompts
        replies = []
        for chat in prompts:
            if len(chat) == 1:
                replies.append("Openness: No clues.\nConscientiousness: Probably low.\nExtraversion: Probably high, "
                               "given their taste in pop music\nAgreeableness: No clues.")
            else:
                replies.append("Conscientiousness: Probably low, given I love spending money.\n"
                               "Openness: Probably high, given nothing")  # O was not asked again: ignored
        return replies


def test_whole_mode_repairs_only_the_failed_traits_and_resumes(tmp_path):
    from lib.teacher import Sampling

    personas = [{"id": "p1", "facts": FACTS}]
    teacher = ScriptedTeacher()
    answers, rejects = tmp_path / "answers.jsonl", tmp_path / "rejects.jsonl"
    run = label.label_whole(personas, LABEL, teacher, Sampling(), answers, rejects,
                            max_repairs=2)
    # round 0 asks five traits, C and N fail; round 1 asks C and N, N fails again; round 2 asks N alone
    assert [r["asked_traits"] for r in run["rounds"]] == [5, 2, 1]
    repair = teacher.chats[1]
    assert [m["role"] for m in repair] == ["user", "assistant", "user"]
    assert "Conscientiousness, Neuroticism only" in repair[-1]["content"]
    labelled = label.collect_labels(personas, read_jsonl(answers))
    (out,) = labelled
    assert out["answered"] == ["O", "C", "E", "A"] and out["rescued"] == ["C"] and out["failed"] == {
        "N": "missing_trait"}
    assert out["labels"]["O"] == NO  # the repair's unasked "Openness: Probably high" did not overwrite it
    assert out["labels"]["E"]["label"] == "high" and not out["labels"]["E"]["cites_fact"]
    assert out["labels"]["C"]["evidence"] == ["I love spending money."] and out["labels"]["N"] == NO
    again = label.label_whole(personas, LABEL, teacher, Sampling(), answers, rejects,
                              max_repairs=2)  # a rerun finds every round on disk
    assert len(teacher.chats) == 3 and all(r["skipped"] == 1 for r in again["rounds"])


def test_convai2_sides_are_joined_into_two_persona_dialogues(tmp_path):
    """The Hub's ConvAI2 copy holds each conversation once per side, each with only its speaker's persona."""
    lines = ["hi , how are you ?", "good , i just got back from surfing .", "nice , i paint .", "cool ."]
    side_b = {"personality": ["i surf."], "utterances": [
        {"history": lines[:1], "candidates": ["x", lines[1]]}, {"history": lines[:3], "candidates": ["x", lines[3]]}]}
    side_a = {"personality": ["i paint."], "utterances": [
        {"history": ["__ SILENCE __"], "candidates": ["x", lines[0]]},
        {"history": ["__ SILENCE __", *lines[:2]], "candidates": ["x", lines[2]]}]}
    lonely = {"personality": ["i am alone."], "utterances": [{"history": ["what ?"], "candidates": ["x", "yes ."]}]}
    pd.DataFrame([side_b, lonely, side_a]).to_parquet(tmp_path / "train.parquet")
    dialogues, rejects = data.load_personachat(tmp_path / "train.parquet")
    assert len(dialogues) == 1 and dialogues[0]["personas"] == {"A": ["i paint."], "B": ["i surf."]}
    assert [t["text"] for t in dialogues[0]["turns"]] == lines
    assert [t["speaker"] for t in dialogues[0]["turns"]] == ["A", "B", "A", "B"]
    assert len(rejects) == 1 and "partner's side" in rejects[0]["reason"]


def test_a_failed_whole_mode_request_fails_the_open_traits():
    personas = [{"id": "p1", "facts": FACTS}]
    first = {"id": "p1#0", "persona": "p1", "round": 0, "traits": list(TRAITS), "reply": "...",
             "labels": {"O": NO}, "failures": {t: {"reason": "missing_trait"} for t in "CEAN"}}
    (out,) = label.collect_labels(personas, [first], rejects=[{"id": "p1#1", "reason": "http_500"}])
    assert out["answered"] == ["O"] and out["failed"] == dict.fromkeys("CEAN", "http_500")
    assert label.label_summary([out])["traits_failed"] == 4
