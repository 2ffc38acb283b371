"""Dialogue synthesis (06_synthesize): trait levels sampled for both speakers, the single-agent dialogue prompt, the
parsing, validation and repair of the transcript the teacher writes, and persona leakage, which 06 measures on the
source and the synthesized sets. The prompt and markup helpers the other modules share live here too.

    levels = synthesize.sample_traits(labelled[0]["labels"], seed=0, key=data.persona_key(facts))
    turns = synthesize.parse_transcript(reply, names=("Sam", "Alex"), min_turns=8, max_turns=20)
    leakage = synthesize.leakage_summary(dialogues, threshold=0.75)

Our reading where the paper is silent:

- Trait sampling: a labelled trait keeps its level; a "no clues" trait gets a level drawn uniformly from
  `choices` (default low/high) by a generator seeded with (seed, speaker key), so a speaker's draw does not depend on
  the order in which personas are processed.
- Persona leakage (a speaker stating the OTHER speaker's persona fact as their own): see `leaked_facts`. It is
  06_synthesize's check of its output (P against PT), so it lives here rather than in lib/pchat/evaluate.py, whose
  metrics would bring lib/metrics.py into the synthesis stage.
"""
from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence

from lib.dialogue import dialogue_repair_prompt, strip_quotes
from lib.pchat import LABELLED, LABELS, SPEAKERS
from lib.prompts import check_template
from lib.teacher import InvalidReply
from lib.traits import LEVELS, NAMES, TRAITS

# ---------------------------------------------------------------------------------------------------------------
# Turn parsing and validation

_LIST_MARKER = re.compile(r"^(?:\(?\d{1,3}[.):\]]|[-•>])\s+")
_STAGE = re.compile(r"^(?:\[.*\]|\(.*\)|[*\-=_~#.\s]+)$")
_OTHER_SPEAKER = re.compile(r"^([A-Z][\w'.-]*(?: [A-Z0-9][\w'.-]*){0,2})\s*[*_]*\s*:\s*\S")


def _label_pattern(labels: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(name) for name in sorted(labels, key=len, reverse=True))
    return re.compile(rf"^\[?({alts})\]?\s*[*_]*\s*:(.*)$", re.IGNORECASE)


def strip_markup(text: str) -> str:
    """Drop markdown emphasis, list markers and surrounding quotes around a line or an utterance."""
    text = _LIST_MARKER.sub("", text.strip().strip("*_ \t").strip())
    return strip_quotes(text.strip("*_ \t"))


def split_turns(text: str, labels: Mapping[str, str]) -> list[dict]:
    """Labelled lines of a transcript as [{"speaker", "text"}], `labels` mapping line labels to speakers.

    "User 1: hi" with labels {"User 1": "A"} gives {"speaker": "A", "text": "hi"}. Markup around labels is
    stripped; stage directions and narration after a blank line are dropped; an unlabelled line right after an
    utterance continues it. A line in the form "Name: text" whose name is not a label raises
    InvalidReply("unknown_speaker").
    """
    pattern = _label_pattern(list(labels))
    canonical = {name.lower(): speaker for name, speaker in labels.items()}
    turns: list[dict] = []
    continuable = False
    for raw in text.splitlines():
        line = strip_markup(raw)
        if not line:
            continuable = False
            continue
        m = pattern.match(line)
        if m:
            turns.append({"speaker": canonical[m.group(1).lower()], "text": strip_markup(m.group(2))})
            continuable = True
        elif _STAGE.match(line):
            continuable = False
        elif (other := _OTHER_SPEAKER.match(line)) is not None:
            raise InvalidReply("unknown_speaker", f"line by {other.group(1)!r}: {line[:60]!r}")
        elif continuable and turns:
            turns[-1]["text"] = f"{turns[-1]['text']} {line}".strip()
    return turns


def merge_repeated_speakers(turns: list[dict]) -> tuple[list[dict], int]:
    """(turns, merges): consecutive utterances by the same speaker joined into one."""
    merged: list[dict] = []
    n = 0
    for turn in turns:
        if merged and merged[-1]["speaker"] == turn["speaker"]:
            merged[-1] = {**merged[-1], "text": f"{merged[-1]['text']} {turn['text']}".strip()}
            n += 1
        else:
            merged.append(dict(turn))
    return merged, n


def validate_turns(turns: list[dict], min_turns: int, max_turns: int, first: str = "A",
                   max_words: int | None = None) -> list[dict]:
    """The turns unchanged, or InvalidReply: "turn_count", "speaker_order", "empty" or "too_long"."""
    if not min_turns <= len(turns) <= max_turns:
        raise InvalidReply("turn_count", f"{len(turns)} utterances, expected {min_turns}..{max_turns}")
    order = (first, "B" if first == "A" else "A")
    for i, turn in enumerate(turns):
        if turn["speaker"] != order[i % 2]:
            raise InvalidReply("speaker_order", f"utterance {i + 1} is by {turn['speaker']}, expected {order[i % 2]}")
        if not turn["text"].strip():
            raise InvalidReply("empty", f"utterance {i + 1} is empty")
        if max_words is not None and len(turn["text"].split()) > max_words:
            raise InvalidReply("too_long", f"utterance {i + 1} has {len(turn['text'].split())} words (max {max_words})")
    return turns


def parse_transcript(reply: str, names: tuple[str, str] = ("A", "B"), min_turns: int = 8, max_turns: int = 20,
                   max_words: int | None = None) -> list[dict]:
    """A teacher-written dialogue ("A: ... / B: ...", or the display `names`) as validated turns of A and B."""
    if len(names) != 2 or names[0].lower() == names[1].lower():
        raise ValueError(f"parse_transcript needs two distinct speaker names, got {names!r}")
    turns = split_turns(reply, {names[0]: "A", names[1]: "B"})
    return validate_turns(turns, min_turns, max_turns, first="A", max_words=max_words)


# ---------------------------------------------------------------------------------------------------------------
# Trait sampling and the single-agent dialogue prompt


def sample_traits(labels: Mapping[str, Mapping], seed: int, key: str,
                  choices: Sequence[str] = LABELLED) -> dict[str, str]:
    """{trait: "low"|"high"} for one speaker: a labelled trait keeps its level, a "no clues" one is drawn."""
    unknown = [c for c in choices if c not in LEVELS]
    if not choices or unknown:
        raise ValueError(f"sample_traits: choices must be a non-empty subset of {LEVELS}, got {list(choices)}")
    rng = random.Random(f"{seed}:{key}")
    out = {}
    for t in TRAITS:
        label = labels.get(t, {}).get("label")
        if label not in LABELS:
            raise ValueError(f"sample_traits({key!r}): trait {t} has label {label!r}; expected one of {LABELS}")
        draw = rng.choice(list(choices))  # drawn for every trait, so a label change elsewhere keeps this draw
        out[t] = label if label in LEVELS else draw
    return out


def traits_text(levels: Mapping[str, str]) -> str:
    """"Openness: high, Conscientiousness: low, ..." in trait order, for the traits present."""
    return ", ".join(f"{NAMES[t]}: {levels[t]}" for t in TRAITS if t in levels)


def persona_block(facts: Sequence[str]) -> str:
    """Persona facts as a bulleted list, the form every prompt here uses."""
    return "\n".join(f"- {f}" for f in facts)


DIALOGUE_FIELDS = {"name_a", "name_b", "persona_a", "persona_b", "traits_a", "traits_b", "min_turns", "max_turns"}


def dialogue_messages(personas: Mapping[str, Sequence[str]], traits: Mapping[str, Mapping[str, str]],
                      min_turns: int, max_turns: int, names: tuple[str, str] = ("A", "B"), *, template: str,
                      system_prompt: str | None = None) -> list[dict]:
    """The teacher's chat for one synthesized dialogue: both personas and both speakers' trait levels. `template`
    (params/prompts/pchat_whole.txt) may use the fields of DIALOGUE_FIELDS."""
    check_template(template, DIALOGUE_FIELDS, what="dialogue")
    for s in SPEAKERS:
        if not personas.get(s):
            raise ValueError(f"dialogue_messages: speaker {s} has no persona facts")
        if set(traits.get(s, {})) != set(TRAITS):
            raise ValueError(f"dialogue_messages: speaker {s} needs a level for each of {list(TRAITS)}")
    user = template.format(name_a=names[0], name_b=names[1], persona_a=persona_block(personas["A"]),
                           persona_b=persona_block(personas["B"]), traits_a=traits_text(traits["A"]),
                           traits_b=traits_text(traits["B"]), min_turns=min_turns, max_turns=max_turns)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": user.strip()}]


def transcript_repair_prompt(min_turns: int, max_turns: int) -> Callable[[str], str]:
    """Repair instructions for a reply to the dialogue prompt (`min_turns`..`max_turns` utterances)."""
    return dialogue_repair_prompt({
        "turn_count": f"It must have between {min_turns} and {max_turns} utterances, one per line.",
        "speaker_order": "The first speaker must start and the two speakers must strictly alternate.",
        "empty": "Every utterance must contain text.",
        "too_long": "An utterance is too long.",
        "unknown_speaker": "Only the two named speakers may talk.",
    })


# ---------------------------------------------------------------------------------------------------------------
# Persona leakage

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_FIRST_PERSON = frozenset(("i", "me", "my", "mine", "myself", "i'm", "i've", "i'd", "i'll"))
_SECOND_PERSON = frozenset(("you", "your", "yours", "yourself", "you're", "you've", "you'd", "you'll", "u", "ur"))
_STOP = frozenset((
    "a", "an", "the", "and", "or", "but", "if", "so", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as",
    "is", "am", "are", "was", "were", "be", "been", "being", "do", "does", "did", "have", "has", "had", "having",
    "we", "our", "us", "he", "she", "it", "its", "they", "them", "their", "this", "that", "these", "those", "there",
    "here", "very", "really", "just", "also", "too", "not", "no", "yes", "all", "some", "any", "can", "could", "will",
    "would", "should", "may", "might", "must", "about", "into", "over", "than", "then", "out", "up", "down", "more",
    "most", "much", "many", "lot", "lots")) | _FIRST_PERSON | _SECOND_PERSON
# Negated, wished-for or hypothetical sentences do not claim a fact ("I've never met a bee farmer").
_NOT_A_CLAIM = frozenset(("never", "not", "no", "don't", "didn't", "doesn't", "haven't", "hasn't", "can't", "won't",
                          "wouldn't", "isn't", "wasn't", "aren't", "want", "wanted", "wants", "wish", "hope", "would",
                          "if", "maybe"))


def content_words(text: str) -> set[str]:
    """Lower-cased word types of a text minus function words (the units the leakage rule compares)."""
    return {w for w in _WORD.findall(text.lower().replace("’", "'")) if w not in _STOP}


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def _covers(sentence_words: set[str], fact: str, threshold: float) -> bool:
    fact_words = content_words(fact)
    return len(fact_words) >= 2 and len(fact_words & sentence_words) / len(fact_words) >= threshold


def leaked_facts(utterance: str, own: Sequence[str], other: Sequence[str], threshold: float = 0.75) -> list[str]:
    """The other speaker's facts that this utterance claims for its speaker (empty when none).

    Rule: a sentence leaks a fact of the other speaker when (1) at least `threshold` of the fact's content words
    (two or more; function words removed) occur in the sentence, (2) the sentence speaks in the first person
    ("I", "my", ...) and not to the partner (no "you"/"your": "So you are a nurse?" is engagement, not leakage),
    (3) it is not negated, wished for or hypothetical ("never", "not", "want", "wish", "would", "if", ...), and
    (4) no fact of the speaker's own persona is covered by the sentence as well (both may like dogs).
    Facts with fewer than two content words ("i am a nurse.") are never matched: one shared word is too weak a sign.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"leakage threshold must be in (0, 1], got {threshold}")
    found: list[str] = []
    for sentence in _sentences(utterance):
        tokens = set(_WORD.findall(sentence.lower().replace("’", "'")))
        if not tokens & _FIRST_PERSON or tokens & (_SECOND_PERSON | _NOT_A_CLAIM):
            continue
        words = content_words(sentence)
        if any(_covers(words, f, threshold) for f in own):
            continue
        found += [f for f in other if f not in found and _covers(words, f, threshold)]
    return found


def dialogue_leakage(dialogue: Mapping, threshold: float = 0.75) -> list[dict]:
    """[{"turn", "speaker", "facts"}] for every utterance that states the other speaker's facts.

    Only speakers with persona facts are judged (XPersona's user "A" has none).
    """
    out = []
    for i, turn in enumerate(dialogue["turns"]):
        me = turn["speaker"]
        own = dialogue["personas"].get(me) or []
        if not own:
            continue  # an unknown persona (XPersona's user) may hold any fact: nothing to judge
        other = dialogue["personas"].get("B" if me == "A" else "A") or []
        facts = leaked_facts(turn["text"], own, other, threshold)
        if facts:
            out.append({"turn": i, "speaker": me, "facts": facts})
    return out


def leakage_summary(dialogues: Sequence[Mapping], threshold: float = 0.75) -> dict:
    """Leaking utterances and dialogues with at least one, as counts and shares."""
    if not dialogues:
        raise ValueError("leakage_summary: no dialogues")
    per = [dialogue_leakage(d, threshold) for d in dialogues]
    n_utt = sum(len(d["turns"]) for d in dialogues)
    n_leak = sum(len(p) for p in per)
    return {"dialogues": len(dialogues), "utterances": n_utt, "leaking_utterances": n_leak,
            "leaking_dialogues": sum(1 for p in per if p), "utterance_share": n_leak / n_utt if n_utt else 0.0,
            "dialogue_share": sum(1 for p in per if p) / len(dialogues)}

