"""Two-speaker dialogue synthesis: a teacher LLM writes short conversations between two speakers from a text
about each (JIC: the authors' journals; PersonalityChat's turn mode: persona and traits).

Two modes, same output:

- `whole` (the paper): one teacher call writes all `n_turns` utterances from a prompt template (fields
  {name_a} {name_b} {profile_a} {profile_b} {n_turns} {max_words}); `parse_dialogue` validates the reply.
- `turn` (for tiny local teachers that cannot write 9 well-formed lines in one go): the teacher writes one
  utterance at a time as the current speaker (persona template fields {speaker} {other} {profile}
  {max_words}, appended to the system prompt; the dialogue so far is the chat, the speaker's own turns as
  `assistant` and the other's as `user`); `parse_utterance` cleans each reply. Turn t of every dialogue in a batch is one teacher call.

Invalid replies raise `InvalidReply` with a short reason ("turn_count", "speaker_order", "empty",
"too_long") and are sent back to the teacher for repair; dialogues that stay invalid go to the rejects file.

    stats = synthesize_dialogues(pairs, "whole", make_teacher(cfg), Sampling(temperature=1.0, seed=0),
                                 "data/dialogues.jsonl", "data/dialogue_rejects.jsonl",
                                 template=Path("params/prompts/jic_whole.txt").read_text(),
                                 system_prompt=Path("params/prompts/jic_system.txt").read_text())

Each pair is {"id", "speaker_a", "speaker_b", "profile_a", "profile_b"}: who speaks as A and as B (an id) and the
text the teacher writes each from, plus optional display names "name_a"/"name_b" (default "A"/"B"); each output is
{"id", "speaker_a", "speaker_b", "turns": [{"speaker": "A"|"B", "speaker_id", "text"}, ...], "repairs"}.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lib.prompts import check_template
from lib.records import RecordError, append_jsonl, check_ids, done_ids
from lib.teacher import InvalidReply, Messages, RunStats, Sampling, generate_validated, run_records

# Leading list markers: "1.", "2)", "(3)", "-", "*", "•", ">", "Turn 4:".
_NUMBERING = re.compile(r"^(?:\(?\d{1,3}[.):\]]|[-*•>]|turn\s+\d{1,3}\s*[:.)-]?)\s+", re.IGNORECASE)
WHOLE_FIELDS = {"name_a", "name_b", "profile_a", "profile_b", "n_turns", "max_words"}  # the `whole` template's
TURN_FIELDS = {"speaker", "other", "profile", "max_words"}  # the `turn` persona template's
QUOTES = "\"'“”‘’«»"  # quote characters a teacher wraps an utterance in


def _label_regex(names: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    # "A: hi", "**A:** hi", "*A*: hi", "[A]: hi", "Speaker A: hi", "A - hi"
    return re.compile(rf"^[*_\s]*(?:speaker\s+)?[\[(]?({alts})[\])]?[*_]*\s*(?::|\s[-–—]\s)[*_]*\s*(.*)$",
                      re.IGNORECASE)


def strip_quotes(text: str) -> str:
    """Strip surrounding whitespace and quote characters that wrap the whole text ('"Hi."' -> 'Hi.')."""
    text = text.strip()
    while len(text) >= 2 and text[0] in QUOTES and text[-1] in QUOTES:
        text = text[1:-1].strip()
    return text


def _clean_text(text: str) -> str:
    """Strip surrounding whitespace and matching quote characters; a lone quote character is no text."""
    text = strip_quotes(text)
    return "" if len(text) == 1 and text in QUOTES else text


def _strip_markup(line: str) -> str:
    line = _NUMBERING.sub("", line.strip(), count=1)
    return line.replace("**", "").replace("__", "").strip()


def parse_dialogue(text: str, speakers: Sequence[str] = ("A", "B"), n_turns: int = 9,
                   max_words: int = 20) -> list[dict]:
    """Utterances of a teacher-written dialogue as [{"speaker", "text"}], or InvalidReply saying what is wrong."""
    if len(speakers) != 2 or speakers[0].lower() == speakers[1].lower():
        raise ValueError(f"parse_dialogue needs two distinct speaker names, got {speakers!r}")
    label = _label_regex(speakers)
    canonical = {s.lower(): s for s in speakers}
    turns: list[dict] = []
    continuable = False  # an unlabeled line right after an utterance continues it (wrapped line)
    for raw in text.splitlines():
        if not raw.strip():
            continuable = False
            continue
        line = _strip_markup(raw)
        m = label.match(line)
        if m:
            if len(turns) == n_turns:
                break  # extra lines after a complete dialogue are cut
            turns.append({"speaker": canonical[m.group(1).lower()], "text": m.group(2)})
            continuable = True
        elif continuable and turns:
            turns[-1]["text"] += " " + line
        # else: preamble or commentary ("Here is the conversation:"), not part of the dialogue
    if len(turns) < n_turns:
        raise InvalidReply("turn_count", f"{len(turns)} utterances, expected {n_turns}")
    for i, turn in enumerate(turns):
        turn["text"] = _clean_text(turn["text"])
        if turn["speaker"] != speakers[i % 2]:
            raise InvalidReply("speaker_order", f"utterance {i + 1} is by {turn['speaker']}, expected {speakers[i % 2]}")
        if not turn["text"]:
            raise InvalidReply("empty", f"utterance {i + 1} is empty")
        n_words = len(turn["text"].split())
        if n_words > max_words:
            raise InvalidReply("too_long", f"utterance {i + 1} has {n_words} words (max {max_words})")
    return turns


def parse_utterance(text: str, max_words: int = 20, labels: Sequence[str] = ("A", "B")) -> str:
    """One cleaned utterance from a turn-mode reply, without speaker labels or quotes.

    A message may span lines ("Hi Sam,\nI just got back..."): lines are joined until one starts with a speaker
    label, where the model has begun writing the next turn itself. Past `max_words`, the complete sentences
    that fit are kept.
    """
    label = _label_regex(labels) if labels else None
    parts: list[str] = []
    for raw in text.splitlines():
        line = _strip_markup(raw)
        if not line:
            continue
        m = label.match(line) if label else None
        if m:
            if parts:
                break  # the next speaker's turn: not part of this message
            line = m.group(2).strip()
            if not line:
                continue  # a label alone on its line: the utterance follows on the next one
        line = _clean_text(line)
        if line:
            parts.append(line)
    if not parts:
        raise InvalidReply("empty", "reply has no text")
    utterance = " ".join(parts)
    n_words = len(utterance.split())
    if n_words > max_words:
        # Small teachers ramble on after a good first sentence: keep the whole sentences that fit.
        fitting = _sentences_within(utterance, max_words)
        if not fitting:
            raise InvalidReply("too_long", f"{n_words} words (max {max_words}) and no sentence ends within")
        return fitting
    return utterance


def _sentences_within(text: str, max_words: int, min_words: int = 3) -> str:
    """The longest run of complete sentences from the start of `text` with at most `max_words` words, or ''."""
    words = text.split()[:max_words + 1]
    for end in range(min(max_words, len(words)), min_words - 1, -1):
        if re.search(r"[.!?][\"')\]]*$", words[end - 1]):
            return " ".join(words[:end])
    return ""


def _fresh(utterance: str, said: list[dict]) -> str:
    """Refuse an utterance that repeats an earlier turn word for word (small teachers copy the history)."""
    norm = " ".join(re.findall(r"\w+", utterance.lower()))
    if any(norm == " ".join(re.findall(r"\w+", t["text"].lower())) for t in said):
        raise InvalidReply("repeats", "repeats an earlier turn of the dialogue")
    return utterance


def _names(pair: dict) -> tuple[str, str]:
    return pair.get("name_a") or "A", pair.get("name_b") or "B"


def _check_pairs(pairs: Sequence[dict]) -> None:
    check_ids(pairs)
    for pair in pairs:
        for key in ("speaker_a", "speaker_b", "profile_a", "profile_b"):
            if not isinstance(pair.get(key), str):
                raise RecordError(f"dialogue pair {pair['id']!r}: missing or non-string {key!r}")
        a, b = _names(pair)
        if a.lower() == b.lower():
            raise ValueError(f"dialogue pair {pair['id']!r}: speaker names must differ, got {a!r} twice")


def dialogue_repair_prompt(rules: dict[str, str]) -> Callable[[str], str]:
    """Repair instructions for a whole-dialogue reply: the rule it broke (`rules` by InvalidReply reason), then the ask."""
    def prompt(reason: str) -> str:
        what = rules.get(reason, "It does not follow the required format.")
        return (f"That conversation is not valid. {what} Write the whole conversation again, one utterance per line "
                "as \"Name: text\", and nothing else.")
    return prompt


def whole_repair_prompt(n_turns: int, max_words: int) -> Callable[[str], str]:
    """Repair instructions for a reply to the whole-dialogue prompt (exactly `n_turns` utterances)."""
    return dialogue_repair_prompt({
        "turn_count": f"It must have exactly {n_turns} utterances, one per line.",
        "speaker_order": "The first speaker must start and the two speakers must strictly alternate.",
        "empty": "Every utterance must contain text.",
        "too_long": f"Every utterance must have at most {max_words} words.",
    })


def turn_repair_prompt(max_words: int) -> Callable[[str], str]:
    """Repair instructions for a single-utterance reply, per failure reason."""
    def prompt(reason: str) -> str:
        what = {"empty": "It was empty.", "too_long": f"It was longer than {max_words} words.",
                "repeats": "It repeated an earlier message."}.get(reason, "")
        return f"{what} Reply again with only your next message, on one line, in at most {max_words} words.".strip()
    return prompt


# The opening turn has no message to answer; the speaker is asked for one instead.
OPENER = "Write your first message to {other}."


def _turn_chat(system_prompt: str, persona: str, turns: list[dict], side: str, other: str) -> Messages:
    """The chat seen by the speaker of the next turn: its turns are `assistant`, the other speaker's are `user`.

    Chat models answer a conversation far more naturally as one of its roles than when asked to continue a
    transcript, which small models mostly echo.
    """
    messages = [{"role": "system", "content": f"{system_prompt.strip()}\n\n{persona.strip()}"}]
    if not turns:
        return messages + [{"role": "user", "content": OPENER.format(other=other)}]
    for t in turns:
        messages.append({"role": "assistant" if t["speaker"] == side else "user", "content": t["text"]})
    return messages


def _synthesize_whole(todo: list[dict], teacher: Any, sampling: Sampling, out_path: str | Path,
                      rejects_path: str | Path, template: str, system_prompt: str, n_turns: int, max_words: int,
                      max_repairs: int, batch_size: int, repair_prompt: Callable[[str], str]) -> RunStats:
    def build(pair: dict) -> Messages:
        name_a, name_b = _names(pair)
        user = template.format(name_a=name_a, name_b=name_b, profile_a=pair["profile_a"], profile_b=pair["profile_b"],
                               n_turns=n_turns, max_words=max_words)
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]

    def parse(pair: dict, reply: str) -> dict:
        names = _names(pair)
        turns = parse_dialogue(reply, speakers=names, n_turns=n_turns, max_words=max_words)
        out = []
        for i, t in enumerate(turns):
            side = "A" if i % 2 == 0 else "B"
            out.append({"speaker": side, "speaker_id": pair["speaker_a" if side == "A" else "speaker_b"], "text": t["text"]})
        return {"speaker_a": pair["speaker_a"], "speaker_b": pair["speaker_b"], "turns": out}

    return run_records(todo, build, parse, teacher, sampling, out_path, rejects_path, max_repairs=max_repairs,
                       repair_prompt=repair_prompt, batch_size=batch_size)


def _synthesize_turns(todo: list[dict], teacher: Any, sampling: Sampling, out_path: str | Path,
                      rejects_path: str | Path, template: str, system_prompt: str, n_turns: int, max_words: int,
                      max_repairs: int, batch_size: int, repair_prompt: Callable[[str], str], stats: RunStats) -> None:
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        turns: list[list[dict]] = [[] for _ in batch]
        repairs = [0] * len(batch)
        active = list(range(len(batch)))
        for t in range(n_turns):
            side = "A" if t % 2 == 0 else "B"
            chats, parsers = [], []
            for i in active:
                pair = batch[i]
                names = _names(pair)
                me, other = (names[0], names[1]) if side == "A" else (names[1], names[0])
                persona = template.format(speaker=me, other=other, max_words=max_words,
                                          profile=pair["profile_a" if side == "A" else "profile_b"])
                chats.append(_turn_chat(system_prompt, persona, turns[i], side, other))
                parsers.append(lambda reply, names=names, said=turns[i]: _fresh(parse_utterance(reply, max_words,
                                                                                             labels=names), said))
            outcomes = generate_validated(chats, parsers, teacher, sampling, max_repairs, repair_prompt, stats)
            still = []
            for i, out in zip(active, outcomes):
                pair = batch[i]
                if out.ok:
                    speaker_id = pair["speaker_a" if side == "A" else "speaker_b"]
                    turns[i].append({"speaker": side, "speaker_id": speaker_id, "text": out.value})
                    repairs[i] += out.repairs
                    still.append(i)
                else:
                    append_jsonl(rejects_path, {"id": pair["id"], "reason": out.reason, "reply": out.reply, "turn": t})
                    stats.rejected += 1
            active = still
        for i in active:
            pair = batch[i]
            append_jsonl(out_path, {"id": pair["id"], "speaker_a": pair["speaker_a"], "speaker_b": pair["speaker_b"],
                                    "turns": turns[i], "repairs": repairs[i]})
            stats.accepted += 1
            stats.repaired += repairs[i] > 0


def synthesize_dialogues(pairs: Sequence[dict], mode: str, teacher: Any, sampling: Sampling, out_path: str | Path,
                         rejects_path: str | Path, template: str, system_prompt: str, n_turns: int = 9,
                         max_words: int = 20, max_repairs: int = 2, batch_size: int = 16,
                         repair_prompt: Callable[[str], str] | None = None) -> RunStats:
    """Resumably write one validated dialogue per speaker pair to out_path (failures to rejects_path)."""
    if mode not in ("whole", "turn"):
        raise ValueError(f"synthesize_dialogues: unknown mode {mode!r} (expected 'whole' or 'turn')")
    _check_pairs(pairs)
    if mode == "whole":
        check_template(template, WHOLE_FIELDS, what="dialogue")
        return _synthesize_whole(list(pairs), teacher, sampling, out_path, rejects_path, template, system_prompt,
                                 n_turns, max_words, max_repairs, batch_size,
                                 repair_prompt or whole_repair_prompt(n_turns, max_words))
    check_template(template, TURN_FIELDS, what="turn")
    t0 = time.perf_counter()
    stats = RunStats()
    done = done_ids(out_path, rejects_path)
    todo = [p for p in pairs if p["id"] not in done]
    stats.skipped = len(pairs) - len(todo)
    _synthesize_turns(todo, teacher, sampling, out_path, rejects_path, template, system_prompt, n_turns, max_words,
                      max_repairs, batch_size, repair_prompt or turn_repair_prompt(max_words), stats)
    stats.elapsed_s = time.perf_counter() - t0
    return stats
