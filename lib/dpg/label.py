"""DPG's labelling: the personality assessment of the character windows by the teacher (05_label_dpg), its
reliability checks, the outlier filter, and P.S.D.C.

DPG (arXiv 2404.07084) labels each character window with a Big-Five vector: per sample and dimension an LLM
"psychologist" with expert knowledge of the trait and its six NEO-PI-R facets reads the dialogue and scores the
character from -5 to 5 with the anchors of its predecessor (Wang et al. 2023): +5 high across many facets, +2 high
on one facet, 0 cannot tell, -2 low on one facet, -5 low across many. The reply is JSON {"analysis", "result"}.
The same machine scores the students' generated dialogue in 12_eval, where P.S.D.C. compares the vector a student
was prompted with and the one assessed on what it wrote. P.S.D.C. lives here beside the machine whose scores it
compares (it is the one piece of this module that only 12_eval runs).

    knowledge = load_knowledge("params/prompts/dpg_knowledge.yaml")
    template = load_template("params/prompts/dpg_assess_knowledge.txt")          # or dpg_assess_vanilla.txt
    records = assessment_records(samples, run=0)                                   # one per (sample, trait)
    build = lambda r: assessment_chats(by_id[r["sample_id"]], r["trait"], template, knowledge, max_words=600)
    run_records(records, build, parse_record, teacher, Sampling(seed=0), out, rejects)   # lib.teacher
    table = score_table(read_jsonl(out))                                           # sample_id, character, O..N
    kept, dropped = drop_outliers(table, rule="zscore", threshold=2.0)
    psdc(prompted_vectors, assessed_vectors)                                       # {"per_trait", "l1", "l2", ...}

A deterministic reading for local models, `loglik_scores`, takes the expected score under the softmax of the eleven
options' log-likelihoods (lib.psychometrics.likert_loglik) from chats built with answer="score".
"""
from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lib.dpg.data import render_turns
from lib.prompts import check_template
from lib.psychometrics import likert_loglik
from lib.records import read_jsonl
from lib.stats import mean_ci
from lib.teacher import InvalidReply, Sampling, run_records
from lib.traits import NAMES, TRAITS

Messages = list[dict]

SCORE_MIN, SCORE_MAX = -5, 5
SCORE_OPTIONS = tuple(str(k) for k in range(SCORE_MIN, SCORE_MAX + 1))  # "-5" ... "5"; none is a prefix of another
SCORE_VALUES = np.arange(SCORE_MIN, SCORE_MAX + 1)

ASSESS_FIELDS = {"character", "trait_name", "description", "facets", "dialogue", "answer_format"}
KNOWLEDGE_FIELDS = {"description", "facets"}  # a template naming these is the knowledge variant
ANSWER_FORMATS = {
    # the teacher's contract (parse_assessment)
    "json": ('Reply with a JSON object and nothing else: {"analysis": "<your reasoning, facet by facet, citing the '
             'dialogue>", "result": <the score, an integer from -5 to 5>}'),
    # the log-likelihood reading: the reply is the number alone (loglik_scores)
    "score": "Answer with the score only: a single integer from -5 to 5.",
}
N_FACETS = 6

# DPG's reported P.S.D.C. (lower is better); the formula behind these numbers is not given in the paper.
PUBLISHED_PSDC = {"DPG": 3.14, "GPT-4 prompting": 3.36, "LoRA-SFT": 4.25}


# ---------------------------------------------------------------------------------------------------------------
# Knowledge and prompts


def load_template(path: str | Path) -> str:
    """A prompt template file's text (params/prompts/dpg_*.txt)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt template not found: {path}")
    return path.read_text(encoding="utf-8")


def load_knowledge(path: str | Path) -> dict[str, dict]:
    """Trait knowledge {O..N: {"name", "description", "facets": [{"name", "description"}] * 6}} from YAML.

    A ValueError names the missing trait, field or facet.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trait knowledge not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(  # noqa: TRY004
            f"{path}: expected a mapping of the traits {list(TRAITS)}, got {type(data).__name__}")
    missing = [t for t in TRAITS if t not in data]
    extra = [k for k in data if k not in TRAITS]
    if missing or extra:
        raise ValueError(f"{path}: traits must be exactly {list(TRAITS)}: missing {missing}, unexpected {extra}")
    out = {}
    for t in TRAITS:
        entry = data[t]
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {t} must be a mapping with name, description and facets")  # noqa: TRY004
        for key in ("name", "description"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ValueError(f"{path}: {t} has no {key}")
        facets = entry.get("facets")
        if not isinstance(facets, list) or len(facets) != N_FACETS:
            n = len(facets) if isinstance(facets, list) else 0
            raise ValueError(f"{path}: {t} must list {N_FACETS} facets, has {n}")
        clean = []
        for i, facet in enumerate(facets, start=1):
            if not isinstance(facet, dict) or not all(isinstance(facet.get(k), str) and facet[k].strip()
                                                      for k in ("name", "description")):
                raise ValueError(f"{path}: {t} facet {i} needs a name and a description, got {facet!r}")
            clean.append({"name": facet["name"].strip(), "description": " ".join(facet["description"].split())})
        names = [f["name"].lower() for f in clean]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: {t} repeats a facet: {names}")
        out[t] = {"name": entry["name"].strip(), "description": " ".join(entry["description"].split()),
                  "facets": clean}
    return out


def render_dialogue(turns: Sequence[Mapping], max_words: int | None = None) -> tuple[str, int]:
    """(text, omitted): "Speaker: text" lines, trimmed to `max_words` words of dialogue text.

    Turns are kept whole from the start of the window while they fit; the rest are cut (their number is `omitted`),
    and a first turn longer than the budget alone is cut to `max_words` words and ends in "...", so a prompt never
    has an empty dialogue. Only the turns' own words count, not the speaker names.
    """
    if max_words is not None and (not isinstance(max_words, int) or max_words < 1):
        raise ValueError(f"max_words must be an integer >= 1 or None, got {max_words!r}")
    if not turns:
        raise ValueError("no dialogue turns to render")
    kept, used = [], 0
    for turn in turns:
        n = len(str(turn["text"]).split())
        if max_words is not None and used + n > max_words:
            if not kept:
                words = str(turn["text"]).split()[:max_words]
                kept.append({"speaker": turn["speaker"], "text": " ".join(words) + " ..."})
            break
        kept.append(turn)
        used += n
    return render_turns(kept), len(turns) - len(kept)


def assessment_chats(sample: Mapping, trait: str, template: str, knowledge: Mapping | None = None,
                     max_words: int | None = 600, answer: str = "json") -> Messages:
    """The psychologist's chat for one sample and trait: the filled template as a single user message.

    A template with {description} and {facets} is the knowledge variant and needs `knowledge` (load_knowledge); the
    vanilla one (the paper's comparison without knowledge) only names the trait. The dialogue is trimmed by
    `render_dialogue` (whole turns from the window's start up to `max_words`); when turns are cut the prompt says how
    many. `answer` picks the answer instruction: "json" (the teacher's JSON contract) or "score" (the number alone,
    for `loglik_scores`).
    """
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; expected one of {list(TRAITS)}")
    if answer not in ANSWER_FORMATS:
        raise ValueError(f"answer must be one of {sorted(ANSWER_FORMATS)}, got {answer!r}")
    fields = check_template(template, ASSESS_FIELDS, required=("dialogue", "answer_format"), what="assessment")
    values = {"character": sample["character"], "trait_name": NAMES[trait]}
    if fields & KNOWLEDGE_FIELDS:
        if knowledge is None:
            raise ValueError(f"the template uses {sorted(fields & KNOWLEDGE_FIELDS)}: pass the trait knowledge "
                             f"(load_knowledge), or use the vanilla template")
        entry = knowledge[trait]
        values["description"] = entry["description"]
        values["facets"] = "\n".join(f"- {f['name'][0].upper() + f['name'][1:]}: {f['description']}"
                                     for f in entry["facets"])
    dialogue, omitted = render_dialogue(sample["turns"], max_words)
    if omitted:
        dialogue += f"\n[... the dialogue goes on for {omitted} more turn{'s' if omitted > 1 else ''}, not shown]"
    values["dialogue"] = dialogue
    values["answer_format"] = ANSWER_FORMATS[answer]
    return [{"role": "user", "content": template.format(**values).strip()}]


# ---------------------------------------------------------------------------------------------------------------
# Parsing the teacher's reply

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
_INT_TEXT = re.compile(r"[+-]?\d+(?:\.0*)?")


def _json_objects(text: str) -> list[dict]:
    """JSON objects in a reply: the whole reply, the inside of ``` fences, and any object embedded in text."""
    decoder = json.JSONDecoder()
    found = []
    for chunk in (*_FENCE.findall(text), text):
        chunk = chunk.strip()
        try:
            found.append(json.loads(chunk))
        except json.JSONDecodeError:
            pass
        for m in re.finditer(r"\{", chunk):
            try:
                found.append(decoder.raw_decode(chunk, m.start())[0])
            except json.JSONDecodeError:
                continue
    return [obj for obj in found if isinstance(obj, dict)]


def _as_int(value) -> int:
    """An integer, an integer-valued float, or a string of one ("3", "+3", "-2.0"); else InvalidReply not_integer."""
    if isinstance(value, bool):
        raise InvalidReply("not_integer", f"result is {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(value.strip()):
        return int(float(value.strip()))
    raise InvalidReply("not_integer", f"result is {value!r}")


def _parse(reply: str) -> tuple[int, str]:
    """(score, analysis) from a teacher reply; InvalidReply with not_json / no_result / not_integer / out_of_range."""
    text = reply.strip() if isinstance(reply, str) else ""
    objects = _json_objects(text)
    if not objects:
        raise InvalidReply("not_json", text[:200])
    for obj in objects:
        key = "result" if "result" in obj else next((k for k in obj if str(k).strip().lower() == "result"), None)
        if key is not None:
            break
    else:
        raise InvalidReply("no_result", f"keys {sorted(map(str, objects[0]))}")
    score = _as_int(obj[key])
    if not SCORE_MIN <= score <= SCORE_MAX:
        raise InvalidReply("out_of_range", f"result {score} is outside [{SCORE_MIN}, {SCORE_MAX}]")
    return score, str(obj.get("analysis", "")).strip()


def parse_assessment(reply: str) -> int:
    """The integer score in [-5, 5] of a reply {"analysis": ..., "result": <int>}, also inside ```json fences or
    with text around it; raises lib.teacher.InvalidReply with reason not_json, no_result, not_integer or
    out_of_range."""
    return _parse(reply)[0]


def assessment_records(samples: Sequence[Mapping], traits: Sequence[str] = TRAITS, run: int = 0) -> list[dict]:
    """One record per (sample, trait) for lib.teacher.run_records, id "<sample_id>/<trait>/<run>".

    Repeated runs (for `repeat_agreement`) need a run-specific sampling seed as well: the response cache keys on the
    chat and the sampling settings, so the same chat with the same seed returns the cached reply.
    """
    bad = [t for t in traits if t not in TRAITS]
    if bad:
        raise ValueError(f"unknown traits {bad}; expected some of {list(TRAITS)}")
    return [{"id": f"{s['sample_id']}/{t}/{run}", "sample_id": s["sample_id"], "character": s["character"],
             "trait": t, "run": run} for s in samples for t in traits]


def parse_record(record: Mapping, reply: str) -> dict:
    """run_records' parse: the record's sample_id, character, trait and run with the score and the analysis."""
    score, analysis = _parse(reply)
    return {"sample_id": record["sample_id"], "character": record.get("character"), "trait": record["trait"],
            "run": record.get("run", 0), "score": score, "analysis": analysis}


# ---------------------------------------------------------------------------------------------------------------
# Log-likelihood reading


def score_probs(logp: np.ndarray) -> np.ndarray:
    """Softmax over the options of each row of an (n x 11) log-likelihood array: the options' shares, summing to 1."""
    logp = np.asarray(logp, dtype=float)
    if logp.ndim != 2 or logp.shape[1] != len(SCORE_OPTIONS):
        raise ValueError(f"expected an (n x {len(SCORE_OPTIONS)}) array of option log-likelihoods, got {logp.shape}")
    probs = np.exp(logp - logp.max(axis=1, keepdims=True))
    return probs / probs.sum(axis=1, keepdims=True)


def option_logliks(model, tokenizer, chats: list[Messages], batch_size: int = 8) -> np.ndarray:
    """Log-probability of each of the eleven options as the assistant's reply (n_chats x 11), one row per chat.

    The options "-5" ... "5" are one or two tokens ("-" then a digit under most tokenizers), and every option's
    tokens but its last are a prefix of the row prompt + "-5": the distributions at the row's last prompt position
    and after its "-" score all eleven at once, 11x fewer rows than scoring each option on its own row
    (lib.psychometrics.likert_loglik, which gives the same numbers and is the fallback for other tokenizations).
    """
    import torch

    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    rows, reads = [], []
    for text in texts:
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        opts = []
        for option in SCORE_OPTIONS:
            full = tokenizer(text + option, add_special_tokens=False)["input_ids"]
            opts.append(full[len(prompt):] if full[:len(prompt)] == prompt else None)
        longest = max((o for o in opts if o), key=len, default=None)
        if longest is None or any(o is None or not o or o[:-1] != longest[:len(o) - 1] for o in opts):
            return likert_loglik(model, tokenizer, chats, SCORE_OPTIONS, batch_size=batch_size)
        rows.append(prompt + longest[:-1])
        reads.append((len(prompt), opts))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = np.empty((len(chats), len(SCORE_OPTIONS)))
    was = model.training
    model.eval()
    with torch.inference_mode():
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)  # right padding: positions start at 0
            mask = torch.zeros_like(ids)
            for r, row in enumerate(chunk):
                ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
            logp = torch.log_softmax(model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
                                     .logits.float(), dim=-1).cpu()
            for r in range(len(chunk)):
                prompt_len, opts = reads[lo + r]
                for j, option_ids in enumerate(opts):  # token k of the option is predicted at position prompt_len-1+k
                    out[lo + r, j] = sum(float(logp[r, prompt_len - 1 + k, t]) for k, t in enumerate(option_ids))
    model.train(was)
    return out


def loglik_scores(model, tokenizer, chats: list[Messages], batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(expected, best): per chat, the expected score over -5..5 under the softmax of the options' log-likelihoods
    as the assistant's whole reply, and the most likely option. Build the chats with answer="score", so that the
    reply the model is asked for is the number alone."""
    logp = option_logliks(model, tokenizer, chats, batch_size=batch_size)
    probs = score_probs(logp)
    return probs @ SCORE_VALUES, SCORE_VALUES[logp.argmax(axis=1)]


def assess_by_loglik(model, tokenizer, samples: Sequence[Mapping], template: str, knowledge: Mapping | None = None,
                     traits: Sequence[str] = TRAITS, max_words: int | None = 600, batch_size: int = 8) -> pd.DataFrame:
    """Rows sample_id, character, trait, run (0), score (the expected score) and best (the argmax option), for
    `score_table`."""
    records = assessment_records(samples, traits)
    by_id = {s["sample_id"]: s for s in samples}
    chats = [assessment_chats(by_id[r["sample_id"]], r["trait"], template, knowledge, max_words, answer="score")
             for r in records]
    expected, best = loglik_scores(model, tokenizer, chats, batch_size=batch_size)
    rows = pd.DataFrame(records).drop(columns="id")
    rows["score"], rows["best"] = expected, best
    return rows


def assess_samples(samples: Sequence[Mapping], template: str, knowledge: Mapping | None, settings: Mapping,
                   out_path: str | Path, rejects_path: str | Path, *, model=None, tokenizer=None,
                   teacher=None) -> tuple[pd.DataFrame, dict]:
    """(rows, stats): the assessment machine over samples, in either reading, resumable; 05 and 12 both use it.

    `settings` is a `label.dpg` params section (backend, max_words, batch_size; and for a teacher repeats,
    temperature, top_p, max_new_tokens, seed, max_repairs). With backend "loglik" the `model`/`tokenizer` read every
    (sample, trait) once, deterministically, and the rows are written to `out_path` at the end (a finished file is
    read back, not recomputed). Otherwise `teacher` (lib.teacher.from_params) answers `repeats` times with a seed
    per run; each accepted score or reject (with its reason) is appended as it arrives, so a killed run resumes and a
    reply that never parses stays one counted reject. Rows: sample_id, character, trait, run, score.
    """
    out_path, rejects_path = Path(out_path), Path(rejects_path)
    if not samples:
        raise ValueError(f"no samples to assess for {out_path.name}")
    start = time.perf_counter()
    if settings["backend"] == "loglik":
        if model is None or tokenizer is None:
            raise ValueError("the loglik reading needs the model and tokenizer")
        if out_path.exists():
            return pd.DataFrame(read_jsonl(out_path)), {"kept": True}
        rows = assess_by_loglik(model, tokenizer, samples, template, knowledge, max_words=settings["max_words"],
                                batch_size=settings["batch_size"])
        tmp = out_path.with_suffix(".tmp")
        rows.to_json(tmp, orient="records", lines=True, force_ascii=False)
        tmp.replace(out_path)  # never a half-written file that a rerun would take as finished
        return rows, {"prompts": len(rows), "seconds": time.perf_counter() - start}
    if teacher is None:
        raise ValueError(f"backend {settings['backend']!r} needs a teacher")
    by_id = {s["sample_id"]: s for s in samples}
    runs = {}
    for run in range(settings["repeats"]):
        runs[run] = run_records(
            assessment_records(samples, run=run),
            lambda r: assessment_chats(by_id[r["sample_id"]], r["trait"], template, knowledge, settings["max_words"]),
            parse_record, teacher,
            Sampling(temperature=settings["temperature"], top_p=settings["top_p"],
                     max_new_tokens=settings["max_new_tokens"], seed=settings["seed"] + run),
            out_path, rejects_path, max_repairs=settings["max_repairs"], batch_size=settings["batch_size"]).as_dict()
    rows = (pd.DataFrame(read_jsonl(out_path)) if out_path.exists()
            else pd.DataFrame(columns=["sample_id", "character", "trait", "run", "score"]))
    rejects = read_jsonl(rejects_path) if rejects_path.exists() else []
    return rows, {"runs": runs, "seconds": time.perf_counter() - start, "rejects": len(rejects),
                  "reject_reasons": dict(Counter(r["reason"] for r in rejects))}


# ---------------------------------------------------------------------------------------------------------------
# Tables


def _frame(rows) -> pd.DataFrame:
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    missing = [c for c in ("sample_id", "trait", "score") if c not in df.columns]
    if missing:
        raise ValueError(f"score rows lack columns {missing} (expected sample_id, trait, score[, run, character])")
    if "run" not in df.columns:
        df["run"] = 0
    unknown = sorted(set(df["trait"]) - set(TRAITS))
    if unknown:
        raise ValueError(f"score rows have unknown traits {unknown}")
    dup = df[df.duplicated(["sample_id", "trait", "run"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        raise ValueError(f"two scores for sample {first['sample_id']!r}, trait {first['trait']}, run {first['run']}")
    df["score"] = pd.to_numeric(df["score"], errors="raise").astype(float)
    return df


def score_table(rows: Iterable[Mapping] | pd.DataFrame) -> pd.DataFrame:
    """One row per sample (in order of first appearance) with columns sample_id, character (when the rows have it),
    O, C, E, A, N; a score missing for a trait is NaN. Several runs of one (sample, trait) are averaged."""
    df = _frame(rows)
    order = list(dict.fromkeys(df["sample_id"]))
    wide = df.groupby(["sample_id", "trait"])["score"].mean().unstack("trait")
    wide = wide.reindex(index=order, columns=list(TRAITS))
    out = pd.DataFrame({"sample_id": order})
    if "character" in df.columns:
        out["character"] = df.groupby("sample_id")["character"].first().reindex(order).to_numpy()
    for t in TRAITS:
        out[t] = wide[t].to_numpy()
    return out


def score_runs(rows: Iterable[Mapping] | pd.DataFrame,
               sample_ids: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], list]:
    """(scores [runs x samples x traits], sample_ids, runs) for `repeat_agreement`; NaN where a run has no score."""
    df = _frame(rows)
    ids = list(sample_ids) if sample_ids is not None else list(dict.fromkeys(df["sample_id"]))
    runs = sorted(df["run"].unique())
    out = np.full((len(runs), len(ids), len(TRAITS)), np.nan)
    pos = {s: i for i, s in enumerate(ids)}
    run_pos = {r: i for i, r in enumerate(runs)}
    trait_pos = {t: i for i, t in enumerate(TRAITS)}
    for sid, trait, run, score in df[["sample_id", "trait", "run", "score"]].itertuples(index=False):
        if sid in pos:
            out[run_pos[run], pos[sid], trait_pos[trait]] = score
    return out, ids, runs


# ---------------------------------------------------------------------------------------------------------------
# Reliability


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r over the positions where both are finite; NaN with fewer than two or no variance."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def _nanmean(values) -> float:
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    return float(x.mean()) if len(x) else float("nan")


def repeat_agreement(scores_runs: np.ndarray, traits: Sequence[str] = TRAITS) -> dict:
    """Test-retest agreement of repeated assessments [runs x samples x traits].

    Per trait: "mad", the mean absolute difference over every pair of runs and the samples both scored; "r", the
    mean over run pairs of the Pearson r across samples (a pair with no variance is left out). NaN scores are left
    out pairwise. Top-level "mad" and "r" average the traits.
    """
    x = np.asarray(scores_runs, dtype=float)
    if x.ndim != 3 or x.shape[2] != len(traits):
        raise ValueError(f"expected scores [runs x samples x {len(traits)} traits], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"agreement needs at least two runs, got {x.shape[0]}")
    pairs = [(i, j) for i in range(x.shape[0]) for j in range(i + 1, x.shape[0])]
    per_trait = {}
    for k, t in enumerate(traits):
        diffs = np.concatenate([np.abs(x[i, :, k] - x[j, :, k]) for i, j in pairs])
        rs = [_pearson(x[i, :, k], x[j, :, k]) for i, j in pairs]
        per_trait[t] = {"mad": _nanmean(diffs), "r": _nanmean(rs), "n_pairs": int(np.sum(~np.isnan(diffs)))}
    return {"runs": int(x.shape[0]), "samples": int(x.shape[1]), "per_trait": per_trait,
            "mad": _nanmean([v["mad"] for v in per_trait.values()]),
            "r": _nanmean([v["r"] for v in per_trait.values()])}


def _matrix(values, traits: Sequence[str], what: str) -> np.ndarray:
    if isinstance(values, pd.DataFrame):
        missing = [t for t in traits if t not in values.columns]
        if missing:
            raise ValueError(f"{what} lack columns {missing}")
        values = values[list(traits)]
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(traits):
        raise ValueError(f"{what} must be [samples x {len(traits)}], got shape {x.shape}")
    return x


def label_agreement(scores, labels, traits: Sequence[str] = TRAITS) -> dict:
    """Agreement of assessed scores with human 0/1 labels (FriendsPersona), per trait.

    accuracy: share of samples whose score sign matches the label (score > 0 for 1, < 0 for 0) among the decided
    ones; a score of 0 ("cannot tell") is undecided and counted in "undecided", not as wrong. r_pb: the
    point-biserial correlation (Pearson r of score and label) over all scored samples, zeros included. base_rate:
    the share of 1 labels, for reading the accuracy against always guessing the majority.
    """
    s, y = _matrix(scores, traits, "scores"), _matrix(labels, traits, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} differ in shape")
    bad = ~np.isnan(y) & ~np.isin(y, (0, 1))
    if bad.any():
        i, k = map(int, np.argwhere(bad)[0])
        raise ValueError(f"labels must be 0 or 1: row {i}, {traits[k]} is {y[i, k]}")
    per_trait = {}
    for k, t in enumerate(traits):
        ok = ~np.isnan(s[:, k]) & ~np.isnan(y[:, k])
        decided = ok & (s[:, k] != 0)
        correct = (s[decided, k] > 0) == (y[decided, k] == 1)
        per_trait[t] = {"n": int(ok.sum()), "decided": int(decided.sum()), "undecided": int((ok & ~decided).sum()),
                        "accuracy": float(correct.mean()) if decided.any() else float("nan"),
                        "r_pb": _pearson(s[:, k], y[:, k]),
                        "base_rate": float(y[ok, k].mean()) if ok.any() else float("nan")}
    return {"per_trait": per_trait, "accuracy": _nanmean([v["accuracy"] for v in per_trait.values()]),
            "r_pb": _nanmean([v["r_pb"] for v in per_trait.values()])}


# ---------------------------------------------------------------------------------------------------------------
# Outliers

OUTLIER_RULES = ("zscore", "mad", "distance")
CENTRES = ("centroid", "median")


def drop_outliers(df: pd.DataFrame, vectors_cols: Sequence[str] = TRAITS, by: str = "character",
                  rule: str = "zscore", threshold: float = 2.0, centre: str = "centroid", min_samples: int = 3,
                  single: str = "keep") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept, dropped): samples whose personality vector lies far from their character's centre are dropped.

    The paper removes "dialogues far from the character's centre" but does not give the rule, so each choice is a
    parameter. Per group of `by`, the centre is the mean ("centroid") or component-wise median ("median") of the
    vectors, and each sample's distance is its Euclidean distance from it. The rule turns distances into an outlier
    score dropped above `threshold`:
      - "zscore": (d - mean d) / sd d (sample sd; all equal distances score 0);
      - "mad": (d - median d) / (1.4826 * MAD of d), robust to the outliers themselves (MAD 0: any d above the
        median scores inf);
      - "distance": d itself, in score units.
    Groups with fewer than `min_samples` samples are not filtered (status "too_few"); a character with a single
    sample is kept (status "single") or, with single="drop", dropped (reason "single"). A row with a NaN in its
    vector is dropped (reason "incomplete"). Both frames keep the input columns plus "distance" and
    "outlier_score"; kept has "status" ("kept", "too_few", "single"), dropped has "reason" ("outlier", "single",
    "incomplete").
    """
    cols = list(vectors_cols)
    missing = [c for c in [*cols, by] if c not in df.columns]
    if missing:
        raise ValueError(f"frame lacks columns {missing}; has {list(df.columns)}")
    if rule not in OUTLIER_RULES:
        raise ValueError(f"rule must be one of {OUTLIER_RULES}, got {rule!r}")
    if centre not in CENTRES:
        raise ValueError(f"centre must be one of {CENTRES}, got {centre!r}")
    if single not in ("keep", "drop"):
        raise ValueError(f"single must be 'keep' or 'drop', got {single!r}")
    if not isinstance(threshold, int | float) or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if not isinstance(min_samples, int) or min_samples < 2:
        raise ValueError(f"min_samples must be an integer >= 2, got {min_samples!r}")
    if df[by].isna().any():
        raise ValueError(f"column {by!r} has missing values: every sample needs a group")

    x = df[cols].to_numpy(dtype=float)
    n = len(df)
    distance, score = np.full(n, np.nan), np.full(n, np.nan)
    status = np.array(["kept"] * n, dtype=object)
    reason = np.array([None] * n, dtype=object)
    complete = ~np.isnan(x).any(axis=1)
    reason[~complete] = "incomplete"
    groups: dict = {}
    for i, key in zip(np.flatnonzero(complete), df[by].to_numpy()[complete]):
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        idx = np.asarray(idx)
        v = x[idx]
        c = v.mean(axis=0) if centre == "centroid" else np.median(v, axis=0)
        d = np.linalg.norm(v - c, axis=1)
        distance[idx] = d
        if len(idx) == 1:
            status[idx] = "single"
            if single == "drop":
                reason[idx] = "single"
            continue
        if len(idx) < min_samples:
            status[idx] = "too_few"
            continue
        if rule == "zscore":
            sd = d.std(ddof=1)
            s = (d - d.mean()) / sd if sd > 0 else np.zeros_like(d)
        elif rule == "mad":
            med = np.median(d)
            spread = 1.4826 * np.median(np.abs(d - med))
            s = (d - med) / spread if spread > 0 else np.where(d > med, np.inf, 0.0)
        else:
            s = d
        score[idx] = s
        reason[idx[s > threshold]] = "outlier"
    drop = np.array([r is not None for r in reason])
    out = df.copy()
    out["distance"], out["outlier_score"] = distance, score
    kept = out[~drop].copy()
    kept["status"] = status[~drop]
    dropped = out[drop].copy()
    dropped["reason"] = reason[drop]
    return kept, dropped


# ---------------------------------------------------------------------------------------------------------------
# P.S.D.C.


def psdc(prompted, assessed, traits: Sequence[str] = TRAITS, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Personality Shaping Deviation Coefficient: how far the personality assessed on a student's dialogue lies from
    the vector it was prompted with (lower is better).

    The paper reports DPG 3.14, GPT-4 prompting 3.36, LoRA-SFT 4.25 (PUBLISHED_PSDC) without confirming its
    formula, so three readings are given, each as {"mean", "lo", "hi", "n"} with a percentile-bootstrap 95 %
    interval over samples (lib.stats.mean_ci): "per_trait" (mean absolute deviation of each dimension), "mad" (the
    mean over dimensions of the absolute deviation), "l1" (the sum over dimensions, averaged over samples) and "l2"
    (the Euclidean distance). Rows with a NaN in either array are dropped and counted ("dropped_nan"); a value
    outside [-5, 5] is an error.
    """
    p, a = np.asarray(prompted, dtype=float), np.asarray(assessed, dtype=float)
    if p.ndim != 2 or p.shape[1] != len(traits):
        raise ValueError(f"prompted must be [samples x {len(traits)}], got shape {p.shape}")
    if a.shape != p.shape:
        raise ValueError(f"assessed has shape {a.shape}, prompted {p.shape}: one row per sample in both")
    for name, m in (("prompted", p), ("assessed", a)):
        bad = ~np.isnan(m) & ((m < SCORE_MIN) | (m > SCORE_MAX))
        if np.isinf(m).any() or bad.any():
            i, k = map(int, np.argwhere(bad | np.isinf(m))[0])
            raise ValueError(f"{name}: row {i}, {traits[k]} = {m[i, k]} is outside [{SCORE_MIN}, {SCORE_MAX}]")
    keep = ~(np.isnan(p).any(axis=1) | np.isnan(a).any(axis=1))
    if not keep.any():
        raise ValueError("no sample has complete prompted and assessed vectors")
    dev = np.abs(p[keep] - a[keep])
    ci = {"n_resamples": n_resamples, "seed": seed}
    return {"n": int(keep.sum()), "dropped_nan": int((~keep).sum()),
            "per_trait": {t: mean_ci(dev[:, k], **ci) for k, t in enumerate(traits)},
            "mad": mean_ci(dev.mean(axis=1), **ci), "l1": mean_ci(dev.sum(axis=1), **ci),
            "l2": mean_ci(np.sqrt((dev ** 2).sum(axis=1)), **ci)}
