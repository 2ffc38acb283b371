"""JIC glue: turning synthesized dialogues into SFT rows and generation prompts, plain and RAFt.

A dialogue is {"id", "author_a", "author_b", "turns": [{"speaker", "author", "text"}, ...]}. The model
always plays the speaker of the target turn (assistant) and the other speaker is the user, so every
turn after the first is a training target. RAFt (retrieval-augmented fine-tuning) appends to the user's
last utterance the target speaker's journal segments chosen by Maximum Marginal Relevance.
"""
from __future__ import annotations

import hashlib
from typing import Callable

Augment = Callable[[str, str], str]  # (author of the target turn, user's last utterance) -> new utterance


def split_of(dialogue_id: str, test_fraction: float, seed: int = 0) -> str:
    """'train' or 'test', stable for an id whatever else is in the corpus (hash-based, not positional)."""
    h = int(hashlib.sha256(f"{seed}:{dialogue_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "test" if h < test_fraction else "train"


def word_segments(text: str, segment_words: int) -> list[str]:
    """Cut journal text into consecutive windows of at most `segment_words` words (RAFt's retrieval units)."""
    words = text.split()
    return [" ".join(words[i:i + segment_words]) for i in range(0, len(words), segment_words)]


def truncate_words(text: str, max_words: int) -> str:
    """The first `max_words` words of a text."""
    return " ".join(text.split()[:max_words])


def chat_for_turn(dialogue: dict, target: int, system_prompt: str, augment: Augment | None = None):
    """Messages before turn `target` (roles seen from its speaker) and the target text."""
    turns = dialogue["turns"]
    if not 0 < target < len(turns):
        raise ValueError(f"dialogue {dialogue['id']}: target turn {target} outside 1..{len(turns) - 1}")
    me = turns[target]["speaker"]
    messages = [{"role": "system", "content": system_prompt}]
    for turn in turns[:target]:
        messages.append({"role": "assistant" if turn["speaker"] == me else "user", "content": turn["text"]})
    if augment is not None:
        last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[last_user] = {"role": "user", "content": augment(turns[target]["author"],
                                                                  messages[last_user]["content"])}
    return messages, turns[target]["text"]


def sft_rows(dialogues: list[dict], system_prompt: str, augment: Augment | None = None) -> list[dict]:
    """Conversational prompt-completion rows, one per turn after the first, for trl's SFTTrainer."""
    rows = []
    for d in dialogues:
        for t in range(1, len(d["turns"])):
            prompt, target = chat_for_turn(d, t, system_prompt, augment)
            rows.append({"id": f"{d['id']}-t{t}", "prompt": prompt,
                         "completion": [{"role": "assistant", "content": target}]})
    return rows
