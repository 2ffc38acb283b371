"""Dialogue statistics and response metrics of PersonalityChat (arXiv 2401.07363): Table 3 and the trait-control
analysis, for `12_eval_pchat`.

- Dataset statistics (the paper's Table 3, PersonaChat vs PersonalityChat): dialogues, utterances, words per turn,
  MTLD (paper: PersonalityChat 69.1 vs PersonaChat 50.3) and MCN, persona-fact incorporation.
- Response metrics per model and test set: unigram F1, type-token ratio, MTLD, distinct-1/2 (perplexity comes from
  the model, not from here).
- Trait control: markers of generations under high vs low labels of one trait (words per turn, question rate,
  first-person rate, VADER sentiment, Empath categories) and their high-minus-low differences per trait; the paper
  found that higher O, E and A give more expressive, positive and engaging utterances.

    row = dialogue_stats.dataset_stats(dialogues, encode=lambda t: embed(t, minilm_dir), mcn_threshold=0.5)
    scores = dialogue_stats.response_metrics(generated, references)
    diffs = dialogue_stats.trait_marker_differences(generations)   # [{"trait", "level", "text"}]
    agree = dialogue_stats.sign_agreement(diffs)                    # against PAPER_SIGNS

Libraries: MTLD and TTR from `lexicalrichness`, sentiment from `vaderSentiment` (its bundled lexicon), Empath
categories from `empath` (its bundled lexicon; `Empath.create_category` would call a web service and is never used),
distinct-n from lib/metrics.py. Written here: the tokeniser, unigram F1, words per turn, question and first-person
rates, MCN and the high-minus-low differences.

Our reading where the paper is silent:
- Words: lower-cased runs of letters and digits with inner apostrophes ("i'm" is one word); punctuation is not a word.
  The same tokens feed TTR, MTLD and words per turn, so PersonaChat's pre-tokenised lower-case text ("hey there !")
  and the synthesized cased text count alike. lexicalrichness's own tokeniser would split "i'm" into "i" "m" and
  drop digits, so it gets our token list instead.
- TTR and MTLD (threshold 0.72, McCarthy & Jarvis 2010) are computed over the whole token stream of a corpus, texts in
  order, not averaged per dialogue. `with_punctuation=True` counts each punctuation mark as a token as well, which
  lowers both: on the mirror's PersonaChat (XPersona valid) MTLD is 75.6 over words and 54.9 with punctuation, the
  paper's PersonaChat figure being 50.3; the paper does not say how it tokenised.
- Unigram F1: ParlAI's normalisation (lower case, punctuation removed, articles a/an/the removed), the mean over
  pairs of the F1 of token-count overlap; 0 when either side is empty.
- MCN: the share of utterances (by speakers with persona facts) whose highest cosine similarity to any fact of the
  speaker's own persona exceeds `threshold`; the encoder is passed in, so tests use a fake one.
- Question rate: share of utterances containing "?". First-person rate: share of words that are first-person
  singular pronouns (i, me, my, mine, myself, i'm, i've, i'd, i'll).
- Empath: per utterance, category hits / words (Empath's `normalize=True`) on our lower-cased words joined by spaces
  (Empath splits on whitespace only, so "happy!" would miss "happy"), averaged over utterances.
"""
from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from lib.metrics import distinct_n
from lib.traits import TRAITS

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_WORD_OR_PUNCT = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]")
FIRST_PERSON = frozenset(("i", "me", "my", "mine", "myself", "i'm", "i've", "i'd", "i'll"))
DEFAULT_EMPATH = ("positive_emotion", "negative_emotion", "cheerfulness", "nervousness", "friends", "party", "art",
                  "optimism")
# The paper's finding: higher O, E, A -> more expressive (longer), positive and engaging (more questions) utterances.
PAPER_SIGNS = {t: {"words": 1, "vader_compound": 1, "question_rate": 1} for t in ("O", "E", "A")}

Encoder = Callable[[list[str]], np.ndarray]


def words(text: str, with_punctuation: bool = False) -> list[str]:
    """The words of a text (see the module docstring), and each punctuation mark when `with_punctuation`."""
    pattern = _WORD_OR_PUNCT if with_punctuation else _WORD
    return pattern.findall(text.lower().replace("’", "'").replace("‘", "'"))


def _texts(texts: Sequence[str], what: str) -> list[str]:
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what}: no texts")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{what}: texts must be strings; not at positions {bad[:10]}")
    return texts


def _token_stream(texts: Sequence[str], what: str, with_punctuation: bool = False) -> list[str]:
    tokens = [w for t in _texts(texts, what) for w in words(t, with_punctuation)]
    if not tokens:
        raise ValueError(f"{what}: the {len(texts)} texts contain no words")
    return tokens


def _richness(tokens: list[str]):
    from lexicalrichness import LexicalRichness

    return LexicalRichness(tokens, preprocessor=None, tokenizer=None)


def ttr(texts: Sequence[str], with_punctuation: bool = False) -> float:
    """Type-token ratio over all words of the texts."""
    return float(_richness(_token_stream(texts, "ttr", with_punctuation)).ttr)


def mtld(texts: Sequence[str], threshold: float = 0.72, with_punctuation: bool = False) -> float:
    """MTLD (lexicalrichness, forward and backward mean) over the words of the texts, in order."""
    if not 0 < threshold < 1:
        raise ValueError(f"MTLD threshold must be in (0, 1), got {threshold}")
    tokens = _token_stream(texts, "mtld", with_punctuation)
    return float(_richness(tokens).mtld(threshold=threshold))


def words_per_turn(texts: Sequence[str]) -> float:
    """Mean number of words per utterance."""
    return float(np.mean([len(words(t)) for t in _texts(texts, "words_per_turn")]))


def question_rate(texts: Sequence[str]) -> float:
    """Share of utterances that contain a question mark."""
    return float(np.mean([("?" in t) for t in _texts(texts, "question_rate")]))


def first_person_rate(texts: Sequence[str]) -> float:
    """Share of all words that are first-person singular pronouns."""
    tokens = _token_stream(texts, "first_person_rate")
    return sum(w in FIRST_PERSON for w in tokens) / len(tokens)


# ---------------------------------------------------------------------------------------------------------------
# Unigram F1 (ParlAI-style normalisation)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> list[str]:
    """ParlAI's F1 tokens: lower case, punctuation to spaces, articles removed, split on whitespace."""
    text = _PUNCT.sub(" ", text.lower())
    return _ARTICLES.sub(" ", text).split()


def unigram_f1(hyp: str, ref: str) -> float:
    """F1 of the token-count overlap between a response and its reference."""
    h, r = normalize_answer(hyp), normalize_answer(ref)
    same = sum((Counter(h) & Counter(r)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(h), same / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_unigram_f1(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Mean unigram F1 over response/reference pairs."""
    hyps, refs = _texts(hyps, "unigram_f1 hypotheses"), _texts(refs, "unigram_f1 references")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references; they must pair one to one")
    return float(np.mean([unigram_f1(h, r) for h, r in zip(hyps, refs)]))


def response_metrics(hyps: Sequence[str], refs: Sequence[str], with_punctuation: bool = False) -> dict[str, float]:
    """The paper's automatic metrics of generated responses except perplexity: F1, TTR, MTLD, distinct-1/2.

    A model whose responses hold no word at all (an untrained one may emit only special tokens) gets F1 0 and NaN
    for the diversity measures, which are undefined on no tokens; "empty_share" says how many responses were empty.
    """
    f1 = mean_unigram_f1(hyps, refs)
    empty = sum(not words(h, with_punctuation) for h in hyps) / len(hyps)
    if empty == 1:
        diversity = dict.fromkeys(("ttr", "mtld", "distinct_1", "distinct_2"), float("nan"))
    else:
        diversity = {"ttr": ttr(hyps, with_punctuation), "mtld": mtld(hyps, with_punctuation=with_punctuation),
                     "distinct_1": distinct_n(hyps, 1), "distinct_2": distinct_n(hyps, 2)}
    return {"f1": f1, **diversity, "empty_share": empty}


# ---------------------------------------------------------------------------------------------------------------
# MCN: persona-fact incorporation


def _unit_rows(matrix, n: int) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or len(m) != n:
        raise ValueError(f"encoder returned shape {m.shape} for {n} texts; expected ({n}, dim)")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("encoder returned a zero vector; cosine similarity is undefined")
    return m / norms


def persona_incorporation(dialogues: Sequence[Mapping], encode: Encoder, threshold: float) -> dict:
    """MCN: {"mcn", "utterances", "incorporating"}, the share of utterances close to one of their speaker's facts.

    `encode` maps a list of texts to an (n, dim) array (it is L2-normalised here); every distinct text is encoded
    once. Speakers without persona facts (XPersona's user) are not counted.
    """
    if not -1 <= threshold <= 1:
        raise ValueError(f"MCN threshold is a cosine similarity in [-1, 1], got {threshold}")
    pairs = [(t["text"], d["personas"][t["speaker"]]) for d in dialogues for t in d["turns"]
             if d["personas"].get(t["speaker"])]
    if not pairs:
        raise ValueError("persona_incorporation: no utterance by a speaker with persona facts")
    texts = list(dict.fromkeys([u for u, _ in pairs] + [f for _, facts in pairs for f in facts]))
    vecs = _unit_rows(encode(texts), len(texts))
    index = {t: i for i, t in enumerate(texts)}
    hits = 0
    for utterance, facts in pairs:
        sims = vecs[[index[f] for f in facts]] @ vecs[index[utterance]]
        hits += bool(sims.max() > threshold)
    return {"mcn": hits / len(pairs), "utterances": len(pairs), "incorporating": hits}


def dataset_stats(dialogues: Sequence[Mapping], encode: Encoder | None = None, mcn_threshold: float | None = None,
                  with_punctuation: bool = False) -> dict:
    """One row of the paper's Table 3: dialogues, utterances, turns per dialogue, words per turn, MTLD, MCN."""
    if not dialogues:
        raise ValueError("dataset_stats: no dialogues")
    texts = [t["text"] for d in dialogues for t in d["turns"]]
    row = {"dialogues": len(dialogues), "utterances": len(texts), "turns_per_dialogue": len(texts) / len(dialogues),
           "words_per_turn": words_per_turn(texts), "mtld": mtld(texts, with_punctuation=with_punctuation)}
    if encode is not None:
        if mcn_threshold is None:
            raise ValueError("dataset_stats: MCN needs mcn_threshold along with the encoder")
        row["mcn"] = persona_incorporation(dialogues, encode, mcn_threshold)["mcn"]
    return row


# ---------------------------------------------------------------------------------------------------------------
# Trait-control markers


@functools.lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()  # reads vader_lexicon.txt shipped in the package


@functools.lru_cache(maxsize=1)
def _empath():
    from empath import Empath

    return Empath()  # reads data/categories.tsv shipped in the package; no network


def sentiment(texts: Sequence[str]) -> dict[str, float]:
    """Mean VADER scores over utterances: compound in [-1, 1], and the pos/neu/neg proportions."""
    scores = [_vader().polarity_scores(t) for t in _texts(texts, "sentiment")]
    return {k: float(np.mean([s[k] for s in scores])) for k in ("compound", "pos", "neu", "neg")}


def empath_rates(texts: Sequence[str], categories: Sequence[str] = DEFAULT_EMPATH) -> dict[str, float]:
    """Mean per-utterance Empath rate (hits / words) of each category; an utterance without words counts 0."""
    texts = _texts(texts, "empath_rates")
    lexicon = _empath()
    unknown = [c for c in categories if c not in lexicon.cats]
    if unknown:
        raise ValueError(f"unknown Empath categories {unknown}; see empath.Empath().cats for the {len(lexicon.cats)}")
    totals = dict.fromkeys(categories, 0.0)
    for text in texts:
        tokens = words(text)
        if not tokens:
            continue
        counts = lexicon.analyze(" ".join(tokens), categories=list(categories), normalize=True)
        for c in categories:
            totals[c] += counts[c]
    return {c: totals[c] / len(texts) for c in categories}


def markers(texts: Sequence[str], empath_categories: Sequence[str] = DEFAULT_EMPATH) -> dict[str, float]:
    """Every lexical and semantic marker of a set of utterances, as one flat dict."""
    out = {"words": words_per_turn(texts), "question_rate": question_rate(texts)}
    has_words = any(words(t) for t in texts)
    out["first_person_rate"] = first_person_rate(texts) if has_words else 0.0
    out.update({f"vader_{k}": v for k, v in sentiment(texts).items()})
    out.update({f"empath_{k}": v for k, v in empath_rates(texts, empath_categories).items()})
    return out


def trait_marker_differences(generations: Sequence[Mapping],
                             empath_categories: Sequence[str] = DEFAULT_EMPATH) -> dict[str, dict]:
    """Per trait: markers of the high and low generations and their high-minus-low difference.

    `generations` are {"trait": "O".."N", "level": "high"|"low", "text"}. Returns {trait: {"n_high", "n_low",
    "high": markers, "low": markers, "diff": {marker: high - low}}} for each trait present; a trait needs both levels.
    """
    groups: dict[str, dict[str, list[str]]] = {}
    for i, g in enumerate(generations):
        if g.get("trait") not in TRAITS or g.get("level") not in ("high", "low"):
            raise ValueError(f"generation {i}: trait {g.get('trait')!r} / level {g.get('level')!r}; "
                             f"expected one of {TRAITS} and 'high' or 'low'")
        groups.setdefault(g["trait"], {"high": [], "low": []})[g["level"]].append(g["text"])
    if not groups:
        raise ValueError("trait_marker_differences: no generations")
    out = {}
    for trait in (t for t in TRAITS if t in groups):
        levels = groups[trait]
        missing = [lvl for lvl in ("high", "low") if not levels[lvl]]
        if missing:
            raise ValueError(f"trait {trait}: no generations at level {missing[0]!r}; both levels are needed")
        high, low = markers(levels["high"], empath_categories), markers(levels["low"], empath_categories)
        out[trait] = {"n_high": len(levels["high"]), "n_low": len(levels["low"]), "high": high, "low": low,
                      "diff": {k: high[k] - low[k] for k in high}}
    return out


def sign_agreement(differences: Mapping[str, Mapping], expected: Mapping[str, Mapping[str, int]] = PAPER_SIGNS
                   ) -> dict[str, dict[str, bool | None]]:
    """{trait: {marker: whether the measured difference has the expected sign}}; None when it is exactly 0."""
    out: dict[str, dict[str, bool | None]] = {}
    for trait, signs in expected.items():
        if trait not in differences:
            continue
        diff = differences[trait]["diff"]
        missing = [m for m in signs if m not in diff]
        if missing:
            raise ValueError(f"trait {trait}: no measured difference for markers {missing}")
        out[trait] = {m: (None if diff[m] == 0 else bool(np.sign(diff[m]) == sign)) for m, sign in signs.items()}
    return out
