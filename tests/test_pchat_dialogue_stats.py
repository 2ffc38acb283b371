"""PersonalityChat metrics: Table 3 statistics, response metrics, MCN and trait-control markers."""
import math
import socket

import numpy as np
import pytest

from lib.pchat import dialogue_stats as ds


def test_words_keep_contractions_and_drop_punctuation():
    assert ds.words("Hey there ! I'm 42… don’t-stop") == ["hey", "there", "i'm", "42", "don't", "stop"]
    assert ds.words("Hi!! I'm.", with_punctuation=True) == ["hi", "!", "!", "i'm", "."]


def test_ttr_and_mtld_by_hand():
    assert ds.ttr(["A, b!", "a b?"]) == 0.5
    # "a b a b": the third word drops the TTR to 2/3 <= 0.72 (one factor), the last leaves a TTR-1 remainder worth 0.
    assert ds.mtld(["A, b!", "a b?"]) == 4.0
    # "a b c d a": no full factor; the remainder has TTR 0.8, worth (1 - 0.8) / (1 - 0.72) of a factor, both ways.
    assert ds.mtld(["a b c d a"]) == pytest.approx(5 / (0.2 / 0.28))
    assert ds.mtld(["I'm, I'm"]) == pytest.approx(2.0)  # "i'm" is one word, not "i" "m"
    assert ds.mtld(["a . a"], with_punctuation=True) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="mtld: the 2 texts contain no words"):
        ds.mtld(["!!", "..."])
    with pytest.raises(ValueError, match=r"MTLD threshold must be in \(0, 1\)"):
        ds.mtld(["a b"], threshold=1.0)
    with pytest.raises(ValueError, match="ttr: no texts"):
        ds.ttr([])


def test_turn_level_rates():
    texts = ["I like my dog.", "Do you? Me too!", "ok"]
    assert ds.words_per_turn(texts) == pytest.approx((4 + 4 + 1) / 3)
    assert ds.question_rate(texts) == pytest.approx(1 / 3)
    assert ds.first_person_rate(texts) == pytest.approx(3 / 9)  # i, my, me
    with pytest.raises(ValueError, match="positions \\[1\\]"):
        ds.question_rate(["a", None])


def test_unigram_f1_parlai_normalisation():
    # hyp -> cat sat on mat, ref -> cat sat: P 2/4, R 1 -> F1 2/3
    assert ds.unigram_f1("The cat sat on the mat.", "a cat, sat!") == pytest.approx(2 / 3)
    assert ds.unigram_f1("the a an", "the cat") == 0.0
    assert ds.unigram_f1("Dog dog", "dog") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counts clip at the reference's
    assert ds.mean_unigram_f1(["cat", "dog"], ["cat", "cow"]) == 0.5
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        ds.mean_unigram_f1(["a", "b"], ["a"])


def test_response_metrics():
    m = ds.response_metrics(["a b", "a c"], ["a b", "x"])
    assert m["f1"] == 0.5 and m["ttr"] == 0.75
    assert m["distinct_1"] == 0.75 and m["distinct_2"] == 1.0 and m["empty_share"] == 0.0
    silent = ds.response_metrics(["", " "], ["a b", "x"])  # an untrained model may say nothing at all
    assert silent["f1"] == 0.0 and silent["empty_share"] == 1.0
    assert all(math.isnan(silent[k]) for k in ("ttr", "mtld", "distinct_1", "distinct_2"))


def test_sentiment_uses_the_bundled_vader_lexicon():
    good = 1.9 / math.sqrt(1.9 ** 2 + 15)  # VADER's compound for one word of valence 1.9 ("good"), alpha 15
    s = ds.sentiment(["good", "the table"])
    assert s["compound"] == pytest.approx(round(good, 4) / 2)
    assert s["pos"] == 0.5 and s["neu"] == 0.5 and s["neg"] == 0.0


def test_empath_rates_on_our_tokens():
    rates = ds.empath_rates(["Happy happy day!", "..."], categories=["positive_emotion", "negative_emotion"])
    # "happy" is a positive_emotion term; Empath alone would see "day!" and miss "happy!" style tokens
    assert rates == {"positive_emotion": pytest.approx((2 / 3) / 2), "negative_emotion": 0.0}
    with pytest.raises(ValueError, match=r"unknown Empath categories \['glee'\]"):
        ds.empath_rates(["x"], categories=["glee"])


def test_markers_need_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    ds._vader.cache_clear()
    ds._empath.cache_clear()
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    m = ds.markers(["Great, I love it! How are you?", "no."])
    assert m["words"] == 4.0 and m["question_rate"] == 0.5 and m["vader_compound"] > 0
    assert set(m) >= {"first_person_rate", "vader_neg", "empath_positive_emotion", "empath_party"}


# ---------------------------------------------------------------------------------------------------------------
# MCN


VOCAB = ["surf", "bake", "dog", "hi"]


def fake_encode(texts):
    """Bag of vocabulary words: exact cosines by hand."""
    return np.array([[float(w in ds.words(t)) for w in VOCAB] + [1e-9] for t in texts])


def _dialogue():
    return {"id": "d", "personas": {"A": ["I surf."], "B": []},
            "turns": [{"speaker": "A", "text": "Hi! I surf and bake."}, {"speaker": "B", "text": "I surf too."},
                      {"speaker": "A", "text": "My dog!"}, {"speaker": "A", "text": "I surf, hi."}]}


def test_persona_incorporation_with_a_fake_encoder():
    # A's utterances vs "I surf.": cos 1/sqrt(3), 0, 1/sqrt(2); B has no facts and is not counted
    out = ds.persona_incorporation([_dialogue()], fake_encode, threshold=0.6)
    assert out == {"mcn": pytest.approx(1 / 3), "utterances": 3, "incorporating": 1}
    assert ds.persona_incorporation([_dialogue()], fake_encode, threshold=0.5)["incorporating"] == 2


def test_persona_incorporation_errors():
    with pytest.raises(ValueError, match="encoder returned a zero vector"):
        ds.persona_incorporation([_dialogue()], lambda t: np.zeros((len(t), 3)), 0.5)
    with pytest.raises(ValueError, match=r"encoder returned shape \(2,\) for 4 texts"):
        ds.persona_incorporation([_dialogue()], lambda t: np.zeros(2), 0.5)
    nobody = {"id": "x", "personas": {"A": [], "B": []}, "turns": [{"speaker": "A", "text": "hi"}]}
    with pytest.raises(ValueError, match="no utterance by a speaker with persona facts"):
        ds.persona_incorporation([nobody], fake_encode, 0.5)
    with pytest.raises(ValueError, match=r"cosine similarity in \[-1, 1\]"):
        ds.persona_incorporation([_dialogue()], fake_encode, 2)


def test_dataset_stats_row():
    row = ds.dataset_stats([_dialogue()], fake_encode, mcn_threshold=0.6)
    assert row == {"dialogues": 1, "utterances": 4, "turns_per_dialogue": 4.0, "words_per_turn": (5 + 3 + 2 + 3) / 4,
                   "mtld": pytest.approx(ds.mtld([t["text"] for t in _dialogue()["turns"]])),
                   "mcn": pytest.approx(1 / 3)}
    assert "mcn" not in ds.dataset_stats([_dialogue()])
    with pytest.raises(ValueError, match="MCN needs mcn_threshold"):
        ds.dataset_stats([_dialogue()], fake_encode)


# ---------------------------------------------------------------------------------------------------------------
# Trait control


def _generations():
    return [{"trait": "E", "level": "high", "text": "Great party! Who else is coming?"},
            {"trait": "E", "level": "high", "text": "I love it!"},
            {"trait": "E", "level": "low", "text": "No."},
            {"trait": "O", "level": "high", "text": "Art is wonderful."},
            {"trait": "O", "level": "low", "text": "The same as always, I am sad."}]


def test_trait_marker_differences_and_signs():
    diffs = ds.trait_marker_differences(_generations(), empath_categories=["party"])
    assert list(diffs) == ["O", "E"]
    e = diffs["E"]
    assert (e["n_high"], e["n_low"]) == (2, 1)
    assert e["diff"]["words"] == pytest.approx((6 + 3) / 2 - 1)
    assert e["diff"]["question_rate"] == 0.5
    assert e["diff"]["empath_party"] == pytest.approx((1 / 6) / 2)
    assert diffs["O"]["diff"]["words"] == -4.0 and diffs["O"]["diff"]["vader_compound"] > 0
    agree = ds.sign_agreement(diffs)
    assert agree == {"O": {"words": False, "vader_compound": True, "question_rate": None},
                     "E": {"words": True, "vader_compound": True, "question_rate": True}}


def test_trait_marker_differences_errors():
    with pytest.raises(ValueError, match="trait O: no generations at level 'low'"):
        ds.trait_marker_differences([g for g in _generations() if g["level"] == "high"])
    with pytest.raises(ValueError, match="generation 0: trait 'X' / level 'high'"):
        ds.trait_marker_differences([{"trait": "X", "level": "high", "text": "x"}])
    with pytest.raises(ValueError, match=r"no measured difference for markers \['length'\]"):
        ds.sign_agreement({"E": {"diff": {"words": 1.0}}}, expected={"E": {"length": 1}})
