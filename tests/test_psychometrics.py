"""Tests for lib/psychometrics.py on the real instrument keys of the offline mirror and a random-init micro Llama."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import decoding
from lib import psychometrics as pm

DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"  # the project's ../shared/data
needs_data = pytest.mark.skipif(not (DATA_ROOT / "instruments").is_dir(), reason=f"no data mirror at {DATA_ROOT}")

# Reverse-keyed items per domain, counted by hand from the files (BFI-44 reverse items are 2, 6, 8, 9, 12, 18, 21,
# 23, 24, 27, 31, 34, 35, 37, 41, 43; IPIP-50 N counted after turning emotional stability into neuroticism).
EXPECTED_KEYS = {  # domain: (items, reverse items)
    "bfi44": {"O": (10, 2), "C": (9, 4), "E": (8, 3), "A": (9, 4), "N": (8, 3)},
    "ipip120": {"O": (24, 12), "C": (24, 13), "E": (24, 6), "A": (24, 17), "N": (24, 7)},
    "ipip300": {"O": (60, 32), "C": (60, 29), "E": (60, 24), "A": (60, 36), "N": (60, 27)},
    "ipip50": {"O": (10, 3), "C": (10, 4), "E": (10, 5), "A": (10, 4), "N": (10, 2)},
}
BFI_REVERSE = [2, 6, 8, 9, 12, 18, 21, 23, 24, 27, 31, 34, 35, 37, 41, 43]


def sheet(items: pd.DataFrame, values, runs: int = 1) -> pd.DataFrame:
    """An answer sheet: every item answered with `values` (scalar or per-row), repeated over `runs`."""
    base = items[["item", "domain", "reverse"]].copy()
    base["answer"] = pd.array(np.broadcast_to(values, len(items)), dtype="Int64")
    return pd.concat([base.assign(run=r) for r in range(runs)], ignore_index=True)


# ---------------------------------------------------------------------------------------------------------------
# Instruments


@needs_data
@pytest.mark.parametrize("name,n", [("bfi44", 44), ("ipip120", 120), ("ipip300", 300), ("ipip50", 50)])
def test_load_instrument_counts_and_keys(name, n):
    items = pm.load_instrument(name, DATA_ROOT)
    assert len(items) == n
    assert list(items.columns[:5]) == ["item", "text", "domain", "facet", "reverse"]
    counts = items.groupby("domain")["reverse"].agg(["size", "sum"])
    assert {d: (int(r["size"]), int(r["sum"])) for d, r in counts.iterrows()} == EXPECTED_KEYS[name]


@needs_data
def test_bfi_reverse_items_and_ipip_structure():
    bfi = pm.load_instrument("bfi44", DATA_ROOT)
    assert sorted(bfi.loc[bfi.reverse, "item"]) == BFI_REVERSE
    assert int(bfi.reverse.sum()) == 16
    assert bfi.facet.isna().all()
    assert bfi.loc[bfi.item == 9, ["domain", "reverse"]].values.tolist() == [["N", True]]  # "relaxed" -> low N
    ipip = pm.load_instrument("ipip120", DATA_ROOT)
    assert (ipip.groupby("domain").size() == 24).all()
    assert ipip.groupby(["domain", "facet"]).size().eq(4).all() and ipip.facet.nunique() == 30
    assert ipip.loc[ipip.item == 1, ["text", "domain", "facet", "reverse"]].values.tolist() == [
        ["Worry about things.", "N", "Anxiety", False]]


@needs_data
def test_ipip50_stability_is_turned_into_neuroticism():
    items = pm.load_instrument("ipip50", DATA_ROOT).set_index("item")
    assert items.loc["N31", "text"] == "Am relaxed most of the time." and items.loc["N31", "reverse"]
    assert items.loc["N34", "text"] == "Worry about things." and not items.loc["N34", "reverse"]
    assert not items.loc["E01", "reverse"] and items.loc["E06", "reverse"]  # other factors unchanged


def write_instrument(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return root


def test_load_instrument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown instrument 'bfi'.*bfi44.*ipip120.*ipip300.*ipip50"):
        pm.load_instrument("bfi", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"bfi_44\.csv"):
        pm.load_instrument("bfi44", tmp_path)
    root = write_instrument(tmp_path / "nokey", "instruments/bfi_44.csv",
                            "item,text,domain\n1,Is talkative.,Extraversion\n")
    with pytest.raises(ValueError, match=r"bfi_44\.csv: missing column 'key'"):
        pm.load_instrument("bfi44", root)
    root = write_instrument(tmp_path / "nokeyed", "instruments/ipip_50_markers.csv",
                            "id,text,factor,key\nE01,Am the life of the party.,E,1\n")
    with pytest.raises(ValueError, match=r"ipip_50_markers\.csv: missing column 'keyed'"):
        pm.load_instrument("ipip50", root)
    root = write_instrument(tmp_path / "baddomain", "instruments/bfi_44.csv",
                            "item,text,domain,key\n1,Is talkative.,Extraversion,1\n2,Is kind.,Kindness,1\n")
    with pytest.raises(ValueError, match=r"unexpected values in column 'domain': \['Kindness'\]"):
        pm.load_instrument("bfi44", root)
    root = write_instrument(tmp_path / "badkey", "instruments/ipip_neo_120.csv",
                            "item,text,domain,facet_num,facet,key\n1,Worry.,N,N1,Anxiety,0\n")
    with pytest.raises(ValueError, match=r"'key' must be 1 or -1; bad values at items \[1\]"):
        pm.load_instrument("ipip120", root)


# ---------------------------------------------------------------------------------------------------------------
# Scoring on the real keys


@needs_data
def test_score_bfi_all_fives_all_ones_and_reverse_only():
    items = pm.load_instrument("bfi44", DATA_ROOT)
    fives = pm.score(sheet(items, 5))
    # Literal values: E has 8 items, 3 reversed -> (5*5 + 3*1) / 8; O has 10, 2 reversed -> (8*5 + 2*1) / 10.
    assert fives.loc["E", "mean"] == pytest.approx(3.5)
    assert fives.loc["O", "mean"] == pytest.approx(4.2)
    assert fives.loc["A", "mean"] == pytest.approx(29 / 9)
    assert fives.loc["E", "sd"] == pytest.approx(np.std([5] * 5 + [1] * 3, ddof=1))
    ones = pm.score(sheet(items, 1))
    assert ones.loc["E", "mean"] == pytest.approx(2.5)
    assert ones.loc["O", "mean"] == pytest.approx(1.8)
    for domain, (n, n_rev) in EXPECTED_KEYS["bfi44"].items():
        assert fives.loc[domain, "mean"] == pytest.approx((5 * (n - n_rev) + 1 * n_rev) / n)
        assert ones.loc[domain, "mean"] == pytest.approx((1 * (n - n_rev) + 5 * n_rev) / n)
        assert fives.loc[domain, "n_answered"] == n and fives.loc[domain, "n_missing"] == 0
    # Only reverse items answered (5 = strongly agree), the rest missing: every keyed score is exactly 1.
    rev_only = sheet(items, np.where(items.reverse, 5, 1))
    rev_only.loc[~rev_only.reverse, "answer"] = pd.NA
    scores = pm.score(rev_only)
    for domain, (n, n_rev) in EXPECTED_KEYS["bfi44"].items():
        assert scores.loc[domain, "mean"] == 1.0
        assert (scores.loc[domain, "n_answered"], scores.loc[domain, "n_missing"]) == (n_rev, n - n_rev)


@needs_data
def test_score_ipip120_all_fives_over_runs():
    items = pm.load_instrument("ipip120", DATA_ROOT)
    fives = pm.score(sheet(items, 5, runs=3))
    assert fives.loc["E", "mean"] == pytest.approx(4.0)  # 18 forward, 6 reversed: (90 + 6) / 24
    assert fives.loc["O", "mean"] == pytest.approx(3.0)  # 12 and 12
    assert fives.loc["A", "mean"] == pytest.approx(52 / 24)
    for domain, (n, n_rev) in EXPECTED_KEYS["ipip120"].items():
        assert fives.loc[domain, "mean"] == pytest.approx((5 * (n - n_rev) + n_rev) / n)
        assert fives.loc[domain, "n_answered"] == 3 * n
    ones = pm.score(sheet(items, 1))
    assert ones.loc["E", "mean"] == pytest.approx(2.0)  # (18 + 6*5) / 24


def test_score_uses_value_col_and_rejects_out_of_range():
    answers = pd.DataFrame({"domain": ["E", "E", "N"], "reverse": [False, True, False],
                            "answer": pd.array([4, 2, None], dtype="Int64"), "expected": [4.5, 1.5, 2.0]})
    plain = pm.score(answers)
    assert plain.loc["E", "mean"] == 4.0 and plain.loc["N", "n_missing"] == 1 and np.isnan(plain.loc["N", "mean"])
    assert pm.score(answers, value_col="expected").loc["E", "mean"] == pytest.approx(4.5)
    answers.loc[0, "answer"] = 6
    with pytest.raises(ValueError, match="outside 1-5"):
        pm.score(answers)


def test_compare_with_norms():
    scores = pd.DataFrame({"mean": [3.5, 2.0]}, index=pd.Index(["E", "N"], name="domain"))
    bfi = pm.compare_with_norms(scores, pm.HUMAN_NORMS["bfi44"])
    assert bfi.loc["E", "human_mean"] == 3.25 and bfi.loc["E", "diff"] == pytest.approx(0.25)
    assert bfi.loc["E", "z"] == pytest.approx(0.25 / 0.90)
    assert bfi.loc["N", "z"] == pytest.approx((2.0 - 3.32) / 0.82)
    ipip = pm.compare_with_norms(scores, pm.HUMAN_NORMS["ipip120"])
    assert ipip.loc["N", "diff"] == pytest.approx(-0.8) and ipip["z"].isna().all()
    assert set(pm.HUMAN_NORMS["ipip120"]) == set(pm.DOMAINS) == set(pm.HUMAN_NORMS["bfi44"])


def test_intra_trait_correlations():
    o = np.array([1.0, 2.0, 3.0, 4.0, 6.0])
    c = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    table = pd.DataFrame({"N": -o, "O": o, "C": c, "E": 2 * o + 1, "A": [5.0, 3.0, 4.0, 1.0, 2.0]})
    corr = pm.intra_trait_correlations(table)
    assert list(corr.index) == list(corr.columns) == list(pm.DOMAINS)
    assert corr.loc["O", "E"] == pytest.approx(1.0) and corr.loc["O", "N"] == pytest.approx(-1.0)
    assert corr.loc["O", "C"] == pytest.approx(np.corrcoef(o, c)[0, 1])
    with pytest.raises(ValueError, match="lack domains"):
        pm.intra_trait_correlations(table.drop(columns="A"))


def test_domain_scores_by_persona():
    answers = pd.DataFrame({"persona": ["p1", "p1", "p2", "p2"], "domain": ["E", "E", "E", "N"],
                            "reverse": [False, True, False, False], "answer": [5, 1, 2, 3]})
    wide = pm.domain_scores_by(answers, "persona")
    assert wide.loc["p1", "E"] == 5.0 and wide.loc["p2", "E"] == 2.0 and wide.loc["p2", "N"] == 3.0
    assert np.isnan(wide.loc["p1", "N"])


HAND_MADE_BFI = (  # E: two forward items; A: one forward, one reverse; N: only reverse items
    "item,text,domain,key\n"
    "1,Is talkative.,Extraversion,1\n"
    "2,Is full of energy.,Extraversion,1\n"
    "3,Is helpful.,Agreeableness,1\n"
    "4,Starts quarrels with others.,Agreeableness,-1\n"
    "5,Is relaxed.,Neuroticism,-1\n"
    "6,Is emotionally stable.,Neuroticism,-1\n"
)


def test_score_hand_made_sheets(tmp_path):
    """Exact domain scores on a hand-made item file: keys come from the file, not from the data mirror."""
    items = pm.load_instrument("bfi44", write_instrument(tmp_path, "instruments/bfi_44.csv", HAND_MADE_BFI))
    assert items["reverse"].tolist() == [False, False, False, True, True, True]
    fives = sheet(items, 5)
    assert pm.keyed_scores(fives).tolist() == [5, 5, 5, 1, 1, 1]  # reverse items score 6 - 5 = 1
    scores = pm.score(fives)
    assert scores["mean"].to_dict() == {"E": 5.0, "A": 3.0, "N": 1.0}
    assert scores["sd"].to_dict()["E"] == 0.0 and scores["n_missing"].sum() == 0
    assert pm.score(sheet(items, 1))["mean"].to_dict() == {"E": 1.0, "A": 3.0, "N": 5.0}
    # Only the reverse items answered, each with 2: keyed 4; E has no answer at all and stays missing (not 3).
    rev_only = sheet(items, 2)
    rev_only.loc[~rev_only.reverse, "answer"] = pd.NA
    scores = pm.score(rev_only)
    assert np.isnan(scores.loc["E", "mean"]) and scores.loc["E", "n_missing"] == 2
    assert (scores.loc["A", "mean"], scores.loc["A", "n_answered"], scores.loc["A", "n_missing"]) == (4.0, 1, 1)
    assert (scores.loc["N", "mean"], scores.loc["N", "n_answered"]) == (4.0, 2)


# ---------------------------------------------------------------------------------------------------------------
# Prompts and parsing


def test_item_prompt():
    bfi = pm.item_prompt("Is talkative.", stem=pm.BFI_STEM)
    assert len(bfi) == 1 and bfi[0]["role"] == "user"
    assert bfi[0]["content"] == (
        "How well does the following statement describe you? Answer with a single number from 1 to 5, where\n"
        "1 = strongly disagree\n2 = disagree\n3 = neither agree nor disagree\n4 = agree\n5 = strongly agree\n\n"
        'Statement: "I see myself as someone who is talkative."')  # instruction and scale first, statement last
    ipip = pm.item_prompt("Worry about things.")
    assert ipip[0]["content"].endswith('\n\nStatement: "Worry about things."')
    assert ipip[0]["content"].startswith(bfi[0]["content"][:bfi[0]["content"].index("Statement")])


PERSONA = [{"role": "system", "content": "You are a helpful assistant with the following Big Five personality traits: "
                                         "Extraversion - high"}]
DEMOS = [{"role": "user", "content": "What did you do at the weekend?"},
         {"role": "assistant", "content": "I threw a party and invited the whole street!"}]


def test_item_prompt_with_persona_and_demos():
    chat = pm.item_prompt("Is talkative.", stem=pm.BFI_STEM, persona=PERSONA + DEMOS)
    assert chat[:3] == PERSONA + DEMOS and chat[3]["role"] == "user"
    assert chat[3] == pm.item_prompt("Is talkative.", stem=pm.BFI_STEM)[0]
    assert chat[0] is not PERSONA[0]  # copied: later edits of the chat leave the caller's persona alone
    with pytest.raises(TypeError, match="persona must be a list of chat messages, got str"):
        pm.item_prompt("Is talkative.", persona="be extraverted")
    with pytest.raises(ValueError, match="persona message 1 must be a dict with role"):
        pm.item_prompt("Is talkative.", persona=[PERSONA[0], {"role": "narrator", "content": "x"}])


@pytest.mark.parametrize("reply,expected", [
    ("4", 4), ("4.", 4), ("I'd say 2 - disagree", 2), ("Strongly agree", 5), ("agree strongly", 5),
    ("Neutral.", 3), ("Neither agree nor disagree", 3), ("I disagree.", 2), ("Strongly disagree", 1), ("Agree", 4),
    ("**5** (strongly agree)", 5), ("On a scale of 1 to 5, I'd rate it 3.", 3), ("Rating: 4/5", 4), (" 1\n", 1),
    ("4) ", 4), ("2 - I rarely do", 2),
])
def test_parse_answer(reply, expected):
    assert pm.parse_answer(reply) == expected


@pytest.mark.parametrize("reply,message", [
    ("6", "out of range"), ("0", "out of range"), ("", "empty"), ("   ", "empty"), ("maybe", "no rating"),
    ("3.5", "not a whole number"), ("I don't agree", "negated"), ("I agree and disagree", "conflicting"),
    ("1. I'm a perfectionist.\n2. I'm a perfectionist.", "numbered list item"), ("1) Yell at people", "list item"),
])
def test_parse_answer_rejects(reply, message):
    with pytest.raises(pm.UnparseableAnswer, match=message):
        pm.parse_answer(reply)
    assert issubclass(pm.UnparseableAnswer, ValueError)


# ---------------------------------------------------------------------------------------------------------------
# Administration


def small_items() -> pd.DataFrame:
    return pd.DataFrame({"item": [1, 2, 3], "text": ["Is talkative.", "Tends to find fault with others.",
                                                     "Does a thorough job."],
                         "domain": ["E", "A", "C"], "facet": [None] * 3, "reverse": [False, True, False],
                         "instrument": "bfi44"})


def test_administer_by_generation_counts_unparseable_and_never_imputes():
    script = {0: ["5", "maybe", "3"], 1: ["6", "Strongly disagree", ""]}
    calls = []

    def generate_fn(chats, temperature, max_new_tokens, seed):
        calls.append((len(chats), temperature, max_new_tokens, seed))
        assert "someone who is talkative." in chats[0][0]["content"]  # the BFI stem came from the instrument column
        return script[len(calls) - 1]

    answers, n_bad = pm.administer_by_generation(generate_fn, small_items(), n_runs=2, temperature=0.6,
                                                 max_new_tokens=128, seed=10)
    assert calls == [(3, 0.6, 128, 10), (3, 0.6, 128, 11)]
    assert n_bad == 3
    assert list(answers.columns[:6]) == ["run", "item", "domain", "reverse", "reply", "answer"]
    assert answers["answer"].tolist()[0] == 5 and answers["answer"].tolist()[2] == 3
    assert answers["answer"].isna().tolist() == [False, True, False, True, False, True]
    assert (answers["answer"] == 3).sum() == 1  # only the genuine "3"; nothing imputed to the midpoint
    assert "out of range" in answers.loc[3, "error"]
    assert answers.loc[4, "answer"] == 1 and answers.loc[4, "reverse"]
    scores = pm.score(answers)
    assert scores.loc["A", "mean"] == 5.0 and scores.loc["A", "n_missing"] == 1  # reverse: 6 - 1
    assert scores.loc["E", "mean"] == 5.0 and scores.loc["C", "mean"] == 3.0
    assert pm.summarize_answers(answers) == {"n_items": 3, "n_answers": 6, "n_unparseable": 3,
                                             "share_unparseable": 0.5}


def test_summarize_answers():
    answers = pd.DataFrame({"item": [1, 2, 1, 2], "answer": pd.array([4, None, 2, 5], dtype="Int64")})
    assert pm.summarize_answers(answers) == {"n_items": 2, "n_answers": 4, "n_unparseable": 1,
                                             "share_unparseable": 0.25}
    with pytest.raises(ValueError, match="answers lack column 'answer'"):
        pm.summarize_answers(answers.drop(columns="answer"))
    with pytest.raises(ValueError, match="answer sheet is empty"):
        pm.summarize_answers(answers.iloc[:0])


def test_administer_by_generation_puts_persona_first():
    seen = []

    def generate_fn(chats, temperature, max_new_tokens, seed):
        seen.extend(chats)
        return ["4"] * len(chats)

    answers, n_bad = pm.administer_by_generation(generate_fn, small_items(), n_runs=1, persona=PERSONA + DEMOS)
    assert n_bad == 0 and answers["answer"].tolist() == [4, 4, 4]
    assert [[m["role"] for m in chat] for chat in seen] == [["system", "user", "assistant", "user"]] * 3
    assert seen[1][3]["content"].endswith('Statement: "I see myself as someone who tends to find fault with others."')


def test_administer_by_generation_rejects_wrong_reply_count():
    with pytest.raises(ValueError, match="returned 1 replies for 3 prompts"):
        pm.administer_by_generation(lambda chats, t, m, s: ["4"], small_items(), n_runs=1)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def manual_logp(model, tokenizer, chat, option: str) -> float:
    """Unbatched reference: one forward pass over the chat-templated prompt followed by the option's tokens."""
    import torch

    enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    prompt = list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    opt = tokenizer(option, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + opt])).logits[0]
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(sum(logp[len(prompt) + j - 1, t] for j, t in enumerate(opt)))


def test_likert_loglik_batched_matches_single_and_manual(tiny):
    model, tokenizer = tiny
    chats = [pm.item_prompt(t) for t in ["Worry about things.", "Make friends easily.",
                                         "Am not bothered by difficult social situations."]]
    one = pm.likert_loglik(model, tokenizer, chats, batch_size=1)
    assert one.shape == (3, 5) and (one < 0).all()
    for side in ("right", "left"):
        batched = pm.likert_loglik(model, tokenizer, chats, batch_size=4, padding_side=side)
        np.testing.assert_allclose(batched, one, atol=1e-4)
    for j, option in enumerate(pm.LIKERT_OPTIONS):
        assert one[2, j] == pytest.approx(manual_logp(model, tokenizer, chats[2], option), abs=1e-4)
    two_token = pm.likert_loglik(model, tokenizer, chats[:1], options=("12",), batch_size=1)
    assert two_token[0, 0] == pytest.approx(manual_logp(model, tokenizer, chats[0], "12"), abs=1e-4)


def test_likert_loglik_left_padding_with_absolute_positions(tiny):
    """RoPE (Llama) ignores a constant position shift, so check left padding on GPT-2's absolute positions too."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=512,
                                       pad_token_id=tokenizer.pad_token_id)).eval()
    chats = [pm.item_prompt(t) for t in ["Worry about things.", "Am not bothered by difficult social situations."]]
    one = pm.likert_loglik(model, tokenizer, chats, batch_size=1)
    for side in ("left", "right"):
        np.testing.assert_allclose(pm.likert_loglik(model, tokenizer, chats, batch_size=10, padding_side=side), one,
                                   atol=1e-4)
    assert one[1, 3] == pytest.approx(manual_logp(model, tokenizer, chats[1], "4"), abs=1e-4)


def test_administer_by_loglik(tiny):
    model, tokenizer = tiny
    items = small_items()
    answers = pm.administer_by_loglik(model, tokenizer, items, batch_size=8)
    chats = [pm.item_prompt(t, stem=pm.BFI_STEM) for t in items.text]
    logp = np.array([[manual_logp(model, tokenizer, c, o) for o in pm.LIKERT_OPTIONS] for c in chats])
    np.testing.assert_allclose(answers[[f"logp_{k}" for k in range(1, 6)]].to_numpy(), logp, atol=1e-4)
    assert answers["answer"].tolist() == (logp.argmax(axis=1) + 1).tolist()
    p = np.exp(logp) / np.exp(logp).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answers["expected"].to_numpy(), p @ np.arange(1, 6), atol=1e-4)
    assert answers[["item", "domain", "reverse"]].values.tolist() == [[1, "E", False], [2, "A", True],
                                                                      [3, "C", False]]
    again = pm.administer_by_loglik(model, tokenizer, items, batch_size=2)
    np.testing.assert_allclose(again["expected"], answers["expected"], atol=1e-4)  # deterministic across batching
    assert pm.score(answers, value_col="expected").loc["A", "n_answered"] == 1


# ---------------------------------------------------------------------------------------------------------------
# Shared-prefix KV cache: log-likelihood and generation


def test_shared_prefix_len():
    assert pm._shared_prefix_len([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert pm._shared_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2  # at least one token of each row stays after it
    assert pm._shared_prefix_len([[7, 1], [8, 1]]) == 0
    assert pm._shared_prefix_len([[5, 6, 7]]) == 2


def persona_chats(persona=None):
    texts = ["Worry about things.", "Make friends easily.", "Am not bothered by difficult social situations.",
             "Love to read challenging material.", "Talk to a lot of different people at parties."]
    return [pm.item_prompt(t, persona=persona) for t in texts]


def test_likert_loglik_shared_prefix_matches_unbatched_reference(tiny):
    model, tokenizer = tiny
    chats = persona_chats(PERSONA + DEMOS)
    rows = pm._loglik_rows(tokenizer, chats, pm.LIKERT_OPTIONS)
    assert len(rows) == len(chats) and all(len(r.scored) == 5 for r in rows)  # one row per item: 1-5 single tokens
    prompts = pm._prompt_ids(tokenizer, chats)
    n_shared = pm._shared_prefix_len(prompts)
    assert tokenizer.decode(prompts[0][:n_shared]).endswith('\n\nStatement: "')  # persona + demos + scale
    reference = np.array([[manual_logp(model, tokenizer, c, o) for o in pm.LIKERT_OPTIONS] for c in chats])
    for batch_size in (1, 2, 16):
        np.testing.assert_allclose(pm.likert_loglik(model, tokenizer, chats, batch_size=batch_size), reference,
                                   atol=1e-4)
    np.testing.assert_allclose(pm.likert_loglik(model, tokenizer, chats, batch_size=3, padding_side="left",
                                                share_prefix=False), reference, atol=1e-4)
    # Multi-token options fall back to one row per (chat, option), still after the cached prefix.
    options = ("12", "3", "45")
    assert any(len(r.scored[0][1]) > 1 for r in pm._loglik_rows(tokenizer, chats, options))
    multi = pm.likert_loglik(model, tokenizer, chats, options=options, batch_size=4)
    expected = np.array([[manual_logp(model, tokenizer, c, o) for o in options] for c in chats])
    np.testing.assert_allclose(multi, expected, atol=1e-4)


def test_administer_by_loglik_with_persona(tiny):
    model, tokenizer = tiny
    items = small_items()
    answers = pm.administer_by_loglik(model, tokenizer, items, persona=PERSONA, batch_size=2)
    chats = [pm.item_prompt(t, stem=pm.BFI_STEM, persona=PERSONA) for t in items.text]
    logp = np.array([[manual_logp(model, tokenizer, c, o) for o in pm.LIKERT_OPTIONS] for c in chats])
    np.testing.assert_allclose(answers[[f"logp_{k}" for k in range(1, 6)]].to_numpy(), logp, atol=1e-4)
    plain = pm.administer_by_loglik(model, tokenizer, items, batch_size=2)
    assert not np.allclose(plain["logp_1"], answers["logp_1"], atol=1e-3)  # the persona reached the model


@pytest.fixture(scope="module")
def left_tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.padding_side = "left"  # as lib.models.load_for_inference sets it for generate_chat
    return tokenizer


@pytest.fixture(scope="module")
def sharp(tiny):
    """The tiny Llama re-initialised with large weights: its greedy replies vary with the context and sometimes end.

    The default init (std 0.02) repeats one token whatever the prompt, which would let a wrong position or mask pass.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**{**tiny[0].config.to_dict(), "initializer_range": 0.5})).eval()


def hf_new_tokens(model, tokenizer, chats, max_new_tokens, eos_token_id=None) -> list[list[int]]:
    """Greedy model.generate on left-padded prompts: new tokens per chat, cut before the first EOS."""
    import torch

    eos = eos_token_id if eos_token_id is not None else model.generation_config.eos_token_id
    enc = tokenizer([tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats],
                    return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
    rows = [row.tolist() for row in out[:, enc["input_ids"].shape[1]:]]
    return [row[:row.index(eos)] if eos in row else row for row in rows]


def greedy(max_new_tokens: int):
    return decoding.Sampling(temperature=0.0, max_new_tokens=max_new_tokens, seed=0)


def test_prefix_generate_greedy_matches_hf_generate(sharp, left_tokenizer):
    model = sharp
    chats = persona_chats(PERSONA)
    assert pm._shared_prefix_len(pm._prompt_ids(left_tokenizer, chats)) > 50
    stop = decoding.stop_ids(left_tokenizer, model)
    assert stop == [left_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    ids = pm._prefix_generate_ids(model, left_tokenizer, chats, greedy(12), 2, stop)
    assert ids == hf_new_tokens(model, left_tokenizer, chats, 12)
    assert len({tuple(row) for row in ids}) == len(chats)  # replies differ by item, so positions and masks matter
    replies = pm.prefix_generate_fn(model, left_tokenizer, batch_size=3)(chats, 0.0, 12, 0)
    assert replies == pm.hf_generate_fn(model, left_tokenizer, batch_size=2)(chats, 0.0, 12, 0)


def test_prefix_generate_stops_rows_at_eos(sharp, left_tokenizer):
    """Make a token the greedy path produces a stop token: rows end before it, the others run on."""
    model = sharp
    chats = persona_chats(PERSONA)
    full = pm._prefix_generate_ids(model, left_tokenizer, chats, greedy(10), 8, [0])
    stop_token = full[0][3]
    ids = pm._prefix_generate_ids(model, left_tokenizer, chats, greedy(10), 8, [stop_token])
    assert ids[0] == full[0][:full[0].index(stop_token)] and len(ids[0]) <= 3
    assert ids == [row[:row.index(stop_token)] if stop_token in row else row for row in full]
    assert ids == hf_new_tokens(model, left_tokenizer, chats, 10, eos_token_id=stop_token)


def test_prefix_generate_sampling_is_seeded(tiny, left_tokenizer):
    model, _ = tiny
    generate = pm.prefix_generate_fn(model, left_tokenizer, batch_size=2, top_p=0.9)
    chats = persona_chats(PERSONA)[:3]
    first = generate(chats, 0.6, 8, 5)
    assert generate(chats, 0.6, 8, 5) == first
    assert generate(chats, 0.6, 8, 6) != first
    answers, n_bad = pm.administer_by_generation(generate, small_items(), n_runs=2, max_new_tokens=4)
    assert len(answers) == 6 and n_bad == int(answers["answer"].isna().sum())
    with pytest.raises(ValueError, match="top_p must be in"):
        pm.prefix_generate_fn(model, left_tokenizer, top_p=0.0)
    with pytest.raises(ValueError, match="top_k must be >= 1 or None, got 0"):
        pm.prefix_generate_fn(model, left_tokenizer, top_k=0)
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        generate(chats, -1, 8, 0)


def test_next_tokens_greedy_top_k_and_top_p():  # lib.decoding's chooser, which the prefix sampler uses
    import torch

    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])).repeat(200, 1)
    assert decoding.next_tokens(logits, greedy(1), None).tolist() == [1, 0] * 200
    generator = torch.Generator().manual_seed(0)

    def draws(**sampling):
        tokens = decoding.next_tokens(logits, decoding.Sampling(1.0, **sampling), generator).view(200, 2)
        return tokens[:, 0].unique().tolist(), tokens[:, 1].unique().tolist()

    assert draws() == ([0, 1, 2], [0, 1, 2])
    assert draws(top_p=0.45) == ([1], [0])  # the top token alone reaches 0.45
    assert draws(top_p=0.7) == ([1, 2], [0, 2])  # the top two are needed to reach 0.7
    assert draws(top_k=2) == ([1, 2], [0, 2])
    # top-p reads the renormalised top 2: 0.6 / 0.9 reaches 0.65 alone (0.6 would not), 0.5 / 0.8 does not.
    assert draws(top_k=2, top_p=0.65) == ([1], [0, 2])
