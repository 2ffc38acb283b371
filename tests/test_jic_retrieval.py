"""lib/jic/retrieval.py: MMR orders on hand-built vectors, RAFt input rendering."""
import numpy as np
import pytest

from lib.jic.retrieval import build_raft_input, mmr

Q = np.array([1.0, 0.0, 0.0])
DOCS = np.array([
    [1.0, 0.1, 0.0],    # 0: most relevant (cos 0.995)
    [1.0, 0.1, 0.02],   # 1: near-duplicate of 0 (cos to q 0.995, to doc 0 ~1.0)
    [0.7, -0.2, 0.7],   # 2: relevant (cos 0.69) and different from 0 (cos 0.67)
    [0.0, 1.0, 0.0],    # 3: irrelevant
])


def test_lambda_one_is_plain_top_k():
    cos = (DOCS @ Q) / np.linalg.norm(DOCS, axis=1)
    assert mmr(Q, DOCS, 4, lambda_=1.0) == [0, 1, 2, 3] == np.argsort(-cos, kind="stable").tolist()
    assert mmr(Q * 5, DOCS * 3, 2, lambda_=1.0) == [0, 1]  # cosine: scale does not matter


def test_near_duplicate_is_skipped_for_a_diverse_document():
    # Second pick: doc 1 scores 0.5*0.995 - 0.5*0.9998 < 0, doc 2 scores 0.5*0.69 - 0.5*0.67 > 0.
    assert mmr(Q, DOCS, 2, lambda_=0.5) == [0, 2]
    assert mmr(Q, DOCS, 4, lambda_=0.5) == [0, 2, 1, 3]
    assert mmr(Q, DOCS, 2, lambda_=0.0) == [0, 3]  # pure diversity after the first (tied) pick


def test_k_is_capped_and_bad_input_rejected():
    assert mmr(Q, DOCS, 10) == [0, 2, 1, 3]
    assert mmr(Q, DOCS, 0) == [] and mmr(Q, np.zeros((0, 3)), 3) == []
    with pytest.raises(ValueError, match="query has dim 2"):
        mmr(Q[:2], DOCS, 2)
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        mmr(Q, np.array([[1.0, 0, 0], [0, 0, 0]]), 2)
    with pytest.raises(ValueError, match="lambda_"):
        mmr(Q, DOCS, 2, lambda_=1.5)


def test_build_raft_input():
    out = build_raft_input(" How was your day? ", ["I went hiking.", "I love the mountains."],
                           template="Segments:\n{segments}\nUser said: {utterance}")
    assert out == "Segments:\nI went hiking.\nI love the mountains.\nUser said: How was your day?"
    with pytest.raises(ValueError, match="must contain"):
        build_raft_input("hi", [], template="{utterance}")
