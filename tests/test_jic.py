"""JIC glue: train/test split, SFT rows seen from the target speaker, RAFt augmentation."""
import numpy as np
import pytest

from lib.jic.data import NAMES, journals_by_author, speaker_names, truncate_words
from lib.jic.rows import chat_for_turn, raft_augmenter, sft_rows, trim_history, word_segments
from lib.records import split_of

DIALOGUE = {"id": "d1", "speaker_a": "ua", "speaker_b": "ub", "turns": [
    {"speaker": "A" if i % 2 == 0 else "B", "speaker_id": "ua" if i % 2 == 0 else "ub", "text": f"turn {i}"}
    for i in range(9)]}


def test_split_is_stable_and_near_the_fraction():
    ids = [f"pair-{i}" for i in range(2000)]
    splits = [split_of(i, 0.2) for i in ids]
    assert splits == [split_of(i, 0.2) for i in ids]  # deterministic
    assert 0.17 < splits.count("test") / len(ids) < 0.23
    assert split_of("x", 0.0) == "train" and split_of("x", 1.0) == "test"


def test_chat_for_turn_roles_follow_the_target_speaker():
    msgs, target = chat_for_turn(DIALOGUE, 8, "sys")
    assert target == "turn 8"
    assert [m["role"] for m in msgs] == ["system"] + ["assistant", "user"] * 4
    msgs, target = chat_for_turn(DIALOGUE, 1, "sys")
    assert [m["role"] for m in msgs] == ["system", "user"] and target == "turn 1"
    with pytest.raises(ValueError, match="target turn 9 outside 1..8"):
        chat_for_turn(DIALOGUE, 9, "sys")


def test_sft_rows_one_per_turn_after_the_first():
    rows = sft_rows([DIALOGUE], "sys")
    assert [r["id"] for r in rows] == [f"d1-t{t}" for t in range(1, 9)]
    assert rows[-1]["completion"] == [{"role": "assistant", "content": "turn 8"}]
    assert rows[0]["prompt"][-1] == {"role": "user", "content": "turn 0"}


def test_augment_rewrites_only_the_last_user_message():
    msgs, _ = chat_for_turn(DIALOGUE, 8, "sys", augment=lambda author, u: f"[{author}] {u}")
    assert msgs[-1]["content"] == "[ua] turn 7"  # turn 8 is A's (ua), so the journal is ua's
    assert msgs[-3]["content"] == "turn 5"


def test_word_segments_and_truncate():
    assert word_segments("a b c d e", 2) == ["a b", "c d", "e"]
    assert truncate_words("a b c d", 3) == "a b c"


def test_raft_augmenter_picks_relevant_segments_by_mmr():
    vocab = ["cats", "dogs", "rain", "exams"]

    def embed_fn(texts):  # bag of words over a fixed vocabulary, L2-normalised
        X = np.array([[t.count(w) + 1e-3 for w in vocab] for t in texts], dtype=float)
        return X / np.linalg.norm(X, axis=1, keepdims=True)

    journals = {"ua": "cats cats cats rain rain rain exams exams exams", "ub": ""}
    aug = raft_augmenter(journals, embed_fn, top_k=1, lambda_=1.0, segment_words=3,
                             template="{utterance} || {segments}")
    assert aug("ua", "do you like exams") == "do you like exams || exams exams exams"
    assert aug("ub", "hello") == "hello"  # no journal text: the utterance is left as it is
    with pytest.raises(KeyError, match="no journal for author 'uc'"):
        aug("uc", "hello")


def test_trim_history_drops_oldest_turns_first_and_counts_misfits():
    rows = sft_rows([DIALOGUE], "sys")
    count = lambda msgs: sum(len(m["content"].split()) for m in msgs)
    kept, dropped = trim_history(rows, count, max_tokens=7)
    assert dropped == 0
    last = kept[-1]["prompt"]  # turn 8: system + the latest turns that fit in 7 words with the completion
    assert last[0]["content"] == "sys" and [m["content"] for m in last[1:]] == ["turn 6", "turn 7"]
    assert count(last + kept[-1]["completion"]) <= 7
    kept, dropped = trim_history(rows, count, max_tokens=4)  # sys + 1 turn + target = 5 words: nothing fits
    assert kept == [] and dropped == len(rows)


def test_speaker_names_are_distinct_and_stable():
    pairs = [(f"u{i}", f"u{j}") for i in range(30) for j in range(30) if i != j]
    names = [speaker_names(a, b) for a, b in pairs]
    assert all(a != b for a, b in names)
    assert names == [speaker_names(a, b) for a, b in pairs]
    assert len({n for pair in names for n in pair}) == len(NAMES)  # every name gets used


def test_journals_by_author_joins_in_order():
    entries = [{"author": "a", "text": "one "}, {"author": "b", "text": "x"}, {"author": "a", "text": " two"}]
    assert journals_by_author(entries) == {"a": "one two", "b": "x"}
