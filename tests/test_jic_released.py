"""lib/jic/released.py: JIC's published dialogues (chocokiddo/jic) read as 06_synthesize output, and the helpers
that let 08/11/12 use them (the split they carry, their journal entries, profiles of their authors)."""
import json
import zipfile

import numpy as np
import pytest

from lib.jic import released
from lib.jic.data import journal_entries
from lib.jic.filtering import trait_profiles
from lib.jic.rows import split


def record(i: int, n_utterances: int = 10, **changes) -> dict:
    """One record in the layout the paper's generator writes and its fine-tuning script reads."""
    r = {"author_fullname1": f"t2_a{i}", "author_fullname2": f"t2_b{i}", "author1": f"user_a{i}",
         "author2": f"user_b{i}", "id1": f"p{i}a", "id2": f"p{i}b",
         "journal_entry1": f"Journal of a{i}: I walked by the river today.", "journal_entry2": f"b{i} wrote code.",
         "dialogue": [f"utterance {t} of dialogue {i}" for t in range(n_utterances)]}
    r.update(changes)
    return {k: v for k, v in r.items() if v is not None}


def zipped(path, records, name="train.json"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(name, json.dumps(records))
    return path


def test_a_zipped_json_list_becomes_dialogues_seen_from_both_authors_with_their_journals(tmp_path):
    train = zipped(tmp_path / "train.json.zip", [record(i) for i in range(3)])
    test = zipped(tmp_path / "test.json.zip", [record(9)], name="test.json")
    dialogues, entries, rejects = released.load_released(train, test, min_turns=9)
    assert [d["split"] for d in dialogues] == ["train"] * 3 + ["test"] and rejects == []
    d = dialogues[0]
    assert d["id"] == "train-p0a__p0b" and (d["speaker_a"], d["speaker_b"]) == ("t2_a0", "t2_b0")
    assert [t["speaker"] for t in d["turns"]] == list("ABABABABAB")
    assert [t["speaker_id"] for t in d["turns"][:3]] == ["t2_a0", "t2_b0", "t2_a0"]
    assert d["turns"][3]["text"] == "utterance 3 of dialogue 0"
    assert {(e["author"], e["text"]) for e in entries} >= {("t2_a0", "Journal of a0: I walked by the river today."),
                                                           ("t2_b9", "b9 wrote code.")}
    assert len(entries) == 8
    # the split they carry wins over the hash; a teacher dialogue (no split) keeps the hashed one
    assert [split(x, 0.0) for x in dialogues] == ["train"] * 3 + ["test"]
    assert split({"id": "x"}, 1.0) == "test" and split({"id": "x", "split": None}, 0.0) == "train"


def test_teacher_text_json_lines_and_the_username_fallback(tmp_path):
    text = ("Author 1: Hi, how was your day?\n\n**Author 2**: Busy: I wrote a lot.\nAuthor 1: Me too!\n"
            "Note: the dialogue ends here.\nAuthor 2: not reached")
    rows = [record(0, dialogue=text, author_fullname1=None, author_fullname2=None)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (d,), _, _ = released.load_released(path)
    # a colon inside an utterance stays; a line not labelled by the first two speakers ends the utterances
    assert [t["text"] for t in d["turns"]] == ["Hi, how was your day?", "Busy: I wrote a lot.", "Me too!"]
    assert (d["speaker_a"], d["speaker_b"], d["split"]) == ("user_a0", "user_b0", None)  # one file: 08 hashes it


def test_bad_records_are_counted_rejects_and_max_train_keeps_the_first(tmp_path):
    rows = [record(0), record(1, n_utterances=4), record(2, dialogue=None), record(3, author1=None,
            author_fullname1=None), record(4, author_fullname2="t2_a4"), record(0), record(5), record(6)]
    dialogues, entries, rejects = released.load_released(zipped(tmp_path / "t.zip", rows), max_train=2, min_turns=9)
    assert [r["reason"] for r in rejects] == ["too_few_turns", "no_dialogue", "missing_author", "same_author",
                                              "duplicate"]
    assert [d["id"] for d in dialogues] == ["all-p0a__p0b", "all-p5a__p5b"]
    assert {e["author"] for e in entries} == {"t2_a0", "t2_b0", "t2_a5", "t2_b5"}  # only the kept dialogues' authors


@pytest.mark.parametrize("content, message", [
    (None, "not found"), ("", "empty file"), ("{not json", "not a JSON list"),
    ('{"a": 1}', "no usable dialogue in 1 records"), ("[1, 2]", "list of objects")])
def test_a_file_that_is_not_the_released_layout_is_named(tmp_path, content, message):
    path = tmp_path / "train.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        released.load_released(path)


def test_a_zip_without_one_json_file_and_a_file_with_no_usable_dialogue_are_named(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.json", "[]")
        z.writestr("b.json", "[]")
    with pytest.raises(ValueError, match=r"one \.json or \.jsonl file inside the zip"):
        released.load_released(path)
    with pytest.raises(ValueError, match=r"no usable dialogue in 2 records; reasons \{'no_dialogue': 2\}"):
        released.load_released(zipped(tmp_path / "t.zip", [{"x": 1}, {"y": 2}]))


def test_journal_entries_come_from_04_filter_or_the_released_records(tmp_path):
    (tmp_path / "04_filter").mkdir()
    (tmp_path / "04_filter" / "entries.jsonl").write_text(json.dumps({"author": "a", "text": "filtered"}) + "\n")
    assert journal_entries(tmp_path, "teacher")[0]["text"] == "filtered"
    with pytest.raises(FileNotFoundError, match="06_synthesize/journals.jsonl is missing"):
        journal_entries(tmp_path, "released")
    with pytest.raises(ValueError, match="expected teacher or released"):
        journal_entries(tmp_path, "dexperts")


def test_trait_profiles_threshold_each_authors_mean():
    P = np.array([[0.9, 0.1, 0.6, 0.5, 0.2], [0.7, 0.3, 0.2, 0.5, 0.2], [0.1, 0.8, 0.5, 0.5, 0.9]])
    profiles = trait_profiles(["a", "a", "b"], P, threshold=0.5)
    assert profiles["a"]["mean"]["O"] == pytest.approx(0.8) and profiles["a"]["mean"]["E"] == pytest.approx(0.4)
    assert profiles["a"]["high"] == {"O": 1, "C": 0, "E": 0, "A": 1, "N": 0}
    assert profiles["b"]["high"] == {"O": 0, "C": 1, "E": 1, "A": 1, "N": 1}


def test_the_paper_profiles_released_files_resolve_from_a_hub_cache_and_read(tmp_path, monkeypatch):
    """synthesize.jic.released_path / released_test_path of params/paper.yaml, through lib.hub, offline."""
    import huggingface_hub.constants

    from lib import config
    from tests.standins.hub_cache import put_dataset

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "files").mkdir()
    zipped(tmp_path / "files" / "train.json.zip", [record(i) for i in range(2)])
    zipped(tmp_path / "files" / "test.json.zip", [record(5)], name="test.json")
    put_dataset(tmp_path / "hub", released.RELEASED_ID, tmp_path / "files")
    cfg = config.load("paper", check_files=False)
    p = cfg["synthesize"]["jic"]
    assert p["source"] == "teacher"  # the paper profile runs the teacher unless switched
    dialogues, _, _ = released.load_released(config.data_path(cfg, p["released_path"]),
                                             config.data_path(cfg, p["released_test_path"]), min_turns=p["n_turns"])
    assert [d["split"] for d in dialogues] == ["train", "train", "test"]
