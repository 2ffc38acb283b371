"""lib.metrics: JIC trait capture with a bootstrap over test dialogues, paired differences, the direction verdict."""
import numpy as np
import pytest

from lib import metrics, stats
from lib.traits import TRAITS

TRUTH = {"ann": [1, 1, 0, 0, 1], "bob": [0, 1, 1, 0, 0]}


def _probs(profile_rows, flip=False):
    """Classifier probabilities that threshold at 0.5 to each row's profile (or its opposite)."""
    p = np.array(profile_rows, dtype=float) * 0.6 + 0.2
    return 1 - p if flip else p


def test_dialogue_weights_resample_whole_dialogues():
    ids = ["d1", "d1", "d2", "d3", "d3", "d3"]
    w = metrics.dialogue_weights(ids, n_resamples=200, seed=0)
    assert w.shape == (200, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()  # three dialogues drawn per replicate
    assert (metrics.dialogue_weights(ids, 200, 0) == w).all()
    assert not (metrics.dialogue_weights(ids, 200, 1) == w).all()


def test_capture_with_unit_weights_is_trait_capture_of_mean_probabilities():
    authors = ["ann", "ann", "bob"]
    probs = np.array([[0.9, 0.9, 0.1, 0.1, 0.3], [0.9, 0.9, 0.1, 0.1, 0.9],   # ann: N mean 0.6 -> high (right)
                      [0.1, 0.1, 0.1, 0.9, 0.1]])                              # bob: wrong on E and A
    got = metrics.capture_replicates(probs, authors, TRUTH, 0.5, np.ones((1, 3)))[0]
    pred = np.array([[1, 1, 0, 0, 1], [0, 0, 0, 1, 0]])
    want = metrics.trait_capture(pred, np.array([TRUTH["ann"], TRUTH["bob"]]))["per_trait"]
    assert dict(zip(TRAITS, got)) == pytest.approx(want) and list(got) == [1.0, 0.5, 0.5, 0.5, 1.0]
    # bob's dialogue left out of a replicate: only ann counts there
    only_ann = metrics.capture_replicates(probs, authors, TRUTH, 0.5, np.array([[1, 1, 0]]))[0]
    assert list(only_ann) == [1.0] * 5
    with pytest.raises(ValueError, match="no journal profile"):
        metrics.capture_replicates(probs, ["ann", "ann", "cy"], TRUTH, 0.5, np.ones((1, 3)))


def test_bootstrap_pairs_systems_and_gives_the_verdict():
    ids = [f"d{i}" for i in range(12)]
    authors = ["ann", "bob"] * 6
    rows = [TRUTH[a] for a in authors]
    systems = {"base": (_probs(rows, flip=True), ids, authors), "lora": (_probs(rows), ids, authors),
               "same": (_probs(rows, flip=True), ids, authors)}
    res = metrics.trait_capture_bootstrap(systems, TRUTH, 0.5, "base", n_resamples=300, confidence_level=0.95, seed=0)
    assert res["systems"]["lora"]["mean"] == 1.0 and res["systems"]["lora"]["mean_ci"] == [1.0, 1.0]
    assert res["systems"]["base"]["mean_ci"] == [0.0, 0.0] and res["systems"]["base"]["n"] == 2
    assert res["vs_baseline"]["lora"] == {"diff": 1.0, "ci": [1.0, 1.0]}
    assert stats.verdict(*res["vs_baseline"]["lora"]["ci"]) == "as the paper, beyond the interval"
    # identical outputs: a zero-width interval at 0
    assert res["vs_baseline"]["same"]["ci"] == [0.0, 0.0]
    assert stats.verdict(*res["vs_baseline"]["same"]["ci"]) == "cannot be told at this scale"
    assert set(res["vs_baseline"]) == {"lora", "same"} and res["bootstrap"]["n_dialogues"] == 12
    flipped = metrics.trait_capture_bootstrap(systems, TRUTH, 0.5, "lora", 300, 0.95, 0)
    assert stats.verdict(*flipped["vs_baseline"]["base"]["ci"]) == "reversed, beyond the interval"
    # one dialogue: nothing to resample, so no interval and no verdict however large the difference
    one = {s: (probs[:2], ids[:2], authors[:2]) for s, (probs, ids, authors) in systems.items()}
    one = {s: (p, ["d0", "d0"], a) for s, (p, _, a) in one.items()}
    single = metrics.trait_capture_bootstrap(one, TRUTH, 0.5, "base", 50, 0.95, 0)
    assert single["vs_baseline"]["lora"]["diff"] == 1.0 and np.isnan(single["vs_baseline"]["lora"]["ci"]).all()
    assert stats.verdict(*single["vs_baseline"]["lora"]["ci"]) == "cannot be told at this scale"
    assert np.isnan(single["systems"]["lora"]["mean_ci"]).all()
    with pytest.raises(ValueError, match="baseline 'raft'"):
        metrics.trait_capture_bootstrap(systems, TRUTH, 0.5, "raft", 10, 0.95, 0)


def test_bootstrap_interval_is_seeded_and_holds_the_estimate():
    rng = np.random.default_rng(3)
    truth = {f"a{i}": rng.integers(0, 2, 5).tolist() for i in range(20)}
    ids = [f"d{i}" for i in range(60)]
    authors = [f"a{i % 20}" for i in range(60)]
    systems = {"base": (rng.random((60, 5)), ids, authors), "raft": (rng.random((60, 5)), ids, authors)}
    a = metrics.trait_capture_bootstrap(systems, truth, 0.5, "base", 400, 0.95, seed=7)
    b = metrics.trait_capture_bootstrap(systems, truth, 0.5, "base", 400, 0.95, seed=7)
    assert a["systems"] == b["systems"] and a["vs_baseline"] == b["vs_baseline"]
    for s in ("base", "raft"):
        lo, hi = a["systems"][s]["mean_ci"]
        assert lo < a["systems"][s]["mean"] < hi and hi - lo < 0.5
    narrow = metrics.trait_capture_bootstrap(systems, truth, 0.5, "base", 400, 0.5, seed=7)["systems"]["raft"]
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
    verdict, text = metrics.direction_summary({"lora": up, "raft": up}, ["lora", "raft"], 40, 0.95)
    assert verdict == up["verdict"] and text.startswith("The paper's direction appears beyond the interval")
    assert "lora and raft capture" in text and "40 test dialogues, 95%" in text and "+0.050" in text
    assert text.count("lora − base = +0.200 [+0.050, +0.300]") == 1
    assert metrics.direction_summary({"lora": down, "raft": down}, ["lora", "raft"], 4, 0.95)[0] == down["verdict"]
    verdict, text = metrics.direction_summary({"lora": flat}, ["lora"], 1, 0.95)
    assert verdict == flat["verdict"] and "1 test dialogue," in text
    verdict, text = metrics.direction_summary({"lora": up, "raft": flat}, ["lora", "raft"], 4, 0.95)
    assert verdict == "mixed" and f"{up['verdict']} for lora, {flat['verdict']} for raft" in text
    nan = {"diff": 0.3, "ci": [float("nan")] * 2, "verdict": flat["verdict"]}
    assert "lora − base = +0.300 (no interval)" in metrics.direction_summary({"lora": nan}, ["lora"], 1, 0.95)[1]
    with pytest.raises(ValueError, match="no difference to 'base'"):
        metrics.direction_summary({"lora": up}, ["lora", "raft"], 4, 0.95)
