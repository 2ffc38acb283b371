"""DPG labelling (lib.dpg.label), the personality assessment: trait knowledge, prompts, reply parsing, the
log-likelihood reading, reliability, outliers and P.S.D.C."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.dpg import label
from lib.psychometrics import likert_loglik
from lib.teacher import InvalidReply
from lib.traits import NAMES, TRAITS

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "params" / "prompts"
KNOWLEDGE_TEMPLATE = (PROMPTS / "dpg_assess_knowledge.txt").read_text()
VANILLA_TEMPLATE = (PROMPTS / "dpg_assess_vanilla.txt").read_text()


def _sample(sample_id="hp:1:ron-weasley", character="Ron Weasley", texts=("one two three", "four five six")):
    speakers = [character, "Harry Potter"] * len(texts)
    return {"sample_id": sample_id, "character": character,
            "turns": [{"speaker": s, "text": t} for s, t in zip(speakers, texts)]}


@pytest.fixture(scope="module")
def knowledge():
    return label.load_knowledge(PROMPTS / "dpg_knowledge.yaml")


def test_knowledge_file_has_every_trait_and_the_neo_facets(knowledge):
    assert list(knowledge) == list(TRAITS)
    assert all(knowledge[t]["name"] == NAMES[t] and len(knowledge[t]["facets"]) == 6 for t in TRAITS)
    assert [f["name"] for f in knowledge["O"]["facets"]] == ["fantasy", "aesthetics", "feelings", "actions", "ideas",
                                                            "values"]
    assert [f["name"] for f in knowledge["N"]["facets"]][1] == "angry hostility"


def test_knowledge_missing_facet_or_trait_is_named(tmp_path):
    path = tmp_path / "k.yaml"
    facets = "".join(f"    - {{name: f{i}, description: d}}\n" for i in range(6))
    body = {t: f"{t}:\n  name: {NAMES[t]}\n  description: x\n  facets:\n{facets}" for t in TRAITS}
    path.write_text("".join(body.values()))
    assert len(label.load_knowledge(path)["A"]["facets"]) == 6
    path.write_text("".join(v for t, v in body.items() if t != "C"))
    with pytest.raises(ValueError, match=r"missing \['C'\]"):
        label.load_knowledge(path)
    path.write_text("".join(body.values()).replace("    - {name: f5, description: d}\n", "", 1))
    with pytest.raises(ValueError, match="O must list 6 facets, has 5"):
        label.load_knowledge(path)
    path.write_text("O:\n  name: [Openness\n")  # a YAML syntax error names the file, not only the parser's line
    with pytest.raises(ValueError, match=r"k\.yaml: not valid YAML"):
        label.load_knowledge(path)


def test_knowledge_prompt_carries_the_facets_and_vanilla_only_the_trait(knowledge):
    sample = _sample()
    (msg,) = label.assessment_chats(sample, "E", KNOWLEDGE_TEMPLATE, knowledge)
    assert msg["role"] == "user"
    text = msg["content"]
    assert "Extraversion of Ron Weasley" in text and "- Gregariousness: " in text
    assert knowledge["E"]["description"] in text
    assert "Ron Weasley: one two three\nHarry Potter: four five six" in text
    assert '"result"' in text and "{" not in text.replace('{"analysis"', "")  # every field filled
    (vanilla,) = label.assessment_chats(sample, "E", VANILLA_TEMPLATE)
    assert "Extraversion" in vanilla["content"] and "Gregariousness" not in vanilla["content"]
    (score_only,) = label.assessment_chats(sample, "E", VANILLA_TEMPLATE, answer="score")
    assert score_only["content"].endswith("Answer with the score only: a single integer from -5 to 5.")
    with pytest.raises(ValueError, match="pass the trait knowledge"):
        label.assessment_chats(sample, "E", KNOWLEDGE_TEMPLATE)
    with pytest.raises(ValueError, match=r"unknown placeholders \['mood'\]"):
        label.assessment_chats(sample, "E", "{mood} {dialogue} {answer_format}")
    with pytest.raises(ValueError, match="unknown trait"):
        label.assessment_chats(sample, "X", VANILLA_TEMPLATE)


def test_dialogue_is_trimmed_to_whole_turns_from_the_start():
    turns = _sample(texts=("a b c", "d e f", "g h i"))["turns"]
    assert label.render_dialogue(turns, 7) == ("Ron Weasley: a b c\nHarry Potter: d e f", 1)
    assert label.render_dialogue(turns, 9) == ("Ron Weasley: a b c\nHarry Potter: d e f\nRon Weasley: g h i", 0)
    assert label.render_dialogue(turns, 2) == ("Ron Weasley: a b ...", 2)  # a first turn over budget is cut
    (msg,) = label.assessment_chats({"character": "Ron Weasley", "turns": turns}, "O", VANILLA_TEMPLATE,
                                    max_words=7)
    assert "Ron Weasley: g h i" not in msg["content"] and "goes on for 1 more turn, not shown" in msg["content"]


@pytest.mark.parametrize("reply, score", [
    ('{"analysis": "Outgoing and loud.", "result": 3}', 3),
    ('```json\n{"analysis": "Quiet.", "result": -2}\n```', -2),
    ('Here is my answer: {"analysis": "Uses {braces} and \\"quotes\\".", "result": "4"} Hope it helps.', 4),
    ('{"analysis": "x", "result": 5.0}', 5),
    ('{"result": "+1"}', 1),
    ('{"Result": 0}', 0),
    ('{"result": -5}', -5),
])
def test_parse_assessment_accepts(reply, score):
    assert label.parse_assessment(reply) == score


@pytest.mark.parametrize("reply, reason", [
    ("I would say 3.", "not_json"),
    ("", "not_json"),
    ("[1, 2]", "not_json"),
    ("{'result': 3}", "not_json"),
    ('{"analysis": "no score"}', "no_result"),
    ('{"result": 2.5}', "not_integer"),
    ('{"result": "high"}', "not_integer"),
    ('{"result": true}', "not_integer"),
    ('{"result": null}', "not_integer"),
    ('{"result": 6}', "out_of_range"),
    ('{"result": "-7"}', "out_of_range"),
])
def test_parse_assessment_rejects_with_reason(reply, reason):
    with pytest.raises(InvalidReply) as info:
        label.parse_assessment(reply)
    assert info.value.reason == reason


def test_records_and_parse_record_fit_run_records():
    records = label.assessment_records([_sample()], traits=["O", "N"], run=2)
    assert [r["id"] for r in records] == ["hp:1:ron-weasley/O/2", "hp:1:ron-weasley/N/2"]
    out = label.parse_record(records[1], '{"analysis": " Nervous. ", "result": 2}')
    assert out == {"sample_id": "hp:1:ron-weasley", "character": "Ron Weasley", "trait": "N", "run": 2, "score": 2,
                   "analysis": "Nervous."}


def test_score_table_one_row_per_sample_runs_averaged():
    rows = [{"sample_id": "b", "character": "Ron", "trait": t, "score": 1, "run": 0} for t in TRAITS]
    rows += [{"sample_id": "b", "character": "Ron", "trait": "O", "score": 4, "run": 1},
             {"sample_id": "a", "character": "Harry", "trait": "N", "score": -3, "run": 0}]
    table = label.score_table(rows)
    assert list(table.columns) == ["sample_id", "character", *TRAITS]
    assert table["sample_id"].tolist() == ["b", "a"]
    assert table.loc[0, "O"] == 2.5 and table.loc[0, "N"] == 1.0
    assert math.isnan(table.loc[1, "O"]) and table.loc[1, "N"] == -3
    runs, ids, run_ids = label.score_runs(rows)
    assert runs.shape == (2, 2, 5) and ids == ["b", "a"] and run_ids == [0, 1]
    assert runs[1, 0, 0] == 4 and np.isnan(runs[1, 0, 1])
    with pytest.raises(ValueError, match="two scores for sample 'b', trait O, run 1"):
        label.score_table(rows + [rows[5]])


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_loglik_scores_are_the_softmax_mean_of_the_option_logliks(tiny):
    model, tokenizer = tiny
    template = "Assess the {trait_name} of {character}.\n{dialogue}\n{answer_format}"
    chats = [label.assessment_chats(_sample(), t, template, answer="score") for t in ("O", "N")]
    chats.append(label.assessment_chats(_sample(texts=("walk by the river",)), "E", template, answer="score"))
    expected, best = label.loglik_scores(model, tokenizer, chats, batch_size=2)
    logp = likert_loglik(model, tokenizer, chats, label.SCORE_OPTIONS, batch_size=3)
    probs = np.exp(logp) / np.exp(logp).sum(axis=1, keepdims=True)
    assert logp.shape == (3, 11) and expected.shape == (3,) and best.shape == (3,)
    np.testing.assert_allclose(label.score_probs(logp).sum(axis=1), 1.0)
    np.testing.assert_allclose(expected, probs @ np.arange(-5, 6), atol=1e-6)
    assert ((expected >= -5) & (expected <= 5)).all()
    assert best.tolist() == [int(label.SCORE_OPTIONS[j]) for j in logp.argmax(axis=1)]
    rows = label.assess_by_loglik(model, tokenizer, [_sample()], template, traits=["O", "N"])
    np.testing.assert_allclose(rows["score"], expected[:2], atol=1e-6)


def test_repeat_agreement_identical_runs():
    rng = np.random.default_rng(0)
    run = rng.integers(-5, 6, size=(6, 5)).astype(float)
    out = label.repeat_agreement(np.stack([run, run, run]))
    assert out["mad"] == 0 and out["r"] == pytest.approx(1.0)
    assert all(v["n_pairs"] == 18 for v in out["per_trait"].values())


def test_repeat_agreement_hand_example():
    base = np.array([[1, 0, 0, 0, 0], [2, 1, 1, 1, 1], [3, 2, 2, 2, 2]], dtype=float)
    second = base.copy()
    second[:, 0] = [2, 2, 5]  # |diff| 1, 0, 2; r = 3 / sqrt(2 * 6)
    out = label.repeat_agreement(np.stack([base, second]))
    assert out["per_trait"]["O"]["mad"] == pytest.approx(1.0)
    assert out["per_trait"]["O"]["r"] == pytest.approx(3 / math.sqrt(12))
    assert out["per_trait"]["C"] == {"mad": 0.0, "r": pytest.approx(1.0), "n_pairs": 3}
    assert out["mad"] == pytest.approx(0.2)
    second[2, 1] = np.nan  # left out pairwise: two samples remain for C
    out = label.repeat_agreement(np.stack([base, second]))
    assert out["per_trait"]["C"]["n_pairs"] == 2 and out["per_trait"]["C"]["r"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least two runs"):
        label.repeat_agreement(base[None])


def test_label_agreement_counts_zero_as_undecided():
    scores = np.zeros((4, 5))
    labels = np.zeros((4, 5))
    scores[:, 0], labels[:, 0] = [3, -2, 0, 1], [1, 0, 1, 0]
    out = label.label_agreement(scores, labels)["per_trait"]["O"]
    assert out["decided"] == 3 and out["undecided"] == 1 and out["n"] == 4
    assert out["accuracy"] == pytest.approx(2 / 3)
    assert out["r_pb"] == pytest.approx(2 / math.sqrt(13))
    assert out["base_rate"] == 0.5
    labels[0, 1] = 2
    with pytest.raises(ValueError, match="labels must be 0 or 1: row 0, C is 2"):
        label.label_agreement(scores, labels)


def _vectors():
    rows = [("harry", [0] * 5)] * 4 + [("harry", [4] * 5), ("ron", [1, 2, 3, 4, 5]), ("hermione", [1] * 5),
                                       ("hermione", [-5] * 5), ("neville", [0, 0, np.nan, 0, 0])]
    return pd.DataFrame([{"sample_id": f"s{i}", "character": c, **dict(zip(TRAITS, v))}
                         for i, (c, v) in enumerate(rows)])


def test_drop_outliers_zscore_drops_the_far_sample_and_keeps_a_single_one():
    kept, dropped = label.drop_outliers(_vectors(), rule="zscore", threshold=1.5)
    # harry: centroid 0.8 each; distances 0.8*sqrt(5) x4 and 3.2*sqrt(5); z of the far one = 4 / sqrt(5)
    assert dropped["sample_id"].tolist() == ["s4", "s8"]
    assert dropped["reason"].tolist() == ["outlier", "incomplete"]
    assert dropped["distance"].iloc[0] == pytest.approx(3.2 * math.sqrt(5))
    assert dropped["outlier_score"].iloc[0] == pytest.approx(4 / math.sqrt(5))
    status = dict(zip(kept["sample_id"], kept["status"]))
    assert status == {"s0": "kept", "s1": "kept", "s2": "kept", "s3": "kept", "s5": "single", "s6": "too_few",
                      "s7": "too_few"}
    assert kept.loc[kept["sample_id"] == "s5", "distance"].item() == 0
    none_dropped, _ = label.drop_outliers(_vectors(), rule="zscore", threshold=2.0)  # 4/sqrt(5) = 1.79 < 2
    assert "s4" in none_dropped["sample_id"].tolist()


def test_drop_outliers_other_rules_and_single_drop():
    _, dropped = label.drop_outliers(_vectors(), rule="mad", threshold=3.0)  # MAD 0: the far one scores inf
    assert dropped["sample_id"].tolist() == ["s4", "s8"]
    kept, dropped = label.drop_outliers(_vectors(), rule="distance", threshold=5.0, centre="median", single="drop")
    # median centre is 0: the far harry sample is 4*sqrt(5) = 8.9 away; ron goes as a single sample
    assert dict(zip(dropped["sample_id"], dropped["reason"])) == {"s4": "outlier", "s5": "single",
                                                                   "s8": "incomplete"}
    assert dropped.loc[dropped["sample_id"] == "s4", "distance"].item() == pytest.approx(4 * math.sqrt(5))
    assert len(kept) + len(dropped) == 9
    with pytest.raises(ValueError, match="rule must be one of"):
        label.drop_outliers(_vectors(), rule="iqr")


def test_psdc_hand_example():
    prompted = np.array([[5, 0, -5, 2, 1], [0, 0, 0, 0, 0]])
    assessed = np.array([[3, 0, -1, 2, -2], [1, -1, 0, 2, 0]])
    out = label.psdc(prompted, assessed)
    # |deviations|: [2, 0, 4, 0, 3] (L1 9, L2 sqrt 29) and [1, 1, 0, 2, 0] (L1 4, L2 sqrt 6)
    assert {t: v["mean"] for t, v in out["per_trait"].items()} == {"O": 1.5, "C": 0.5, "E": 2.0, "A": 1.0, "N": 1.5}
    assert out["l1"]["mean"] == 6.5 and out["mad"]["mean"] == pytest.approx(1.3)
    assert out["l2"]["mean"] == pytest.approx((math.sqrt(29) + math.sqrt(6)) / 2)
    assert out["l1"]["lo"] <= 6.5 <= out["l1"]["hi"] and out["n"] == 2 and out["dropped_nan"] == 0
    with_nan = label.psdc(np.vstack([prompted, [np.nan] * 5]), np.vstack([assessed, [0] * 5]))
    assert with_nan["n"] == 2 and with_nan["dropped_nan"] == 1 and with_nan["l1"]["mean"] == 6.5


def test_psdc_validates_shapes_and_range():
    good = np.zeros((2, 5))
    with pytest.raises(ValueError, match="assessed has shape"):
        label.psdc(good, np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"prompted must be \[samples x 5\]"):
        label.psdc(np.zeros((2, 4)), np.zeros((2, 4)))
    bad = good.copy()
    bad[1, 3] = 7
    with pytest.raises(ValueError, match=r"assessed: row 1, A = 7.0 is outside \[-5, 5\]"):
        label.psdc(good, bad)
    with pytest.raises(ValueError, match="no sample has complete"):
        label.psdc(np.full((1, 5), np.nan), np.zeros((1, 5)))


def test_option_logliks_read_all_options_off_one_row_and_agree_with_likert_loglik(tiny, monkeypatch):
    model, tokenizer = tiny
    template = "Assess the {trait_name} of {character}.\n{dialogue}\n{answer_format}"
    chats = [label.assessment_chats(_sample(), t, template, answer="score") for t in ("O", "C", "N")]
    slow = likert_loglik(model, tokenizer, chats, label.SCORE_OPTIONS, batch_size=4)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the one-row reading fell back to scoring every option on its own row")

    monkeypatch.setattr(label, "likert_loglik", no_fallback)
    fast = label.option_logliks(model, tokenizer, chats, batch_size=2)
    np.testing.assert_allclose(fast, slow, atol=1e-4)
    assert not np.allclose(fast[:, 0], fast[:, 5])  # "-5" and "0" really differ
