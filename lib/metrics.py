"""Generation metrics for the evaluation notebooks (12_eval): BLEU-4, ROUGE, METEOR, BERTScore, trait capture.

All lexical metrics use the maintained reference implementations (sacrebleu, rouge-score, nltk, bert_score); this
module only validates inputs and aggregates. Two metrics need resources that may be missing offline:
- METEOR (nltk) needs the WordNet corpus for synonym matching; nltk cannot download it without internet, so
  `meteor` returns (None, reason) instead of crashing or silently scoring without synonyms.
- BERTScore needs a local encoder directory (the paper uses roberta-large; offline we use MiniLM). bert_score 0.3.12
  runs with transformers 5.x for BERT-style encoders (checked with MiniLM).
`metric_availability()` tells the notebook up front which metrics can run and why not.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np

from lib import hub
from lib.traits import TRAITS

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"\w+|[^\w\s]")


def _check_pairs(hyps: list[str], refs: list[str]) -> tuple[list[str], list[str]]:
    """Reject empty inputs, count mismatches and non-strings before any metric runs."""
    hyps, refs = list(hyps), list(refs)
    if not hyps:
        raise ValueError(f"no hypotheses to score (got 0 hypotheses and {len(refs)} references)")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references; they must pair one to one")
    bad = [i for i, (h, r) in enumerate(zip(hyps, refs)) if not isinstance(h, str) or not isinstance(r, str)]
    if bad:
        raise ValueError(f"hypotheses and references must be strings; not at positions {bad[:10]}")
    return hyps, refs


def _wordnet_status() -> tuple[bool, str]:
    """Whether nltk can find the WordNet corpus METEOR needs."""
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
            return True, ""
        except LookupError:
            continue
    return False, ("nltk WordNet corpus not found (METEOR's synonym stage needs it; nltk.download('wordnet') "
                   "needs internet)")


def metric_availability() -> dict[str, tuple[bool, str]]:
    """name -> (available, reason when not) for every metric this module offers."""
    out: dict[str, tuple[bool, str]] = {}
    for name, module in (("bleu4", "sacrebleu"), ("rouge", "rouge_score"), ("bertscore", "bert_score")):
        try:
            __import__(module)
            out[name] = (True, "")
        except ImportError as err:
            out[name] = (False, f"package {module} not importable: {err}")
    out["meteor"] = _wordnet_status()
    out["trait_capture"] = (True, "")
    out["distinct_n"] = (True, "")
    return out


def bleu4(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 (sacrebleu defaults, 13a tokenisation), 0-100."""
    import sacrebleu

    hyps, refs = _check_pairs(hyps, refs)
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


def rouge(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Mean F1 of ROUGE-1, ROUGE-2 and ROUGE-L (rouge-score with Porter stemming), 0-1."""
    from rouge_score import rouge_scorer

    hyps, refs = _check_pairs(hyps, refs)
    names = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    scores = [scorer.score(r, h) for h, r in zip(hyps, refs)]  # score(target, prediction)
    return {n: float(np.mean([s[n].fmeasure for s in scores])) for n in names}


def meteor(hyps: list[str], refs: list[str]) -> tuple[float | None, str]:
    """Mean sentence METEOR (nltk), 0-1, as (score, ""), or (None, reason) when WordNet is missing."""
    hyps, refs = _check_pairs(hyps, refs)
    ok, reason = _wordnet_status()
    if not ok:
        log.warning("METEOR unavailable: %s", reason)
        return None, reason
    from nltk.translate.meteor_score import meteor_score

    # nltk >= 3.7 wants pre-tokenised input; a regex tokeniser avoids needing the punkt model as well.
    scores = [meteor_score([_TOKEN.findall(r.lower())], _TOKEN.findall(h.lower())) for h, r in zip(hyps, refs)]
    return float(np.mean(scores)), ""


def bertscore(hyps: list[str], refs: list[str], model_path: str, num_layers: int,
              batch_size: int = 32) -> tuple[dict[str, float] | None, str]:
    """Mean BERTScore precision/recall/F1 as (scores, ""), or (None, reason) if it cannot run.

    `model_path` is a local encoder directory or a Hub id (the paper profile), loaded by bert_score's from_pretrained.
    """
    hyps, refs = _check_pairs(hyps, refs)
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


def trait_capture(pred_traits, true_traits) -> dict:
    """JIC personality-trait capture: per-trait agreement of predicted high/low traits with the author's profile.

    Rows are speakers: `pred_traits` are the classifier's binary traits for the speaker's generated responses
    (aggregated per speaker), `true_traits` the binary profile from that speaker's journal entries.
    """
    from lib.classifier import as_label_matrix

    pred = as_label_matrix(pred_traits)
    true = as_label_matrix(true_traits)
    if pred.shape != true.shape:
        raise ValueError(f"pred_traits shape {pred.shape} differs from true_traits shape {true.shape}")
    if len(pred) == 0:
        raise ValueError("trait_capture: no speakers")
    per_trait = {t: float((pred[:, j] == true[:, j]).mean()) for j, t in enumerate(TRAITS)}
    return {"per_trait": per_trait, "mean": float(np.mean(list(per_trait.values()))), "n": len(pred)}


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
