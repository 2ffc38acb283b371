"""Evaluation of PersonalityChat (12_eval): dataset statistics (the paper's Table 3), response metrics per model and
test set, and the trait-control analysis of the probe replies.

- Dataset statistics (the paper's Table 3, PersonaChat vs PersonalityChat): dialogues, utterances, words per turn,
  MTLD (paper: PersonalityChat 69.1 vs PersonaChat 50.3) and MCN, persona-fact incorporation.
- Response metrics per model and test set: unigram F1, type-token ratio, MTLD, distinct-1/2 (perplexity comes from
  the model, not from here).
- Trait control: markers of replies under high vs low labels of one trait (words, asking a question, first-person
  share, VADER sentiment, Empath categories), as paired high-minus-low differences (same context, same sampling
  seed) with a 95 % interval over contexts; the paper found that higher O, E and A give more expressive, positive
  and engaging utterances.

    row = evaluate.dataset_stats(dialogues, encode=lambda t: embed(t, minilm_dir), mcn_threshold=0.5)
    scores = evaluate.response_metrics(generated, references)
    diffs = evaluate.paired_differences(probes)       # [{"model", "id", "turn", "seed", "trait", "level", "text"}]
    table = evaluate.control_summary(diffs)           # per model x trait x marker: diff, 95 % interval, verdict

Libraries: MTLD and TTR from `lexicalrichness`, sentiment from `vaderSentiment` (its bundled lexicon), Empath
categories from `empath` (its bundled lexicon; `Empath.create_category` would call a web service and is never used),
distinct-n from lib/metrics.py. Written here: the tokeniser, unigram F1, words per turn, question and first-person
rates, MCN and the high-minus-low differences.

Our reading where the paper is silent:
- Words, one tokenisation for every measure: lower-cased runs of letters and digits with inner apostrophes ("i'm" is
  one word); punctuation marks are not words. MTLD and TTR measure *lexical* diversity, and McCarthy & Jarvis (2010)
  define MTLD over words; counting punctuation would mix each corpus's punctuation habits (PersonaChat's detached
  " ." and " !" vs an LLM's prose) into it. The same tokens feed TTR, MTLD and words per turn, so PersonaChat's
  pre-tokenised lower-case text ("hey there !") and the synthesized cased text count alike. lexicalrichness's own
  tokeniser would split "i'm" into "i" "m" and drop digits, so it gets our token list instead. The paper does not
  say how it tokenised; on human PersonaChat (XPersona English valid + test) this gives MTLD 73.9 against the
  paper's 50.3 (punctuation as tokens would give 55.6; that is not a reason to count it).
- TTR and MTLD (threshold 0.72, McCarthy & Jarvis 2010) are computed over the whole token stream of a corpus, texts in
  order, not averaged per dialogue (a dialogue of ~150 words is too short for a stable MTLD).
- Unigram F1: ParlAI's normalisation (lower case, punctuation removed, articles a/an/the removed), the mean over
  pairs of the F1 of token-count overlap; 0 when either side is empty.
- MCN: the share of utterances (by speakers with persona facts) whose highest cosine similarity to any fact of the
  speaker's own persona exceeds `threshold`; the encoder is passed in, so tests use a fake one.
- Question rate: share of utterances containing "?". First-person rate: share of words that are first-person
  singular pronouns (i, me, my, mine, myself, i'm, i've, i'd, i'll); per reply, 0 for a reply without words.
- Empath: per utterance, category hits / words (Empath's `normalize=True`) on our lower-cased words joined by spaces
  (Empath splits on whitespace only, so "happy!" would miss "happy"), averaged over utterances.
- Trait-control interval: a probe pair is one context (a test turn) answered by one model under one sampling seed
  with the trait set high and set low, everything else equal; its difference is high minus low per marker. Seeds
  are averaged within a context, and the interval is Student's t over contexts (df = contexts - 1): contexts are the
  independent units, while the seeds of one context share its dialogue and are not. A difference "agrees" with the
  paper when its interval lies on the paper's side of 0, "opposes" it when it lies on the other side, and is "n.s."
  when it covers 0.
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
FIRST_PERSON = frozenset(("i", "me", "my", "mine", "myself", "i'm", "i've", "i'd", "i'll"))
DEFAULT_EMPATH = ("positive_emotion", "negative_emotion", "cheerfulness", "nervousness", "friends", "party", "art",
                  "optimism")
# The paper's finding: higher O, E, A -> more expressive (longer), positive and engaging (more questions) utterances.
PAPER_SIGNS = {t: {"words": 1, "vader_compound": 1, "question_rate": 1} for t in ("O", "E", "A")}

Encoder = Callable[[list[str]], np.ndarray]


def words(text: str) -> list[str]:
    """The words of a text (see the module docstring): the tokens of every measure here."""
    return _WORD.findall(text.lower().replace("’", "'").replace("‘", "'"))


def _texts(texts: Sequence[str], what: str) -> list[str]:
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what}: no texts")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{what}: texts must be strings; not at positions {bad[:10]}")
    return texts


def _token_stream(texts: Sequence[str], what: str) -> list[str]:
    tokens = [w for t in _texts(texts, what) for w in words(t)]
    if not tokens:
        raise ValueError(f"{what}: the {len(texts)} texts contain no words")
    return tokens


def _richness(tokens: list[str]):
    from lexicalrichness import LexicalRichness

    return LexicalRichness(tokens, preprocessor=None, tokenizer=None)


def ttr(texts: Sequence[str]) -> float:
    """Type-token ratio over all words of the texts."""
    return float(_richness(_token_stream(texts, "ttr")).ttr)


def mtld(texts: Sequence[str], threshold: float = 0.72) -> float:
    """MTLD (lexicalrichness, forward and backward mean) over the words of the texts, in order."""
    if not 0 < threshold < 1:
        raise ValueError(f"MTLD threshold must be in (0, 1), got {threshold}")
    tokens = _token_stream(texts, "mtld")
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


def response_metrics(hyps: Sequence[str], refs: Sequence[str], mtld_threshold: float = 0.72) -> dict[str, float]:
    """The paper's automatic metrics of generated responses except perplexity: F1, TTR, MTLD, distinct-1/2.

    A model whose responses hold no word at all (an untrained one may emit only special tokens) gets F1 0 and NaN
    for the diversity measures, which are undefined on no tokens; "empty_share" says how many responses were empty.
    """
    f1 = mean_unigram_f1(hyps, refs)
    empty = sum(not words(h) for h in hyps) / len(hyps)
    if empty == 1:
        diversity = dict.fromkeys(("ttr", "mtld", "distinct_1", "distinct_2"), float("nan"))
    else:
        diversity = {"ttr": ttr(hyps), "mtld": mtld(hyps, threshold=mtld_threshold),
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
                  mtld_threshold: float = 0.72, mcn_dialogues: int | None = None) -> dict:
    """One row of the paper's Table 3: dialogues, utterances, turns per dialogue, words per turn, MTLD, MCN.

    MCN is computed on the first `mcn_dialogues` dialogues (all when None; encoding is the slow part), and the row
    says on how many ("mcn_dialogues").
    """
    if not dialogues:
        raise ValueError("dataset_stats: no dialogues")
    texts = [t["text"] for d in dialogues for t in d["turns"]]
    row = {"dialogues": len(dialogues), "utterances": len(texts), "turns_per_dialogue": len(texts) / len(dialogues),
           "words_per_turn": words_per_turn(texts), "mtld": mtld(texts, threshold=mtld_threshold)}
    if encode is not None:
        if mcn_threshold is None:
            raise ValueError("dataset_stats: MCN needs mcn_threshold along with the encoder")
        subset = list(dialogues)[:mcn_dialogues] if mcn_dialogues is not None else list(dialogues)
        row["mcn"] = persona_incorporation(subset, encode, mcn_threshold)["mcn"]
        row["mcn_dialogues"] = len(subset)
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


CONTROL_MARKERS = ("words", "question_rate", "first_person_rate", "vader_compound")  # the figure's four


def reply_markers(text: str, empath_categories: Sequence[str] = DEFAULT_EMPATH) -> dict[str, float]:
    """The trait-control markers of one reply: its words, whether it asks (question_rate 0 or 1), the first-person
    share of its words (0 without words), VADER compound and Empath rates (`empath_<category>`)."""
    tokens = words(text)
    out = {"words": float(len(tokens)), "question_rate": float("?" in text),
           "first_person_rate": sum(w in FIRST_PERSON for w in tokens) / len(tokens) if tokens else 0.0,
           "vader_compound": sentiment([text])["compound"]}
    out.update({f"empath_{k}": v for k, v in empath_rates([text], empath_categories).items()})
    return out


PAIR_KEYS = ("model", "id", "turn", "seed", "trait")  # what a high and a low probe reply of one pair share


def paired_differences(probes: Sequence[Mapping], empath_categories: Sequence[str] = DEFAULT_EMPATH) -> list[dict]:
    """High-minus-low marker differences, one per probe pair.

    `probes` are {"model", "id", "turn", "seed", "trait", "level": "high"|"low", "text"}; the two replies of a pair
    share every key but level and text. Returns [{**pair keys, marker: high - low}] in first-seen order.
    """
    pairs: dict[tuple, dict[str, str]] = {}
    for i, g in enumerate(probes):
        if g.get("trait") not in TRAITS or g.get("level") not in ("high", "low"):
            raise ValueError(f"probe {i}: trait {g.get('trait')!r} / level {g.get('level')!r}; "
                             f"expected one of {TRAITS} and 'high' or 'low'")
        missing = [k for k in PAIR_KEYS if k not in g]
        if missing:
            raise ValueError(f"probe {i}: missing {missing}; a probe needs {list(PAIR_KEYS)}, level and text")
        level = pairs.setdefault(tuple(g[k] for k in PAIR_KEYS), {})
        if g["level"] in level:
            raise ValueError(f"probe {i}: a second {g['level']!r} reply for {dict(zip(PAIR_KEYS, (g[k] for k in PAIR_KEYS)))}")
        level[g["level"]] = g["text"]
    if not pairs:
        raise ValueError("paired_differences: no probes")
    out = []
    for key, texts in pairs.items():
        if len(texts) < 2:
            lacking = "low" if "high" in texts else "high"
            raise ValueError(f"probe pair {dict(zip(PAIR_KEYS, key))} has no {lacking!r} reply; both levels are needed")
        high, low = reply_markers(texts["high"], empath_categories), reply_markers(texts["low"], empath_categories)
        out.append({**dict(zip(PAIR_KEYS, key)), **{m: high[m] - low[m] for m in high}})
    return out


def context_means(differences: Sequence[Mapping], markers: Sequence[str] = CONTROL_MARKERS) -> list[dict]:
    """The differences averaged over seeds within each (model, trait, context): the units of the interval."""
    groups: dict[tuple, list[Mapping]] = {}
    for d in differences:
        groups.setdefault((d["model"], d["trait"], d["id"], d["turn"]), []).append(d)
    return [{"model": m, "trait": t, "id": i, "turn": turn, "seeds": len(ds),
             **{k: float(np.mean([d[k] for d in ds])) for k in markers}}
            for (m, t, i, turn), ds in groups.items()]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """(low, high) Student-t interval of the mean; NaNs for fewer than two values (no spread to estimate)."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean() - half), float(x.mean() + half)


def control_summary(differences: Sequence[Mapping], markers: Sequence[str] = CONTROL_MARKERS,
                    expected: Mapping[str, Mapping[str, int]] = PAPER_SIGNS, confidence: float = 0.95) -> list[dict]:
    """Per model x trait x marker: the mean high-minus-low difference over contexts, its interval over contexts
    (`t_interval` of the per-context means), the contexts and pairs behind it, the paper's sign where it states one,
    and the verdict: "agrees" / "opposes" (interval on one side of 0) or "n.s." (it covers 0); None without a
    stated sign or an interval."""
    per_context = context_means(differences, markers)
    groups: dict[tuple, list[Mapping]] = {}
    for c in per_context:
        groups.setdefault((c["model"], c["trait"]), []).append(c)
    rows = []
    for (model, trait), contexts in groups.items():
        for marker in markers:
            values = [c[marker] for c in contexts]
            lo, hi = t_interval(values, confidence)
            sign = expected.get(trait, {}).get(marker)
            verdict = None
            if sign is not None and not np.isnan(lo):
                verdict = "n.s." if lo <= 0 <= hi else ("agrees" if np.sign(lo) == sign else "opposes")
            rows.append({"model": model, "trait": trait, "marker": marker, "diff": float(np.mean(values)),
                         "low": lo, "high": hi, "contexts": len(contexts), "pairs": sum(c["seeds"] for c in contexts),
                         "paper_sign": sign, "verdict": verdict})
    return rows
