"""BIG5-CHAT data logic: SODA parsing, units, prompts, expert rows, SFT rows and DPO pairs."""
import json
from pathlib import Path

import pandas as pd
import pytest

from lib import big5chat
from lib.big5chat import data as big5data
from lib.big5chat import rows as big5rows

ROOT = Path(__file__).resolve().parents[1]

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "soda" / "soda_20.jsonl"
TEMPLATE = "Imagine you are {agent}, with {partner}. {narrative}\n{history}\nReply within 50 words."


def _soda_line(index=7, dialogue="['Hi Bo.'\n \"It's you, Al!\" 'Yes.']", speakers="['Al' 'Bo' 'Al']") -> str:
    return json.dumps({"original_index": index, "narrative": "Al meets Bo.", "literal": "", "PersonX": "Al",
                       "PersonY": "Bo", "dialogue": dialogue, "speakers": speakers})


def test_soda_numpy_reprs_are_parsed_without_eval(tmp_path):
    path = tmp_path / "soda.jsonl"
    path.write_text(_soda_line() + "\n")
    (sc,) = big5data.load_soda(path)
    assert sc["scenario_id"] == "soda-7"
    assert sc["turns"] == [{"speaker": "Al", "text": "Hi Bo."}, {"speaker": "Bo", "text": "It's you, Al!"},
                           {"speaker": "Al", "text": "Yes."}]


@pytest.mark.parametrize("line, message", [
    (_soda_line(speakers="['Al' 'Bo']"), r"soda.jsonl:1: 3 dialogue turns but 2 speakers"),
    (json.dumps({"narrative": "x"}), r"soda.jsonl:1: missing SODA fields \['dialogue'"),
    ("{not json", r"soda.jsonl:1: not JSON"),
    (_soda_line(dialogue="Hi Bo."), r"dialogue is not a list of strings"),
])
def test_soda_bad_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "soda.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        big5data.load_soda(path)


def test_soda_missing_or_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="SODA file not found"):
        big5data.load_soda(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no SODA scenarios"):
        big5data.load_soda(tmp_path / "empty.jsonl")


@pytest.mark.skipif(not MIRROR.is_file(), reason="data mirror not beside the repository")
def test_the_mirror_parses():
    scenarios = big5data.load_soda(MIRROR)
    assert len(scenarios) == 20
    assert all(len(s["turns"]) >= 6 for s in scenarios)
    first = scenarios[0]
    assert first["scenario_id"] == "soda-2517336" and (first["PersonX"], first["PersonY"]) == ("Sharif", "Karis")
    assert first["turns"][0] == {"speaker": "Sharif", "text": "Hi Karis. I'm so happy I was able to help you out today."}
    assert [t["speaker"] for t in first["turns"]] == ["Sharif", "Karis"] * 3
    assert len(big5data.reply_units(scenarios)) == 63
    sample = big5data.load_soda(MIRROR, limit=3, seed=1)
    assert len(sample) == 3 and sample == big5data.load_soda(MIRROR, limit=3, seed=1)  # seeded
    order = [s["scenario_id"] for s in scenarios]
    assert sorted(order.index(s["scenario_id"]) for s in sample) == [order.index(s["scenario_id"]) for s in sample]
    assert sample != big5data.load_soda(MIRROR, limit=3, seed=2)


def test_soda_parquet_as_on_the_hub(tmp_path):
    """allenai/soda's parquet split (lists as numpy arrays) reads like the mirror's JSONL."""
    rows = [json.loads(line) for line in MIRROR.read_text().splitlines()[:4]]
    frame = pd.DataFrame(rows)
    for col in ("dialogue", "speakers"):
        frame[col] = [big5data._string_list(v, col) for v in frame[col]]
    frame.to_parquet(tmp_path / "train.parquet")
    assert big5data.load_soda(tmp_path / "train.parquet") == big5data.load_soda(MIRROR, limit=None)[:4]
    assert len(big5data.load_soda(tmp_path / "train.parquet", limit=2)) == 2
    frame.drop(columns=["speakers"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"missing SODA columns \['speakers'\]"):
        big5data.load_soda(tmp_path / "bad.parquet")


def _scenario():
    turns = [{"speaker": s, "text": f"turn {i}"} for i, s in enumerate(["Al", "Bo", "Al", "Bo", "Al"])]
    return {"scenario_id": "soda-1", "narrative": "N.", "PersonX": "Al", "PersonY": "Bo", "turns": turns}


def test_units_are_the_agents_later_turns_with_their_history():
    units = big5data.reply_units([_scenario()])
    assert [u["unit_id"] for u in units] == ["soda-1/t2", "soda-1/t4"]
    assert [t["text"] for t in units[0]["history"]] == ["turn 0", "turn 1"]
    assert len(big5data.reply_units([_scenario()], max_units_per_scenario=1)) == 1


def test_prompts_carry_the_papers_wording():
    unit = big5data.reply_units([_scenario()])[0]
    base = big5chat.dialogue_messages(unit, TEMPLATE)
    assert base == [{"role": "user", "content": "Imagine you are Al, with Bo. N.\nAl: turn 0\nBo: turn 1\n"
                                                "Reply within 50 words."}]
    # The expert reads its instruction alone, as the user turn (the paper's code): never the dialogue.
    assert big5chat.expert_messages("E", "low") == [
        {"role": "user", "content": "Help me complete the sentence with certain Big Five Personality: Extraversion - low"}]
    assert big5chat.persona_instruction("N", "high") == (
        "You are a helpful assistant with the following Big Five personality traits: Neuroticism - high")
    with pytest.raises(ValueError, match=r"unknown placeholders \['speaker'\]"):
        big5chat.dialogue_messages(unit, "Imagine you are {speaker}.")
    with pytest.raises(ValueError, match="unknown trait 'X'"):
        big5chat.persona_instruction("X", "high")
    with pytest.raises(ValueError, match="unknown level 'mid'"):
        big5chat.expert_instruction("O", "mid")


def test_the_pipelines_template_fills_every_element():
    """The prompt file the pipeline runs (params/prompts/big5chat_dialogue.txt), not a copy of it."""
    unit = big5data.reply_units([_scenario()])[1]
    (msg,) = big5chat.dialogue_messages(unit, (ROOT / "params/prompts/big5chat_dialogue.txt").read_text())
    text = msg["content"]
    assert text.startswith("Imagine you are Al, talking with Bo. Here is what is happening:\nN.")
    assert "Al: turn 0\nBo: turn 1\nAl: turn 2\nBo: turn 3\n" in text and "turn 4" not in text
    assert "within 50 words" in text and "{" not in text


def test_expert_rows_and_level_split():
    df = pd.DataFrame({"text": ["a b c d", "e f", "g"], "O": [1, 0, 1], "C": [0, 0, 1], "E": [1, 1, 1],
                       "A": [0, 0, 0], "N": [1, 1, 0]})
    assert big5data.split_by_trait_level(df, "O", "high").text.tolist() == ["a b c d", "g"]
    assert big5data.split_by_trait_level(df, "O", "low").text.tolist() == ["e f"]
    rows = big5rows.expert_rows(["a b c d", "  "], "O", "high", max_words=2)
    assert rows == [{"prompt": [{"role": "user", "content": big5chat.expert_instruction("O", "high")}],
                     "completion": [{"role": "assistant", "content": "a b"}]}]
    # Decoding prompt == training prompt: the expert is steered from exactly what it was trained on.
    assert rows[0]["prompt"] == big5chat.expert_messages("O", "high")
    with pytest.raises(ValueError, match="no non-empty texts"):
        big5rows.expert_rows([" "], "O", "high")
    with pytest.raises(ValueError, match="no label column 'O'"):
        big5data.split_by_trait_level(df.drop(columns="O"), "O", "high")


def _gen(unit, scenario, trait, level, reply):
    return {"unit_id": unit, "scenario_id": scenario, "trait": trait, "level": level, "reply": reply,
            "messages": [{"role": "user", "content": f"prompt of {unit}"}]}


def test_sft_rows_use_the_instruction_and_skip_empty_replies():
    rows, skipped = big5rows.sft_rows([_gen("u1", "s1", "A", "low", "No."), _gen("u1", "s1", "A", "high", " ")])
    assert skipped == 1
    assert rows == [{"prompt": [{"role": "system", "content": big5chat.persona_instruction("A", "low")},
                                {"role": "user", "content": "prompt of u1"}],
                     "completion": [{"role": "assistant", "content": "No."}]}]


def test_dpo_pairs_stay_within_a_unit_and_count_skips():
    gens = [
        _gen("s1/t2", "s1", "E", "high", "Party!"), _gen("s1/t2", "s1", "E", "low", "Home."),
        # same turn index in another scenario: must never be paired with s1's replies
        _gen("s2/t2", "s2", "E", "high", "Dance!"),
        _gen("s3/t2", "s3", "E", "high", "Same."), _gen("s3/t2", "s3", "E", "low", "Same."),
        _gen("s4/t2", "s4", "E", "high", "Hi"), _gen("s4/t2", "s4", "E", "low", ""),
    ]
    pairs, stats = big5rows.dpo_pairs(gens)
    assert stats == {"groups_used": 1, "missing_level": 1, "identical": 1, "empty_reply": 1}
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [("Party!", "Home."),
                                                                                          ("Home.", "Party!")]
    assert pairs[0]["prompt"][0]["content"].endswith("Extraversion - high")
    assert pairs[1]["prompt"][0]["content"].endswith("Extraversion - low")
    assert all(p["prompt"][1]["content"] == "prompt of s1/t2" for p in pairs)
    assert [(p["unit_id"], p["trait"], p["target"]) for p in pairs] == [("s1/t2", "E", "high"), ("s1/t2", "E", "low")]


def test_dpo_pairs_refuse_a_unit_under_two_scenarios_or_doubled_levels():
    with pytest.raises(ValueError, match="appears under scenarios 's1' and 's2'"):
        big5rows.dpo_pairs([_gen("u/t2", "s1", "E", "high", "a"), _gen("u/t2", "s2", "E", "low", "b")])
    with pytest.raises(ValueError, match="two replies at level 'high'"):
        big5rows.dpo_pairs([_gen("u/t2", "s1", "E", "high", "a"), _gen("u/t2", "s1", "E", "high", "b")])


def test_split_units_is_deterministic_and_keeps_units_whole():
    ids = [f"soda-{i}/t2" for i in range(200)]
    split = big5data.split_units(ids + ids, 0.25, seed=0)
    assert set(split) == set(ids) and split == big5data.split_units(ids, 0.25, seed=0)
    assert split != big5data.split_units(ids, 0.25, seed=1)
    assert 25 <= sum(v == "test" for v in split.values()) <= 75
    with pytest.raises(ValueError, match="test_fraction"):
        big5data.split_units(ids, 1.0)


def test_demo_prompt_has_instruction_description_and_examples():
    (msg,) = big5chat.demo_messages("C", "low", big5chat.TRAIT_DESCRIPTIONS, ["I forgot again.", " "])
    assert msg["role"] == "system"
    lines = msg["content"].split("\n")
    assert lines[0] == big5chat.persona_instruction("C", "low") + "."
    assert "spontaneous" in lines[1] and lines[-1] == "- I forgot again."
    assert len(lines) == 4


def test_released_rows_become_generations_that_pair_by_prompt(tmp_path):
    """wenkai-li/big5_chat's CSV (trait, level, train_input, train_output) feeds 08_sft and 09_dpo unchanged."""
    rows = pd.DataFrame({"trait": ["openness", "Openness", "E", "agreeableness"],
                         "level": ["high", "low", "HIGH", "low"],
                         "train_input": ["Talk about art.", "Talk about art.", "A party.", "A party."],
                         "train_output": ["I adore new ideas.", "I like what I know.", "Let's dance!", "No."]})
    rows.to_csv(tmp_path / "big5_chat_dataset.csv", index=False)
    gens = big5data.load_released(tmp_path / "big5_chat_dataset.csv")
    assert [(g["trait"], g["level"]) for g in gens] == [("O", "high"), ("O", "low"), ("E", "high"), ("A", "low")]
    assert gens[0]["unit_id"] == gens[1]["unit_id"] != gens[2]["unit_id"]
    sft, skipped = big5rows.sft_rows(gens)
    assert skipped == 0 and sft[0]["prompt"][-1]["content"] == "Talk about art."
    pairs, stats = big5rows.dpo_pairs(gens)
    assert len(pairs) == 2 and stats["missing_level"] == 2  # openness pairs both ways; E and A have one level each
    assert [g["trait"] for g in big5data.load_released(tmp_path / "big5_chat_dataset.csv", traits=["E"])] == ["E"]
    rows.assign(trait=["openness", "humour", "E", "A"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"row 1: trait 'humour'"):
        big5data.load_released(tmp_path / "bad.csv")
    rows.drop(columns=["train_output"]).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(ValueError, match=r"missing columns \['train_output'\]"):
        big5data.load_released(tmp_path / "cols.csv")


def test_heldout_texts_per_trait_level_seeded_and_refused_when_nothing_would_train():
    texts = pd.DataFrame({"trait": ["O"] * 6 + ["C"] * 3, "level": ["high", "low"] * 3 + ["high"] * 3,
                          "text": [f"t{i}" for i in range(9)]})
    mask = big5data.heldout_texts(texts, 1, seed=0)
    assert mask.groupby([texts.trait, texts.level]).sum().to_dict() == {("C", "high"): 1, ("O", "high"): 1,
                                                                        ("O", "low"): 1}
    assert mask.equals(big5data.heldout_texts(texts, 1, seed=0))
    assert not big5data.heldout_texts(texts, 0).any()
    with pytest.raises(ValueError, match="Conscientiousness - high: 3 texts, cannot hold out 3"):
        big5data.heldout_texts(texts, 3)
