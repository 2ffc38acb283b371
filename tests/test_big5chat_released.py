"""BIG5-CHAT's released replies: loading, the split, SFT rows, DPO pairs, the held-out scenarios and the judge."""
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.big5chat import persona_instruction, released
from lib.traits import LEVELS, NAMES, TRAITS

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "big5chat"
PROMPT = ("Imagine you are Jo, your task is to act/speak as Jo would.\nHere is the context of this interaction:\n```\n"
          "Scenario: Al lends Jo a pen.\nParticipants: Al and Jo\nJo's big five personality description: The person has "
          "high extraversion.\nYou are a very friendly person.\n```\n.\n\nConversation starts:\nTurn #0: Al said: "
          "\"Here.\"\n\nYou are at Turn #1.\n\nPlease generate your argument directly and concisely within 50 words:")


def _replies_csv(path: Path, per_cell: int = 6, **override) -> Path:
    rows = [{"": i, "trait": NAMES[t], "level": lvl, "big5_chat": f"{t} {lvl} reply number {i}"}
            for t in TRAITS for lvl in LEVELS for i in range(per_cell)]
    frame = pd.DataFrame(rows)
    for col, value in override.items():
        frame.loc[0, col] = value
    frame.to_csv(path, index=False)
    return path


def _prompted(reply: str, trait: str = "E", level: str = "high") -> list[dict]:
    return [{"scenario_id": "b5s-x", "trait": trait, "level": level, "prompt": PROMPT, "reply": reply, "turn0": "Here."}]


def test_the_mirror_loads_with_its_real_counts_and_every_prompted_reply_among_them():
    replies, drops = released.load_replies(SHARED / "human_eval_big5_chat.csv")
    prompted = released.load_prompted(SHARED / "big5_chat_sampled.csv")
    baseline = released.load_baseline(SHARED / "llama3_70b.jsonl")
    assert len(replies) == 9996 and drops == {"empty_reply": 4}  # the mirror's README: 10,000 with 4 empty
    assert len(prompted) == 200 and len(baseline) == 200
    assert {p["scenario_id"] for p in prompted} == {b["scenario_id"] for b in baseline}
    split, counts = released.assign_splits(replies, prompted, 0.2, 0, 50)
    assert counts["prompted_found"] == 200
    assert sum(r["split"] == "scenario" for r in split) >= 200  # a prompted reply text may repeat in its cell
    for cell in counts["by_cell"].values():
        assert cell["scenario"] >= 20 and 0.15 < cell["test"] / (cell["train"] + cell["test"]) < 0.25


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="released BIG5-CHAT replies not found"):
        released.load_replies(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"trait": ["Openness"], "level": ["high"], "text": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad\.csv: missing columns \['big5_chat'\]|missing columns"):
        released.load_replies(bad)
    with pytest.raises(ValueError, match=r"row 0: unknown trait 'Honesty'"):
        released.load_replies(_replies_csv(tmp_path / "t.csv", trait="Honesty"))
    with pytest.raises(ValueError, match=r"row 0: unknown level 'medium'"):
        released.load_replies(_replies_csv(tmp_path / "l.csv", level="medium"))
    records, drops = released.load_replies(_replies_csv(tmp_path / "e.csv", big5_chat="  "))
    assert drops == {"empty_reply": 1} and len(records) == 59  # an empty reply is a counted drop
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"trait": "o"}\n')
    with pytest.raises(ValueError, match=r"b\.jsonl:1: missing fields"):
        released.load_baseline(jsonl)
    jsonl.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"b\.jsonl:1: not JSON"):
        released.load_baseline(jsonl)


def test_hub_rows_keep_their_prompt_and_letters_or_names_both_work(tmp_path):
    path = tmp_path / "hub.csv"
    pd.DataFrame({"trait": ["o", "Openness"], "level": ["HIGH", "low"], "train_input": [PROMPT, ""],
                  "train_output": ["a", "b"]}).to_csv(path, index=False)
    records, _ = released.load_replies(path)
    assert [r["trait"] for r in records] == ["O", "O"] and [r["level"] for r in records] == ["high", "low"]
    assert records[0]["prompt"] == PROMPT and records[1]["prompt"] is None


def test_a_cell_too_small_for_the_split_is_an_error_naming_it(tmp_path):
    records, _ = released.load_replies(_replies_csv(tmp_path / "r.csv", per_cell=3))
    with pytest.raises(ValueError, match=r"(Openness|Conscientiousness|Extraversion|Agreeableness|Neuroticism) - "
                                         r"(high|low): \d+ (train|test) replies, fewer than min_per_cell 2"):
        released.assign_splits(records, [], 0.5, 0, 2, source="r.csv")
    with pytest.raises(ValueError, match=r"r\.csv has too few rows for the split"):
        released.assign_splits(records, [], 0.5, 0, 2, source="r.csv")


def test_the_split_is_stable_and_keeps_prompted_replies_out_of_training(tmp_path):
    records, _ = released.load_replies(_replies_csv(tmp_path / "r.csv", per_cell=40))
    held = records[5]
    prompted = _prompted(held["reply"], held["trait"], held["level"])
    a, _ = released.assign_splits(records, prompted, 0.25, 0, 1)
    b, _ = released.assign_splits(records[::-1], prompted, 0.25, 0, 1)  # order does not move a reply
    assert {r["reply_id"]: r["split"] for r in a} == {r["reply_id"]: r["split"] for r in b}
    assert next(r for r in a if r["reply_id"] == held["reply_id"])["split"] == "scenario"
    c, _ = released.assign_splits(records, prompted, 0.25, 1, 1)
    assert [r["split"] for r in a] != [r["split"] for r in c]  # the seed matters
    train = released.sample_per_cell(a, "train", 3, 0)
    assert pd.Series([(r["trait"], r["level"]) for r in train]).value_counts().max() == 3
    assert released.sample_per_cell(a, "train", 3, 0) == train
    assert all(r["split"] == "train" for r in train)


def test_the_neutral_prompt_drops_the_level_and_keeps_the_scenario():
    neutral = released.neutral_prompt(PROMPT)
    assert "extraversion" not in neutral and "friendly" not in neutral
    assert "Scenario: Al lends Jo a pen." in neutral and 'Turn #0: Al said: "Here."' in neutral
    assert neutral.count("```") == 2
    assert released.neutral_prompt("no description here") == "no description here"


def test_sft_rows_put_the_level_in_the_instruction_only():
    rows = released.sft_rows([{"trait": "E", "level": "low", "reply": "Fine.", "prompt": None},
                              {"trait": "E", "level": "high", "reply": "Yay!", "prompt": PROMPT}])
    assert rows[0]["prompt"] == [{"role": "system", "content": persona_instruction("E", "low")},
                                 {"role": "user", "content": released.NEUTRAL_USER_TURN}]
    assert rows[1]["prompt"][1]["content"] == released.neutral_prompt(PROMPT)
    assert rows[1]["completion"] == [{"role": "assistant", "content": "Yay!"}]


def test_dpo_pairs_are_mirrored_twins_of_one_trait_under_one_user_turn():
    recs = [{"reply_id": f"{t}{lvl}{i}", "trait": t, "level": lvl, "reply": f"{t}-{lvl}-{i}", "prompt": None}
            for t in ("O", "N") for lvl in LEVELS for i in range(3)]
    recs.append({"reply_id": "extra", "trait": "O", "level": "high", "reply": "O-high-spare", "prompt": None})
    pairs, stats = released.dpo_pairs(recs, seed=0)
    assert stats == {"unpaired": 1, "groups_used": 6} and len(pairs) == 12
    for p in pairs:
        target, trait = p["target"], p["trait"]
        assert p["prompt"][0]["content"] == persona_instruction(trait, target)
        assert p["chosen"][0]["content"].startswith(f"{trait}-{target}-")
        assert p["rejected"][0]["content"].startswith(f"{trait}-{'low' if target == 'high' else 'high'}-")
    twins = {}
    for p in pairs:
        twins.setdefault(p["unit_id"], []).append(p)
    assert all(len(t) == 2 and t[0]["chosen"] == t[1]["rejected"] for t in twins.values())
    assert released.dpo_pairs(recs, seed=0) == (pairs, stats)


def test_twin_batches_keep_each_units_twins_in_one_batch_of_the_real_sampler():
    from transformers import Trainer, TrainingArguments

    recs = [{"reply_id": f"{t}{lvl}{i}", "trait": t, "level": lvl, "reply": f"{t}-{lvl}-{i}", "prompt": None}
            for t in ("O", "N", "A") for lvl in LEVELS for i in range(5)]
    pairs, _ = released.dpo_pairs(recs, seed=0)
    ordered = released.twin_batches(pairs, seed=3)
    assert sorted(map(str, ordered)) == sorted(map(str, pairs))  # the same pairs
    assert [p["trait"] for p in ordered] != [p["trait"] for p in pairs]  # units shuffled across traits
    assert released.twin_batches(pairs, seed=3) == ordered and released.twin_batches(pairs, seed=4) != ordered
    args = released.twin_batch_args({"per_device_train_batch_size": 4, "seed": 0})
    # the sampler transformers' Trainer builds from these arguments, over the ordered rows
    trainer = Trainer.__new__(Trainer)
    trainer.args = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True, **args)
    sampler = Trainer._get_train_sampler(trainer, ordered)
    order = list(sampler)
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    for batch in batches:
        units = Counter(ordered[i]["unit_id"] for i in batch)
        assert set(units.values()) == {2}, units  # whole units only: both twins of each
    with pytest.raises(ValueError, match="even per_device_train_batch_size"):
        released.twin_batch_args({"per_device_train_batch_size": 3})
    with pytest.raises(ValueError, match="not a pair of mirrored twins"):
        released.twin_batches(pairs[1:], seed=0)


def test_scenarios_are_sampled_per_cell_with_the_level_removed():
    prompted = [{"scenario_id": f"s{t}{lvl}{i}", "trait": t, "level": lvl, "prompt": PROMPT, "reply": "r",
                 "turn0": "x"} for t in TRAITS for lvl in LEVELS for i in range(4)]
    rows = released.scenarios(prompted, 2, 0)
    assert len(rows) == 20 and all("extraversion" not in r["user"] for r in rows)
    assert len(released.scenarios(prompted, None, 0)) == 40


def _fake_records(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    words = {"high": ["wonderful", "party", "friends", "excited"], "low": ["alone", "quiet", "tired", "home"]}
    out = []
    for t in TRAITS:
        for lvl in LEVELS:
            for _ in range(n):
                out.append({"trait": t, "level": lvl, "reply": " ".join(rng.choice(words[lvl], 5)) + " today"})
    return out


def test_the_judge_reads_levels_it_was_trained_on_and_refuses_an_unknown_trait():
    judge = released.LevelJudge(max_features=100).fit(_fake_records(20))
    acc = judge.accuracy(_fake_records(10, seed=1))
    assert (acc["mean"] == 1.0).all() and list(acc.index) == list(TRAITS)
    assert judge.p_high(["party friends wonderful"], "E")[0] > 0.5 > judge.p_high(["alone at home"], "E")[0]
    with pytest.raises(ValueError, match="no model for trait 'X'"):
        judge.p_high(["x"], "X")
    with pytest.raises(ValueError, match="needs high and low replies"):
        released.LevelJudge().fit([r for r in _fake_records(3) if r["level"] == "high"])


def test_gaps_are_paired_by_scenario_and_training_against_prompting_gets_a_verdict():
    rows = []
    for s in range(12):
        for method, gap in (("sft", 0.6), ("instruct", 0.0)):
            noise = 0.01 * (s % 3)
            rows += [{"method": method, "scenario_id": f"s{s}", "trait": "A", "level": "high", "p_high": 0.5 + gap / 2 + noise},
                     {"method": method, "scenario_id": f"s{s}", "trait": "A", "level": "low", "p_high": 0.5 - gap / 2 + noise}]
    frame = pd.DataFrame(rows)
    gaps = released.level_gaps(frame)
    assert gaps.loc[("sft", "A"), "mean"] == pytest.approx(0.6) and gaps.loc[("sft", "A"), "n"] == 12
    assert gaps.loc[("instruct", "A"), "mean"] == pytest.approx(0.0, abs=1e-12)
    versus = released.gap_difference(frame, "sft", "instruct")
    assert versus.loc["A", "mean"] == pytest.approx(0.6)
    assert versus.loc["A", "verdict"] == "as the paper, beyond the interval"
    reversed_ = released.gap_difference(frame, "instruct", "sft")
    assert reversed_.loc["A", "verdict"] == "reversed, beyond the interval"
    with pytest.raises(ValueError, match="no replies at level"):
        released.level_gaps(frame[frame.level == "high"])


def test_released_rows_written_by_01_scrape_roundtrip_through_jsonl(tmp_path):
    records, _ = released.load_replies(_replies_csv(tmp_path / "r.csv", per_cell=8))
    split, _ = released.assign_splits(records, [], 0.5, 0, 1)
    path = tmp_path / "replies.jsonl"
    pd.DataFrame(split).to_json(path, orient="records", lines=True)
    back = [json.loads(line) for line in path.read_text().splitlines()]
    assert released.sft_rows(back[:3]) == released.sft_rows(split[:3])


def test_a_scenarios_high_and_low_replies_stay_together_through_the_split_and_the_sample():
    """Where prompts were released (the Hub data), a trait's two levels answer the same scenarios: the split and the
    per-cell sample must keep both replies of a scenario together, or DPO has nothing to pair."""
    other = PROMPT.replace("high extraversion.\nYou are a very friendly person.", "low extraversion.\nYou are shy.")
    recs = []
    for k in range(40):
        scene = PROMPT.replace("Al lends Jo a pen.", f"Al lends Jo pen number {k}.")
        low = other.replace("Al lends Jo a pen.", f"Al lends Jo pen number {k}.")
        for level, prompt in (("high", scene), ("low", low)):
            reply = f"{level} reply {k}"
            recs.append({"reply_id": released.reply_id("E", level, reply), "trait": "E", "level": level,
                         "reply": reply, "prompt": prompt})
    split, _ = released.assign_splits(recs, [], 0.3, 0, 0)
    side = {}
    for r in split:
        side.setdefault(released.pair_key(r), set()).add(r["split"])
    assert len(side) == 40 and all(len(v) == 1 for v in side.values())  # one side per scenario, both levels on it
    train = released.sample_per_cell(split, "train", 5, 0)
    assert len(train) == 10
    pairs, stats = released.dpo_pairs(train)
    assert stats == {"unpaired": 0, "groups_used": 5} and len(pairs) == 10
