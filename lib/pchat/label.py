"""Trait labelling of personas (05_label): the teacher's label prompts (all five traits at once, or one at a time),
parsing and repair of its answers, whole mode's repair rounds, and the labels collected per persona with their
summary and distribution.

    labels, failures = label.parse_trait_labels(teacher_reply, facts)   # per trait, valid or failed
    labelled = label.collect_labels(personas, answers)                  # five labels per persona

Our reading where the paper is silent:

- Trait labels: the paper's form, "No clues." or "Probably low/high, given <reason>" with a free-text reason
  ("given the statement I love spending money and that they admit to being high maintenance"). A level needs some
  reason; whether the reason cites one of the persona's facts (quoted, restated, or most of the fact's content
  words) is recorded per trait (`cited_facts`), not required. Labels are judged trait by trait: a reply with one bad
  line keeps its four good ones, and only the failed traits are asked again (`parse_trait_labels`, `label_whole`).
"""
from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lib.pchat import LABELS
from lib.pchat.data import normalize_fact
from lib.pchat.synthesize import content_words, persona_block, strip_markup
from lib.prompts import check_template
from lib.records import read_jsonl
from lib.teacher import InvalidReply, run_records
from lib.traits import LEVELS, NAMES, TRAITS

_TRAIT_BY_NAME = {name.lower(): t for t, name in NAMES.items()} | {"extroversion": "E"}
_TRAIT_LINE = re.compile(r"^(openness|conscientiousness|extraversion|extroversion|agreeableness|neuroticism)"
                         r"\s*[*_]*\s*[:\-–]\s*(.*)$", re.IGNORECASE)
_LEVEL = re.compile(r"^probably\s+(low|high)\b[\s,;:.(\-–]*(.*)$", re.IGNORECASE | re.DOTALL)
_CONNECTIVE = re.compile(r"^(?:given|because|since|as)\b\s*(?:that\b)?\s*:?\s*", re.IGNORECASE)
CITE_THRESHOLD = 0.75  # share of a fact's content words a reason must contain to cite it (as leakage's rule)
NO_CLUES = {"label": "no_clues", "reason": None, "evidence": [], "cites_fact": False}
# What a repair asks for, per failure reason (per-trait mode names one, whole mode one per failed trait).
_LABEL_REPAIR = {
    "missing_trait": "it has no line.",
    "duplicate_trait": "it is answered more than once, with different labels.",
    "unknown_label": "the answer must be 'No clues.', 'Probably low, given ...' or 'Probably high, given ...'.",
    "missing_reason": "a 'Probably low' or 'Probably high' answer must say what in the statements suggests it.",
    "empty": "the answer is empty.",
}


def label_messages(facts: Sequence[str], template: str, system_prompt: str | None = None) -> list[dict]:
    """The teacher's chat for labelling one persona; `template` (params/prompts/pchat_label.txt) has {persona}."""
    if not facts:
        raise ValueError("label_messages: a persona needs at least one fact")
    check_template(template, {"persona"}, what="label")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": template.format(persona=persona_block(facts)).strip()}]


def cited_facts(reason: str, facts: Sequence[str], threshold: float = CITE_THRESHOLD) -> list[str]:
    """The persona facts a free-text reason cites: quoted or restated (up to case and punctuation), or with at least
    `threshold` of the fact's content words in the reason ("given that they admit to being high maintenance" cites
    "I am high maintenance.")."""
    text = normalize_fact(reason)
    words = content_words(reason)
    out = []
    for fact in facts:
        norm, fact_words = normalize_fact(fact), content_words(fact)
        verbatim = bool(norm) and re.search(rf"(?<!\w){re.escape(norm)}(?!\w)", text) is not None
        if verbatim or (fact_words and len(fact_words & words) / len(fact_words) >= threshold):
            out.append(fact)
    return out


def _answer(text: str, facts: Sequence[str], trait: str) -> dict:
    """One answer as {"label", "reason", "evidence": [cited facts], "cites_fact"}, or InvalidReply."""
    answer = strip_markup(text)
    if re.match(r"^no\s+clues?\b", answer, re.IGNORECASE):
        return dict(NO_CLUES)
    m = _LEVEL.match(answer)
    if not m:
        raise InvalidReply("unknown_label", f"{NAMES[trait]}: {answer[:60]!r} is not 'No clues' or "
                                            "'Probably low/high, given ...'")
    reason = _CONNECTIVE.sub("", m.group(2).strip()).strip().rstrip(")").strip()
    if not re.search(r"\w", reason):
        raise InvalidReply("missing_reason", f"{NAMES[trait]}: a low/high label needs a reason ('given ...')")
    evidence = cited_facts(reason, facts)
    return {"label": m.group(1).lower(), "reason": reason, "evidence": evidence, "cites_fact": bool(evidence)}


def parse_trait_labels(reply: str, facts: Sequence[str],
                       traits: Sequence[str] = TRAITS) -> tuple[dict[str, dict], dict[str, dict]]:
    """(labels, failures) of a reply answering several traits ("<Trait>: <answer>" lines), trait by trait.

    labels: {trait letter: {"label": "no_clues"|"low"|"high", "reason", "evidence", "cites_fact"}} for each asked
    trait answered validly; failures: {trait: {"reason", "detail"}} for each asked trait that was not, with reason
    "missing_trait", "duplicate_trait" (two different labels), "unknown_label" or "missing_reason". One bad line
    never costs the other traits their answers. Lines that name no trait (a preamble) and traits not asked are
    ignored.
    """
    unknown = [t for t in traits if t not in TRAITS]
    if unknown or not traits:
        raise ValueError(f"parse_trait_labels: traits must be a non-empty subset of {list(TRAITS)}, got {traits!r}")
    answers: dict[str, list] = defaultdict(list)
    for raw in reply.splitlines():
        m = _TRAIT_LINE.match(strip_markup(raw))
        if m and (trait := _TRAIT_BY_NAME[m.group(1).lower()]) in traits:
            try:
                answers[trait].append(_answer(m.group(2), facts, trait))
            except InvalidReply as exc:
                answers[trait].append(exc)
    labels, failures = {}, {}
    for t in traits:
        valid = [a for a in answers[t] if isinstance(a, dict)]
        if len({a["label"] for a in valid}) > 1:
            failures[t] = {"reason": "duplicate_trait", "detail": f"{NAMES[t]} is labelled "
                                                                  f"{' and '.join(a['label'] for a in valid)}"}
        elif valid:
            labels[t] = valid[0]
        elif answers[t]:
            failures[t] = {"reason": answers[t][0].reason, "detail": str(answers[t][0])}
        else:
            failures[t] = {"reason": "missing_trait", "detail": f"no line for {NAMES[t]}"}
    return labels, failures


def trait_label_messages(facts: Sequence[str], trait: str, template: str,
                         system_prompt: str | None = None) -> list[dict]:
    """The teacher's chat for labelling one trait of one persona, for teachers too small to answer all five at
    once; `template` (params/prompts/pchat_label_trait.txt) has {persona} and {trait} (the trait's name)."""
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; expected one of {list(TRAITS)}")
    if not facts:
        raise ValueError("trait_label_messages: a persona needs at least one fact")
    check_template(template, {"persona", "trait"}, what="label")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    content = template.format(persona=persona_block(facts), trait=NAMES[trait])
    return messages + [{"role": "user", "content": content.strip()}]


def parse_trait_label(reply: str, facts: Sequence[str], trait: str) -> dict:
    """One trait's answer (as in parse_trait_labels): the reply's first non-empty line, with or without "<Trait>:".

    Raises InvalidReply: "empty", "unknown_label" or "missing_reason".
    """
    lines = [line for line in (strip_markup(raw) for raw in reply.splitlines()) if line]
    if not lines:
        raise InvalidReply("empty", "the reply is empty")
    m = _TRAIT_LINE.match(lines[0])
    if m and _TRAIT_BY_NAME[m.group(1).lower()] != trait:
        raise InvalidReply("unknown_label", f"asked about {NAMES[trait]}, answered about {m.group(1)}")
    return _answer(m.group(2) if m else lines[0], facts, trait)


def trait_label_records(personas: Sequence[Mapping]) -> list[dict]:
    """The questions of per-trait mode: one record per persona and trait, id "<persona id>:<trait>"."""
    return [{"id": f"{p['id']}:{t}", "persona": p["id"], "trait": t, "facts": list(p["facts"])}
            for p in personas for t in TRAITS]


def label_repair_prompt(reason: str) -> str:
    """Repair instructions for a per-trait label reply, per failure reason."""
    what = _LABEL_REPAIR.get(reason, "it does not follow the required format.")
    return f"That answer is not valid: {what} Answer again in the required format and nothing else."


def whole_repair_prompt(failures: Mapping[str, Mapping]) -> str:
    """Repair instructions for a whole-persona reply: what was wrong with each failed trait, and to answer those
    traits again (only those: the valid answers are kept)."""
    if not failures:
        raise ValueError("whole_repair_prompt: no failed traits")
    names = [NAMES[t] for t in TRAITS if t in failures]
    lines = [f"- {NAMES[t]}: {_LABEL_REPAIR.get(failures[t]['reason'], 'it does not follow the required format.')}"
             for t in TRAITS if t in failures]
    return ("Some answers are not valid:\n" + "\n".join(lines) + f"\nAnswer again for {', '.join(names)} only, "
            "one line each as '<Trait>: <answer>', in the required format and nothing else.")


def _round_id(persona: str, round_: int) -> str:
    return f"{persona}#{round_}"


def whole_round_records(personas: Sequence[Mapping], answers: Sequence[Mapping], round_: int,
                        template: str, system_prompt: str | None = None) -> list[dict]:
    """The questions of round `round_` of whole mode, given the answers of the earlier rounds.

    Round 0 asks every persona for all five traits. Round r > 0 continues the chat of each persona whose round r-1
    answer left traits failed: the teacher sees its own reply and `whole_repair_prompt`, and only those traits are
    asked (and parsed) again. The records are a function of the answers on disk, so a killed run resumes.
    """
    by_id = {a["id"]: a for a in answers}
    out = []
    for p in personas:
        messages = label_messages(p["facts"], template, system_prompt)
        asked = list(TRAITS)
        for r in range(round_):
            prev = by_id.get(_round_id(p["id"], r))
            if prev is None or not prev["failures"]:
                break  # answered (or its request failed for good): nothing to ask again
            messages = messages + [{"role": "assistant", "content": prev["reply"]},
                                   {"role": "user", "content": whole_repair_prompt(prev["failures"])}]
            asked = [t for t in TRAITS if t in prev["failures"]]
        else:
            out.append({"id": _round_id(p["id"], round_), "persona": p["id"], "round": round_, "traits": asked,
                        "facts": list(p["facts"]), "messages": messages})
    return out


def parse_whole_round(record: Mapping, reply: str) -> dict:
    """A whole-mode round's answer, never rejected: the asked traits' labels, their failures and the reply (the
    next round's chat shows it)."""
    labels, failures = parse_trait_labels(reply, record["facts"], record["traits"])
    return {"persona": record["persona"], "round": record["round"], "traits": record["traits"], "labels": labels,
            "failures": failures, "reply": reply}


def label_whole(personas: Sequence[Mapping], template: str, teacher: Any, sampling: Any, answers_path: str | Path,
                rejects_path: str | Path, max_repairs: int, batch_size: int = 16,
                system_prompt: str | None = None) -> dict:
    """Whole mode of 05_label: all five traits in one reply, then up to `max_repairs` rounds that re-ask only the
    traits that failed. Returns the run's counts ({"rounds": [RunStats.as_dict() per round], "elapsed_s"}).

    Every round's answer is appended to `answers_path` (ids "<persona>#<round>"); a failed request goes to
    `rejects_path` and ends that persona's repairs. `collect_labels` merges the rounds.
    """
    t0 = time.perf_counter()
    rounds = []
    for r in range(max_repairs + 1):
        answers = read_jsonl(answers_path) if Path(answers_path).exists() else []
        records = whole_round_records(personas, answers, r, template, system_prompt)
        if not records:
            break
        stats = run_records(records, lambda rec: rec["messages"], parse_whole_round, teacher, sampling, answers_path,
                            rejects_path, max_repairs=0, batch_size=batch_size)
        rounds.append({"round": r, "asked_traits": sum(len(rec["traits"]) for rec in records), **stats.as_dict()})
    return {"rounds": rounds, "elapsed_s": time.perf_counter() - t0}


def collect_labels(personas: Sequence[Mapping], answers: Sequence[Mapping],
                   rejects: Sequence[Mapping] = ()) -> list[dict]:
    """Every persona with five labels: {"id", "facts", "labels", "answered", "rescued", "failed"}.

    `answers` are per-trait records {"persona", "trait", "label", ..., "repairs"} (per-trait mode, run_records) or
    whole-mode round records {"persona", "round", "labels", "failures"}; `rejects` the records run_records
    rejected ({"id": "<persona>:<trait>" or "<persona>#<round>", "reason"}). A trait keeps the first valid answer it got; `answered`
    lists the traits answered validly, `rescued` those of them answered only after a repair, `failed` maps each
    other trait to its last failure reason. A trait without a valid answer counts as "no clues" (the paper's label
    when nothing suggests a level).
    """
    found: dict[str, dict[str, tuple[dict, bool]]] = defaultdict(dict)
    failed: dict[str, dict[str, str]] = defaultdict(dict)
    for a in sorted(answers, key=lambda a: a.get("round", 0)):
        if "round" in a:
            for t, lab in a["labels"].items():
                found[a["persona"]].setdefault(t, (lab, a["round"] > 0))
            for t, f in a["failures"].items():
                failed[a["persona"]][t] = f["reason"]
            continue
        if a.get("trait") not in TRAITS or a.get("label") not in LABELS:
            raise ValueError(f"answer {a.get('id', '?')!r}: bad trait {a.get('trait')!r} or label {a.get('label')!r}")
        lab = {k: a.get(k, NO_CLUES[k]) for k in NO_CLUES}
        found[a["persona"]].setdefault(a["trait"], (lab, a.get("repairs", 0) > 0))
    for r in rejects:
        rid, reason = str(r.get("id", "")), r.get("reason", "rejected")
        persona, _, trait = rid.rpartition(":")
        if trait in TRAITS:
            failed[persona][trait] = reason
        elif "#" in rid:  # a whole-mode round whose request failed: every trait still open fails with it
            persona = rid.rpartition("#")[0]
            for t in TRAITS:
                if t not in found.get(persona, {}):
                    failed[persona][t] = reason
    out = []
    for persona in personas:
        got = found.get(persona["id"], {})
        labels = {t: dict(got[t][0]) if t in got else dict(NO_CLUES) for t in TRAITS}
        out.append({"id": persona["id"], "facts": list(persona["facts"]), "labels": labels,
                    "answered": [t for t in TRAITS if t in got], "rescued": [t for t in TRAITS if t in got and got[t][1]],
                    "failed": {t: reason for t, reason in failed.get(persona["id"], {}).items() if t not in got}})
    return out


def label_summary(labelled: Sequence[Mapping]) -> dict:
    """What 05_label's metrics report about the answers: traits asked, valid at the first try, rescued by a repair,
    failed (by reason), and how many low/high labels cite one of the persona's facts."""
    asked = len(labelled) * len(TRAITS)
    answered = sum(len(r["answered"]) for r in labelled)
    rescued = sum(len(r["rescued"]) for r in labelled)
    failed = Counter(reason for r in labelled for reason in r["failed"].values())
    levels = [lab for r in labelled for lab in r["labels"].values() if lab["label"] in LEVELS]
    citing = sum(bool(lab.get("cites_fact")) for lab in levels)
    repaired = rescued + sum(failed.values())  # the traits that needed a repair (a later answer or none)
    return {"traits_asked": asked, "traits_answered": answered, "traits_valid_first_try": answered - rescued,
            "traits_rescued_by_repair": rescued, "traits_failed": sum(failed.values()), "failed_reasons": dict(failed),
            "repair_rescue_rate": rescued / repaired if repaired else None, "level_labels": len(levels),
            "level_labels_citing_fact": citing, "cites_fact_share": citing / len(levels) if levels else None}


def label_distribution(labelled: Sequence[Mapping[str, Mapping]]) -> dict:
    """Counts of each label per trait, the share of "no clues" per trait and over all trait judgements."""
    if not labelled:
        raise ValueError("label_distribution: no labelled personas")
    counts = {t: dict.fromkeys(LABELS, 0) for t in TRAITS}
    for i, labels in enumerate(labelled):
        for t in TRAITS:
            label = labels.get(t, {}).get("label")
            if label not in LABELS:
                raise ValueError(f"persona {i}: trait {t} has label {label!r}; expected one of {LABELS}")
            counts[t][label] += 1
    n = len(labelled)
    share = {t: counts[t]["no_clues"] / n for t in TRAITS}
    return {"n_personas": n, "counts": counts, "no_clues_share": share,
            "no_clues_share_overall": sum(share.values()) / len(TRAITS)}
