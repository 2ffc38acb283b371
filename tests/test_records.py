"""lib/records.py: the JSONL store survives a kill mid-write and refuses real corruption."""
import json
import os

import pytest

from lib.records import RecordError, append_jsonl, check_ids, done_ids, read_jsonl, run_in_chunks


def test_roundtrip_keeps_order_and_unicode(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    recs = [{"id": "a", "text": "café\nnew line"}, {"id": "b", "n": 2}]
    for r in recs:
        append_jsonl(path, r)
    assert read_jsonl(path) == recs
    assert path.read_text(encoding="utf-8").count("\n") == 2


def test_truncated_last_line_is_ignored_then_cut_on_append(tmp_path):
    path = tmp_path / "out.jsonl"
    append_jsonl(path, {"id": "a"})
    with open(path, "ab") as f:
        f.write(b'{"id": "b", "te')  # a write killed half way
    assert read_jsonl(path) == [{"id": "a"}]
    assert done_ids(path) == {"a"}
    append_jsonl(path, {"id": "c"})
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "c"}\n'
    assert read_jsonl(path) == [{"id": "a"}, {"id": "c"}]


def test_truncated_only_line_is_cut(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id": "x"')
    assert read_jsonl(path) == []
    append_jsonl(path, {"id": "y"})
    assert path.read_bytes() == b'{"id": "y"}\n'


def test_malformed_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n{oops\n{"id": "c"}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed"):
        read_jsonl(path)


def test_malformed_terminated_last_line_is_an_error(tmp_path):
    # A kill cannot leave a newline-terminated broken line: that is corruption, not truncation.
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(RecordError, match=r"bad\.jsonl:2"):
        read_jsonl(path)


def test_non_object_line_rejected(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a"}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r":2: expected a JSON object, got list"):
        read_jsonl(path)


def test_append_fsyncs(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    append_jsonl(tmp_path / "x.jsonl", {"id": "a"})
    append_jsonl(tmp_path / "x.jsonl", {"id": "b"})
    assert len(calls) == 2


def test_done_ids_unions_files_and_skips_missing(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append_jsonl(a, {"id": "1"})
    append_jsonl(b, {"id": "2", "reason": "too_long"})
    assert done_ids(a, b, tmp_path / "missing.jsonl") == {"1", "2"}
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "no id"}) + "\n")
    with pytest.raises(RecordError, match="no string 'id'"):
        done_ids(tmp_path / "c.jsonl")


def test_check_ids():
    check_ids([{"id": "a"}, {"id": "b"}])
    with pytest.raises(RecordError, match="duplicate record id 'a'"):
        check_ids([{"id": "a"}, {"id": "a"}])
    with pytest.raises(RecordError, match="record 1 has no string 'id'"):
        check_ids([{"id": "a"}, {"id": 3}])


def test_long_truncated_line_spanning_read_chunks_is_cut(tmp_path):
    path = tmp_path / "out.jsonl"
    append_jsonl(path, {"id": "a"})
    with open(path, "ab") as f:
        f.write(b'{"id": "b", "text": "' + b"x" * 200_000)
    append_jsonl(path, {"id": "c"})
    assert path.read_bytes() == b'{"id": "a"}\n{"id": "c"}\n'


def test_run_in_chunks_resumes_at_the_first_unfinished_chunk_and_writes_what_one_run_would(tmp_path):
    items = [f"u{i}" for i in range(7)]
    calls = []

    def work(chunk, first):
        calls.append(first)
        return [{"id": u, "seed": first + j} for j, u in enumerate(chunk)]

    whole, ran = run_in_chunks(tmp_path / "whole", items, 3, work)
    assert ran == 3 and calls == [0, 3, 6] and [r["id"] for r in whole] == items
    assert [r["seed"] for r in whole] == list(range(7))  # seeded by position: the same as one call

    calls.clear()

    def killed(chunk, first):
        if first == 3:
            raise KeyboardInterrupt  # the kill lands in the second chunk
        return work(chunk, first)

    with pytest.raises(KeyboardInterrupt):
        run_in_chunks(tmp_path / "killed", items, 3, killed)
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["chunk-00000.jsonl"]  # nothing half-written
    calls.clear()
    resumed, ran = run_in_chunks(tmp_path / "killed", items, 3, work)
    assert calls == [3, 6] and ran == 2 and resumed == whole
    assert run_in_chunks(tmp_path / "killed", items, 3, work) == (whole, 0)
    with pytest.raises(ValueError, match="chunk size must be at least 1"):
        run_in_chunks(tmp_path / "x", items, 0, work)
