"""Generation metrics shared by the evaluation notebooks (12_eval): corpus BLEU-4, ROUGE, BERTScore, distinct-n.

All lexical metrics use the maintained reference implementations (sacrebleu, rouge-score, bert_score); this module
only validates inputs and aggregates. BERTScore takes a local encoder directory or a Hub id (the paper profile).
A paper's own way of computing them (JIC's script: lib/jic/evaluate.py) lives in that paper's package.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from lib import hub

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"\w+|[^\w\s]")


def check_pairs(hyps: list[str], refs: list[str]) -> tuple[list[str], list[str]]:
    """The pairs as lists, after rejecting empty inputs, count mismatches and non-strings, before any metric runs."""
    hyps, refs = list(hyps), list(refs)
    if not hyps:
        raise ValueError(f"no hypotheses to score (got 0 hypotheses and {len(refs)} references)")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references; they must pair one to one")
    bad = [i for i, (h, r) in enumerate(zip(hyps, refs)) if not isinstance(h, str) or not isinstance(r, str)]
    if bad:
        raise ValueError(f"hypotheses and references must be strings; not at positions {bad[:10]}")
    return hyps, refs


def bleu4(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 (sacrebleu defaults, 13a tokenisation), 0-100."""
    import sacrebleu

    hyps, refs = check_pairs(hyps, refs)
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def rouge(hyps: list[str], refs: list[str], use_stemmer: bool = True) -> dict[str, float]:
    """Mean F1 of ROUGE-1, ROUGE-2 and ROUGE-L (rouge-score; Porter stemming unless use_stemmer=False), 0-1."""
    from rouge_score import rouge_scorer

    hyps, refs = check_pairs(hyps, refs)
    names = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=use_stemmer)
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]  # score(target, prediction)
    return {n: float(np.mean([s[n].fmeasure for s in scores])) for n in names}


def bertscore(hyps: list[str], refs: list[str], model_path: str, num_layers: int | None,
              batch_size: int = 32) -> tuple[dict[str, float] | None, str]:
    """Mean BERTScore precision/recall/F1 as (scores, ""), or (None, reason) if it cannot run.

    `model_path` is a local encoder directory or a Hub id (the paper profile), loaded by bert_score's from_pretrained;
    `num_layers` None takes bert_score's default layer for a model it knows (bert-base-uncased: 9).
    """
    hyps, refs = check_pairs(hyps, refs)
    if not Path(model_path).is_dir() and not hub.is_model_id(model_path):
        raise FileNotFoundError(f"BERTScore encoder directory not found: {model_path}")
    try:
        import bert_score
        import torch
    except ImportError as err:
        return None, f"bert_score not importable: {err}"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # An empty side scores 0, as bert_score itself scores it; scored here, because bert_score 0.3.13 encodes an empty
    # sentence through a tokenizer method that transformers 5 removed (build_inputs_with_special_tokens).
    scored = [i for i, (h, r) in enumerate(zip(hyps, refs)) if h.strip() and r.strip()]
    if not scored:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}, ""
    try:
        P, R, F = bert_score.score([hyps[i] for i in scored], [refs[i] for i in scored], model_type=str(model_path),
                                   num_layers=num_layers, batch_size=batch_size, device=device, verbose=False)
    except (OSError, TypeError, AttributeError, KeyError) as err:
        # Library/version incompatibilities or a bad model path: report, do not guess a number.
        reason = f"bert_score failed with model {model_path}: {type(err).__name__}: {err}"
        log.warning(reason)
        return None, reason
    n = len(hyps)
    return {"precision": float(P.sum()) / n, "recall": float(R.sum()) / n, "f1": float(F.sum()) / n}, ""


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique n-grams / all n-grams over the corpus (lower-cased word tokens)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    texts = list(texts)
    grams: Counter = Counter()
    for t in texts:
        toks = _TOKEN.findall(t.lower())
        grams.update(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    total = sum(grams.values())
    if total == 0:
        raise ValueError(f"distinct_n: the {len(texts)} texts contain no {n}-grams")
    return len(grams) / total
