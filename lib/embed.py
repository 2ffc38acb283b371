"""Sentence embeddings for journal entries, trait classification and MMR retrieval.

`embed(texts, model_path)` turns texts into an (n, dim) float32 array with a frozen encoder. `model_path` is either a
sentence-transformers directory (MiniLM, offline) or a plain Hugging Face encoder directory (the JIC paper uses
microsoft/deberta-large, mean pooled). For a plain encoder, sentence-transformers 6.2.0 builds Transformer + mean
Pooling itself (non-causal architectures get "mean", see SentenceTransformer._load_auto_model); `load_encoder`
checks that the resulting pooling really is mean so a library change cannot silently switch us to CLS pooling.

Every text is cut to at most `max_input_tokens` of its encoder, whatever max_seq_length a caller asks for:
microsoft/deberta-large's tokenizer_config.json sets no model_max_length (transformers then reports int(1e30)) and
its positions are relative, so a longer input raises nothing and is quietly encoded at positions it never saw.
sentence-transformers/gtr-t5-base (PersLLM's retriever) is a T5 encoder: relative positions and no
max_position_embeddings at all, so its limit is its pipeline's max_seq_length (512, as its tokenizer's).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np

from lib import hub

log = logging.getLogger(__name__)
NO_LIMIT = int(1e20)  # transformers' LARGE_INTEGER: a model_max_length at or above it means "the repo set none"


def _device() -> str:
    """Pick cuda when present, else cpu (the cpu/tiny profiles)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=4)
def load_encoder(model_path: str):
    """Load (once per path) a SentenceTransformer from a local directory or a Hub id; plain HF encoders (no
    modules.json: deberta-large on the paper profile) must end up mean pooled.

    A local directory is read with local_files_only; a Hub id goes through the Hugging Face cache (downloading it
    unless HF_HUB_OFFLINE is set), exactly as `from_pretrained("<id>")` does.
    """
    from sentence_transformers import SentenceTransformer

    path = Path(model_path)
    local = path.is_dir()
    if not local and not hub.is_model_id(model_path):
        raise FileNotFoundError(f"encoder directory not found: {model_path}")
    model = SentenceTransformer(str(model_path), device=_device(), local_files_only=local)
    modes = [getattr(m, "pooling_mode", None) for m in model]
    pipeline = _has_modules_json(model_path, local)
    if not pipeline and "mean" not in modes:
        raise ValueError(f"{model_path}: expected mean pooling for a plain encoder, got modules {modes}")
    # Read now: embed() overwrites the tokenizer's model_max_length on every call. A sentence-transformers
    # pipeline's own max_seq_length (MiniLM: 256) is its training length, not a limit, so the config's
    # max_position_embeddings counts where there is one; a relative-position config has none (T5: gtr-t5-base), and
    # then the pipeline's max_seq_length is the limit (sentence_bert_config.json's, else the tokenizer's
    # model_max_length: sentence-transformers loads either into model.max_seq_length; gtr-t5-base: 512).
    config = model[0].auto_model.config
    if pipeline:
        model.max_input_tokens = max_input_tokens(config, pipeline_length=model.max_seq_length)
    else:
        model.max_input_tokens = max_input_tokens(config, model.tokenizer)
    return model


def max_input_tokens(config, tokenizer=None, pipeline_length: int | None = None) -> int:
    """The most tokens, special ones included, an encoder takes: its config's max_position_embeddings, capped by the
    tokenizer's model_max_length where the repo sets one (microsoft/deberta-large sets none: int(1e30)).

    A relative-position config (T5) has no max_position_embeddings: then the tokenizer's model_max_length is the
    limit, or where no tokenizer is given, `pipeline_length`, a sentence-transformers pipeline's max_seq_length
    (which only counts where the config has no limit of its own)."""
    def usable(n) -> bool:
        return isinstance(n, int) and not isinstance(n, bool) and 0 < n < NO_LIMIT

    found = (getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None))
    limits = [n for n in found if usable(n)]
    if not limits and usable(pipeline_length):
        limits = [pipeline_length]
    if not limits:
        raise ValueError(f"cannot tell the input limit of a {type(config).__name__}: no max_position_embeddings, no "
                         "model_max_length and no max_seq_length; pass a tokenizer with one")
    return min(limits)


def input_length(model, model_path: str | Path, max_seq_length: int) -> int:
    """max_seq_length, or the encoder's own limit when that is smaller (said once per encoder and length)."""
    limit = model.max_input_tokens
    if max_seq_length > limit:
        _warn_capped(str(model_path), max_seq_length, limit)
    return min(max_seq_length, limit)


@functools.lru_cache(maxsize=64)
def _warn_capped(model_path: str, asked: int, limit: int) -> None:
    log.warning("%s takes at most %d tokens; texts are cut there, not at the %d asked for", model_path, limit, asked)


def _has_modules_json(model_path: str, local: bool) -> bool:
    """Whether the model ships its own sentence-transformers pipeline (modules.json), locally or in the HF cache."""
    if local:
        return (Path(model_path) / "modules.json").exists()
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(str(model_path), "modules.json"), str)


def embed(texts: list[str], model_path: str | Path, batch_size: int = 32, max_seq_length: int = 256,
          normalize: bool = True) -> np.ndarray:
    """Encode texts into an (n, dim) float32 array; L2-normalised by default so dot product = cosine."""
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"embed: texts must be strings; non-strings at positions {bad[:10]}")
    model = load_encoder(str(model_path))
    dim = model.get_embedding_dimension()
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    # The cached model is shared; max_seq_length is set per call so callers cannot leak settings into each other.
    model.max_seq_length = input_length(model, model_path, max_seq_length)
    out = model.encode(texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=normalize,
                       show_progress_bar=False)
    return np.asarray(out, dtype=np.float32)


def windows(text: str, tokenizer, size: int) -> list[str]:
    """A text cut into consecutive pieces of at most `size` tokens (the encoder's own tokenizer), decoded back."""
    if size < 1:
        raise ValueError(f"window size must be >= 1, got {size}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode(ids[i:i + size]) for i in range(0, len(ids), size)] or [text]


def embed_long(texts: list[str], model_path: str | Path, batch_size: int = 32, max_seq_length: int = 256) -> np.ndarray:
    """Encode texts longer than the encoder's window: each text is the mean of its windows' embeddings (every window
    but the special tokens fits max_seq_length, or the encoder's limit if smaller), L2-normalised. `embed` would keep
    the first window only."""
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"embed_long: texts must be strings; non-strings at positions {bad[:10]}")
    model = load_encoder(str(model_path))
    max_seq_length = input_length(model, model_path, max_seq_length)
    pieces, owner = [], []
    for i, text in enumerate(texts):
        w = windows(text, model.tokenizer, max_seq_length - 2)  # room for [CLS] and [SEP]
        pieces += w
        owner += [i] * len(w)
    vectors = embed(pieces, model_path, batch_size=batch_size, max_seq_length=max_seq_length)
    if not texts:
        return vectors
    owner = np.asarray(owner)
    sums = np.zeros((len(texts), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, vectors)
    means = sums / np.bincount(owner, minlength=len(texts))[:, None]
    return (means / np.linalg.norm(means, axis=1, keepdims=True).clip(min=1e-12)).astype(np.float32)


def build_tiny_encoder(out_dir: str | Path, texts: list[str] | None = None, hidden_size: int = 32,
                       num_layers: int = 2, seed: int = 0) -> Path:
    """Write a random-init micro BERT encoder with a WordPiece vocab from `texts` (tiny profile and tests).

    It stands in for microsoft/deberta-large: a plain HF encoder dir without modules.json, so it exercises the
    mean-pooling path of `embed` and the fine-tuning path of lib.classifier in milliseconds.
    """
    import re

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = texts or ["I love parties and meeting new people.", "I worry a lot and feel anxious at night.",
                      "I plan my week carefully and keep lists.", "Art and new ideas fascinate me."]
    words = sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^a-z0-9\s]", t.lower())})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (out_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(out_dir)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden_size, num_hidden_layers=num_layers,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=128,
                        pad_token_id=0)
    BertModel(config).save_pretrained(out_dir)
    return out_dir
