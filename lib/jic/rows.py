"""JIC's training rows: synthesized dialogues as SFT rows and generation prompts, plain and RAFt.

A dialogue is {"id", "speaker_a", "speaker_b", "turns": [{"speaker", "speaker_id", "text"}, ...]} (lib/dialogue.py;
the speakers are journal authors). The model always plays the speaker of the target turn (assistant) and the other
speaker is the user, so every turn after the first is a training target. RAFt (retrieval-augmented fine-tuning)
appends to the user's last utterance the target speaker's journal segments chosen by Maximum Marginal Relevance.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lib.records import split_of

if TYPE_CHECKING:
    import numpy as np

Augment = Callable[[str, str], str]  # (author of the target turn, user's last utterance) -> new utterance


def word_segments(text: str, segment_words: int) -> list[str]:
    """Cut journal text into consecutive windows of at most `segment_words` words (RAFt's retrieval units)."""
    words = text.split()
    return [" ".join(words[i:i + segment_words]) for i in range(0, len(words), segment_words)]


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
        messages[last_user] = {"role": "user", "content": augment(turns[target]["speaker_id"],
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


def raft_augmenter(journals: dict[str, str], embed_fn: Callable[[list[str]], np.ndarray], top_k: int,
                   lambda_: float, segment_words: int, template: str | None = None) -> Augment:
    """RAFt: the user's last utterance plus the target author's top-k journal segments chosen by MMR.

    `journals` maps author -> journal text; `embed_fn` maps texts to L2-normalised rows. Segment embeddings
    are computed once per author; queries are embedded as they come (and cached).
    """
    from lib.jic.retrieval import DEFAULT_RAFT_TEMPLATE, build_raft_input, mmr

    segments = {a: word_segments(t, segment_words) for a, t in journals.items()}
    seg_vecs: dict[str, np.ndarray] = {}
    query_cache: dict[str, np.ndarray] = {}

    def augment(author: str, utterance: str) -> str:
        if author not in segments:
            raise KeyError(f"RAFt: no journal for author {author!r}")
        if not segments[author]:
            return utterance
        if author not in seg_vecs:
            seg_vecs[author] = embed_fn(segments[author])
        if utterance not in query_cache:
            query_cache[utterance] = embed_fn([utterance])[0]
        chosen = mmr(query_cache[utterance], seg_vecs[author], top_k, lambda_)
        return build_raft_input(utterance, [segments[author][i] for i in chosen], template or DEFAULT_RAFT_TEMPLATE)

    return augment


def trim_history(rows: list[dict], count_tokens: Callable[[list[dict]], int], max_tokens: int):
    """Drop the oldest turns of each prompt (never the system prompt or the last user turn) until the row fits.

    Truncating a dialogue at the end would cut away the target turn, which trl then drops as fully masked;
    dropping the oldest history keeps every target. Returns (rows that fit, number dropped because even the
    shortest prompt is too long).
    """
    kept, dropped = [], 0
    for row in rows:
        prompt = list(row["prompt"])
        while count_tokens(prompt + row["completion"]) > max_tokens:
            first = 1 if prompt and prompt[0]["role"] == "system" else 0
            if len(prompt) - first <= 1:
                break
            del prompt[first]
        if count_tokens(prompt + row["completion"]) > max_tokens:
            dropped += 1
            continue
        kept.append(dict(row, prompt=prompt))
    return kept, dropped


def split(dialogue: dict, test_fraction: float, seed: int = 0) -> str:
    """'train' | 'test': the released data's own split where the dialogue carries one, else by hash of its id."""
    return dialogue.get("split") or split_of(dialogue["id"], test_fraction, seed)

