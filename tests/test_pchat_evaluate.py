"""PersonalityChat's evaluation (lib/pchat/evaluate.py): Table 3 statistics, response metrics, MCN and trait-control
markers."""
import math
import socket

import numpy as np
import pytest

from lib.pchat import evaluate


def test_words_keep_contractions_and_drop_punctuation():
    assert evaluate.words("Hey there ! I'm 42… don’t-stop") == ["hey", "there", "i'm", "42", "don't", "stop"]


def test_one_tokenisation_punctuation_never_counts():
    """MTLD is lexical: PersonaChat's detached " ." and " !" must not change it (they once could, on request)."""
    spaced, joined = ["hey there ! i'm a nurse .", "cool , i bake ."], ["Hey there! I'm a nurse.", "Cool, I bake."]
    assert evaluate.mtld(spaced) == evaluate.mtld(joined) and evaluate.ttr(spaced) == evaluate.ttr(joined)
    assert evaluate.response_metrics(spaced, joined) == evaluate.response_metrics(joined, joined)
    with pytest.raises(TypeError):
        evaluate.words("Hi!", with_punctuation=True)


def test_ttr_and_mtld_by_hand():
    assert evaluate.ttr(["A, b!", "a b?"]) == 0.5
    # "a b a b": the third word drops the TTR to 2/3 <= 0.72 (one factor), the last leaves a TTR-1 remainder worth 0.
    assert evaluate.mtld(["A, b!", "a b?"]) == 4.0
    # "a b c d a": no full factor; the remainder has TTR 0.8, worth (1 - 0.8) / (1 - 0.72) of a factor, both ways.
    assert evaluate.mtld(["a b c d a"]) == pytest.approx(5 / (0.2 / 0.28))
    assert evaluate.mtld(["I'm, I'm"]) == pytest.approx(2.0)  # "i'm" is one word, not "i" "m"
    with pytest.raises(ValueError, match="mtld: the 2 texts contain no words"):
        evaluate.mtld(["!!", "..."])
    with pytest.raises(ValueError, match=r"MTLD threshold must be in \(0, 1\)"):
        evaluate.mtld(["a b"], threshold=1.0)
    with pytest.raises(ValueError, match="ttr: no texts"):
        evaluate.ttr([])


def test_turn_level_rates():
    texts = ["I like my dog.", "Do you? Me too!", "ok"]
    assert evaluate.words_per_turn(texts) == pytest.approx((4 + 4 + 1) / 3)
    assert evaluate.question_rate(texts) == pytest.approx(1 / 3)
    assert evaluate.first_person_rate(texts) == pytest.approx(3 / 9)  # i, my, me
    with pytest.raises(ValueError, match="positions \\[1\\]"):
        evaluate.question_rate(["a", None])


def test_unigram_f1_parlai_normalisation():
    # hyp -> cat sat on mat, ref -> cat sat: P 2/4, R 1 -> F1 2/3
    assert evaluate.unigram_f1("The cat sat on the mat.", "a cat, sat!") == pytest.approx(2 / 3)
    assert evaluate.unigram_f1("the a an", "the cat") == 0.0
    assert evaluate.unigram_f1("Dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts clip at the reference's
    assert evaluate.mean_unigram_f1(["cat", "dog"], ["cat", "cow"]) == 0.5
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        evaluate.mean_unigram_f1(["a", "b"], ["a"])


def test_response_metrics():
    m = evaluate.response_metrics(["a b", "a c"], ["a b", "x"])
    assert m["f1"] == 0.5 and m["ttr"] == 0.75
    assert m["distinct_1"] == 0.75 and m["distinct_2"] == 1.0 and m["empty_share"] == 0.0
    silent = evaluate.response_metrics(["", " "], ["a b", "x"])  # an untrained model may say nothing at all
    assert silent["f1"] == 0.0 and silent["empty_share"] == 1.0
    assert all(math.isnan(silent[k]) for k in ("ttr", "mtld", "distinct_1", "distinct_2"))


def test_sentiment_uses_the_bundled_vader_lexicon():
    good = 1.9 / math.sqrt(1.9 ** 2 + 15)  # VADER's compound for one word of valence 1.9 ("good"), alpha 15
    s = evaluate.sentiment(["good", "the table"])
    assert s["compound"] == pytest.approx(round(good, 4) / 2)
    assert s["pos"] == 0.5 and s["neu"] == 0.5 and s["neg"] == 0.0


def test_empath_rates_on_our_tokens():
    rates = evaluate.empath_rates(["Happy happy day!", "..."], categories=["positive_emotion", "negative_emotion"])
    # "happy" is a positive_emotion term; Empath alone would see "day!" and miss "happy!" style tokens
    assert rates == {"positive_emotion": pytest.approx((2 / 3) / 2), "negative_emotion": 0.0}
    with pytest.raises(ValueError, match=r"unknown Empath categories \['glee'\]"):
        evaluate.empath_rates(["x"], categories=["glee"])


def test_markers_need_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    evaluate._vader.cache_clear()
    evaluate._empath.cache_clear()
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    m = evaluate.reply_markers("Great, I love it! How are you?")
    assert m["words"] == 7.0 and m["question_rate"] == 1.0 and m["vader_compound"] > 0
    assert m["first_person_rate"] == pytest.approx(1 / 7)
    assert set(m) >= {"empath_positive_emotion", "empath_party"}
    assert evaluate.reply_markers("...")["first_person_rate"] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# MCN


VOCAB = ["surf", "bake", "dog", "hi"]


def fake_encode(texts):
    """Bag of vocabulary words: exact cosines by hand."""
    return np.array([[float(w in evaluate.words(t)) for w in VOCAB] + [1e-9] for t in texts])


def _dialogue():
    return {"id": "d", "personas": {"A": ["I surf."], "B": []},
            "turns": [{"speaker": "A", "text": "Hi! I surf and bake."}, {"speaker": "B", "text": "I surf too."},
                      {"speaker": "A", "text": "My dog!"}, {"speaker": "A", "text": "I surf, hi."}]}


def test_persona_incorporation_with_a_fake_encoder():
    # A's utterances vs "I surf.": cos 1/sqrt(3), 0, 1/sqrt(2); B has no facts and is not counted
    out = evaluate.persona_incorporation([_dialogue()], fake_encode, threshold=0.6)
    assert out == {"mcn": pytest.approx(1 / 3), "utterances": 3, "incorporating": 1}
    assert evaluate.persona_incorporation([_dialogue()], fake_encode, threshold=0.5)["incorporating"] == 2


def test_persona_incorporation_errors():
    with pytest.raises(ValueError, match="encoder returned a zero vector"):
        evaluate.persona_incorporation([_dialogue()], lambda t: np.zeros((len(t), 3)), 0.5)
    with pytest.raises(ValueError, match=r"encoder returned shape \(2,\) for 4 texts"):
        evaluate.persona_incorporation([_dialogue()], lambda t: np.zeros(2), 0.5)
    nobody = {"id": "x", "personas": {"A": [], "B": []}, "turns": [{"speaker": "A", "text": "hi"}]}
    with pytest.raises(ValueError, match="no utterance by a speaker with persona facts"):
        evaluate.persona_incorporation([nobody], fake_encode, 0.5)
    with pytest.raises(ValueError, match=r"cosine similarity in \[-1, 1\]"):
        evaluate.persona_incorporation([_dialogue()], fake_encode, 2)


def test_dataset_stats_row():
    row = evaluate.dataset_stats([_dialogue()], fake_encode, mcn_threshold=0.6)
    assert row == {"dialogues": 1, "utterances": 4, "turns_per_dialogue": 4.0, "words_per_turn": (5 + 3 + 2 + 3) / 4,
                   "mtld": pytest.approx(evaluate.mtld([t["text"] for t in _dialogue()["turns"]])),
                   "mcn": pytest.approx(1 / 3), "mcn_dialogues": 1}
    texts = [t["text"] for t in _dialogue()["turns"]]
    assert evaluate.dataset_stats([_dialogue()], mtld_threshold=0.5)["mtld"] == pytest.approx(evaluate.mtld(texts, 0.5))
    two = evaluate.dataset_stats([_dialogue(), {**_dialogue(), "id": "e", "turns": _dialogue()["turns"][2:]}],
                                 fake_encode, mcn_threshold=0.6, mcn_dialogues=1)
    assert two["dialogues"] == 2 and two["mcn_dialogues"] == 1 and two["mcn"] == pytest.approx(1 / 3)
    assert "mcn" not in evaluate.dataset_stats([_dialogue()])
    with pytest.raises(ValueError, match="MCN needs mcn_threshold"):
        evaluate.dataset_stats([_dialogue()], fake_encode)


# ---------------------------------------------------------------------------------------------------------------
# Trait control


def _probe(model, cid, seed, trait, level, text):
    return {"model": model, "id": cid, "turn": 1, "seed": seed, "trait": trait, "level": level, "text": text}


def test_paired_differences_pair_by_context_and_seed():
    probes = [_probe("PT", "d1", 0, "E", "high", "Great party! Who else is coming?"),
              _probe("PT", "d1", 0, "E", "low", "No."),
              _probe("PT", "d1", 1, "E", "low", "I stay home."),
              _probe("PT", "d1", 1, "E", "high", "I love it!")]
    diffs = evaluate.paired_differences(probes, empath_categories=["party"])
    assert [(d["seed"], d["words"]) for d in diffs] == [(0, 6 - 1), (1, 3 - 3)]
    assert diffs[0]["question_rate"] == 1.0 and diffs[0]["empath_party"] == pytest.approx(1 / 6)
    assert diffs[1]["first_person_rate"] == pytest.approx(1 / 3 - 1 / 3)
    with pytest.raises(ValueError, match="has no 'low' reply"):
        evaluate.paired_differences(probes[:1])
    with pytest.raises(ValueError, match="a second 'high' reply"):
        evaluate.paired_differences(probes + probes[:1])
    with pytest.raises(ValueError, match="probe 0: trait 'X' / level 'high'"):
        evaluate.paired_differences([{**probes[0], "trait": "X"}])
    with pytest.raises(ValueError, match=r"missing \['seed'\]"):
        evaluate.paired_differences([{k: v for k, v in probes[0].items() if k != "seed"}])


def test_t_interval_by_hand():
    lo, hi = evaluate.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, df 2) x sd 1 / sqrt(3)
    assert (lo, hi) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert all(math.isnan(v) for v in evaluate.t_interval([5.0]))


def test_control_summary_intervals_are_over_contexts_not_pairs():
    """Seeds of one context are averaged first: ten seeds of two contexts are two units, not twenty."""
    words = {"c1": (6, 4), "c2": (9, 3)}  # (high, low) word counts, the same under every seed
    probes = [_probe("PT", cid, seed, "E", level, " ".join(["word"] * n))
              for cid, (high, low) in words.items() for seed in range(10)
              for level, n in (("high", high), ("low", low))]
    (row,) = [r for r in evaluate.control_summary(evaluate.paired_differences(probes)) if r["marker"] == "words"]
    assert row["diff"] == pytest.approx(4.0) and (row["contexts"], row["pairs"]) == (2, 20)
    half = 12.706204736174707 * math.sqrt(8) / math.sqrt(2)  # t(0.975, df 1) x sd of (2, 6) / sqrt(2)
    assert (row["low"], row["high"]) == (pytest.approx(4 - half), pytest.approx(4 + half))
    assert row["paper_sign"] == 1 and row["verdict"] == "n.s."


def test_control_summary_verdicts():
    def probes(trait, shift):  # high replies `shift` words longer than low, over four contexts
        return [_probe("PT", f"c{i}", 0, trait, level, " ".join(["word"] * n))
                for i in range(4) for level, n in (("high", 5 + i + shift), ("low", 5 + i + (i % 2)))]

    rows = evaluate.control_summary(evaluate.paired_differences(probes("E", 3) + probes("O", -3) + probes("N", 3)),
                                    markers=["words"])
    verdict = {r["trait"]: r["verdict"] for r in rows}
    assert verdict == {"E": "agrees", "O": "opposes", "N": None}  # the paper states no sign for N
    single = evaluate.control_summary(evaluate.paired_differences(probes("E", 3)[:2]), markers=["words"])
    assert single[0]["contexts"] == 1 and single[0]["verdict"] is None and math.isnan(single[0]["low"])
