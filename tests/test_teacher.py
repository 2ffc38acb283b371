"""lib/teacher.py: both backends, the response cache, and the resumable validate-and-repair loop."""
import asyncio
import json
import socket
import time
from collections.abc import Callable

import pytest
import torch

from lib.records import read_jsonl
from lib.teacher import (
    CachedTeacher,
    InvalidReply,
    LocalTeacher,
    OpenAITeacher,
    ResponseCache,
    Sampling,
    TeacherError,
    TeacherFailure,
    cache_key,
    make_teacher,
    run_records,
)
from tests.fake_teacher import ErrorReply, FakeTeacherServer


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def echo_upper(messages: list[dict]) -> str:
    return messages[-1]["content"].upper()


def fast(base_url: str, **kw) -> OpenAITeacher:
    kw.setdefault("backoff_s", 0.001)
    return OpenAITeacher(base_url, "fake-teacher", api_key_env="TEST_TEACHER_KEY", **kw)


# ---------------------------------------------------------------------------------------------- OpenAI backend

def test_openai_order_and_bounded_concurrency(monkeypatch):
    monkeypatch.delenv("TEST_TEACHER_KEY", raising=False)
    prompts = [chat(f"prompt {i}") for i in range(8)]
    with FakeTeacherServer(echo_upper, delay_s=0.15) as server:
        replies = fast(server.base_url, max_concurrency=3).generate(prompts, Sampling())
        assert replies == [f"PROMPT {i}" for i in range(8)]
        assert server.requests == 8
        assert 2 <= server.max_in_flight <= 3
        assert server.auth_headers == [None] * 8  # no env var: no Authorization header


def test_openai_retries_after_429():
    with FakeTeacherServer(echo_upper, fail_first=2) as server:
        assert fast(server.base_url, max_retries=3).generate([chat("x")], Sampling()) == ["X"]
        assert server.requests == 3


def test_openai_error_after_retries_exhausted():
    with FakeTeacherServer(echo_upper, fail_first=100) as server:
        with pytest.raises(TeacherError, match=r"HTTP 429 from http://127\.0\.0\.1:\d+/v1/chat/completions.*3 attempts"):
            fast(server.base_url, max_retries=2).generate([chat("x")], Sampling())
        assert server.requests == 3


def test_openai_connection_error_is_retried_then_named():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    teacher = fast(f"http://127.0.0.1:{port}/v1", max_retries=1)
    with pytest.raises(TeacherError, match=rf"ConnectError from http://127\.0\.0\.1:{port}/v1/chat/completions"):
        teacher.generate([chat("x")], Sampling())


def test_openai_auth_from_env_and_key_never_shown(monkeypatch):
    key = "sk-test-SECRET-value-123"
    with FakeTeacherServer(echo_upper, required_key=key) as server:
        teacher = fast(server.base_url, max_retries=3)
        monkeypatch.setenv("TEST_TEACHER_KEY", key)  # read at call time, after construction
        assert teacher.generate([chat("hi")], Sampling()) == ["HI"]
        assert server.auth_headers == [f"Bearer {key}"]
        assert key not in repr(teacher) and key not in str(teacher)
        assert "TEST_TEACHER_KEY" in repr(teacher)

        monkeypatch.setenv("TEST_TEACHER_KEY", "sk-wrong-SECRET-456")
        with pytest.raises(TeacherError) as err:
            teacher.generate([chat("hi")], Sampling())
        assert "HTTP 401" in str(err.value) and "not retried" in str(err.value)
        assert "sk-wrong-SECRET-456" not in str(err.value) and "sk-wrong-SECRET-456" not in repr(err.value)
        assert server.requests == 2  # 401 is not retried


def test_openai_generate_works_inside_running_event_loop():
    # A Jupyter kernel already runs a loop; generate() must still be callable synchronously there.
    with FakeTeacherServer(echo_upper) as server:
        async def notebook_cell():
            return fast(server.base_url).generate([chat("a"), chat("b")], Sampling())
        assert asyncio.run(notebook_cell()) == ["A", "B"]


def test_openai_sends_sampling_settings():
    seen = []
    with FakeTeacherServer(lambda m: "ok") as server:
        teacher = fast(server.base_url)
        # Check the payload our client builds; the fake server only passes messages to reply_fn.
        payload = teacher._payload(chat("x"), Sampling(temperature=0.7, top_p=0.9, max_new_tokens=33, seed=5))
        seen.append(payload)
        assert teacher.generate([chat("x")], Sampling()) == ["ok"]
    assert seen == [{"model": "fake-teacher", "messages": chat("x"), "temperature": 0.7, "top_p": 0.9,
                     "max_tokens": 33, "seed": 5}]


# ---------------------------------------------------------------------------------------------- cache

def test_cache_hits_send_no_requests(tmp_path):
    prompts = [chat("a"), chat("b"), chat("a")]
    with FakeTeacherServer(echo_upper) as server:
        teacher = CachedTeacher(fast(server.base_url), ResponseCache(tmp_path / "c.sqlite"))
        assert teacher.generate(prompts, Sampling(seed=1)) == ["A", "B", "A"]
        assert server.requests == 2  # the duplicate chat is sent once
        assert teacher.generate(prompts, Sampling(seed=1)) == ["A", "B", "A"]
        assert server.requests == 2
        # A new process reading the same file also hits.
        again = CachedTeacher(fast(server.base_url), ResponseCache(tmp_path / "c.sqlite"))
        assert again.generate(prompts[:2], Sampling(seed=1)) == ["A", "B"]
        assert server.requests == 2 and again.hits == 2 and again.misses == 0
        # Other sampling settings or a repair attempt are different requests.
        again.generate(prompts[:1], Sampling(seed=2))
        assert server.requests == 3
        again.generate(prompts[:1], Sampling(seed=1), attempt=1)
        assert server.requests == 4


def test_cache_key_depends_on_every_input():
    base = cache_key("m", chat("a"), Sampling())
    assert base == cache_key("m", chat("a"), Sampling())
    others = {cache_key("m2", chat("a"), Sampling()), cache_key("m", chat("b"), Sampling()),
              cache_key("m", chat("a"), Sampling(temperature=0.5)), cache_key("m", chat("a"), Sampling(), attempt=1)}
    assert base not in others and len(others) == 4


def test_make_teacher(tmp_path):
    t = make_teacher({"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:1/v1/",
                      "max_concurrency": 2, "cache_path": str(tmp_path / "c.sqlite")})
    assert isinstance(t, CachedTeacher) and t.name == "openai:m"
    assert t.teacher.url == "http://127.0.0.1:1/v1/chat/completions" and t.teacher.max_concurrency == 2
    with pytest.raises(ValueError, match="unknown backend 'vllm'"):
        make_teacher({"backend": "vllm", "model": "m", "cache_path": str(tmp_path / "c.sqlite")})
    with pytest.raises(ValueError, match="missing 'cache_path'"):
        make_teacher({"backend": "openai", "model": "m", "base_url": "http://x/v1"})


# ---------------------------------------------------------------------------------------------- local backend

def noisy_teacher(model_dir, batch_size: int) -> LocalTeacher:
    """The fixture model with seeded weight noise: at init it only repeats the last token, hiding padding bugs."""
    teacher = LocalTeacher(model_dir, batch_size=batch_size)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in teacher.model.parameters():
            p.add_(torch.randn_like(p))
    return teacher


def test_local_batched_equals_one_at_a_time(tiny_llama_dir):
    prompts = [chat("How are you feeling today?"), chat("hi"),
               [{"role": "system", "content": "Be brief."}, chat("We talked about music and the weekend plans.")[0]],
               chat("walk by the river")]
    greedy = Sampling(temperature=0, max_new_tokens=10)
    teacher = noisy_teacher(tiny_llama_dir, batch_size=4)
    batched = teacher.generate(prompts, greedy)
    teacher.batch_size = 1
    single = teacher.generate(prompts, greedy)
    assert batched == single
    assert len(set(batched)) >= 3 and all(batched)  # distinct, non-empty replies: the comparison means something
    assert "<|im_start|>" not in "".join(batched) and "assistant" not in "".join(batched)  # only new tokens


def test_local_seeded_sampling_is_reproducible(tiny_llama_dir):
    teacher = noisy_teacher(tiny_llama_dir, batch_size=2)
    prompts = [chat("hi"), chat("how are you")]
    s = Sampling(temperature=1.0, max_new_tokens=12, seed=3)
    first = teacher.generate(prompts, s)
    assert teacher.generate(prompts, s) == first
    assert teacher.generate(prompts, Sampling(temperature=1.0, max_new_tokens=12, seed=4)) != first
    assert teacher.name == f"local:{tiny_llama_dir.name}"


# ---------------------------------------------------------------------------------------------- run_records

class ScriptedTeacher:
    """r-ok: valid at once; r-fix: valid after one repair; r-bad: never valid. Records every chat it sees."""

    name = "scripted"

    def __init__(self, fail_on_call: int | None = None):
        self.calls: list[list[list[dict]]] = []
        self.fail_on_call = fail_on_call

    def generate(self, prompts, sampling):
        self.calls.append(prompts)
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt("killed")
        out = []
        for m in prompts:
            rid = m[0]["content"]
            repaired = any(x["role"] == "assistant" for x in m)
            if rid.startswith("ok") or (rid.startswith("fix") and repaired):
                out.append(f"good {rid}")
            else:
                out.append(f"bad {rid} #{len(m)}")
        return out


def parse_good(record, reply):
    if not reply.startswith("good "):
        raise InvalidReply("not_good", reply)
    return {"text": reply, "id": "ignored"}


RECORDS = [{"id": "ok1"}, {"id": "fix1"}, {"id": "bad1"}, {"id": "ok2"}]


def build(record):
    return [{"role": "user", "content": record["id"]}]


def test_run_records_accept_repair_reject(tmp_path):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    teacher = ScriptedTeacher()
    stats = run_records(RECORDS, build, parse_good, teacher, Sampling(), out, rej, max_repairs=2,
                        repair_prompt=lambda r: f"fix it ({r})", batch_size=16)
    assert (stats.accepted, stats.repaired, stats.rejected, stats.skipped) == (3, 1, 1, 0)
    assert stats.reasons == {"not_good": 4}  # fix1 once, bad1 three times
    assert stats.acceptance_rate == 0.75
    # Appended as soon as each is final: first-round acceptances before the repaired one.
    assert read_jsonl(out) == [{"id": "ok1", "text": "good ok1", "repairs": 0},
                               {"id": "ok2", "text": "good ok2", "repairs": 0},
                               {"id": "fix1", "text": "good fix1", "repairs": 1}]
    assert read_jsonl(rej) == [{"id": "bad1", "reason": "not_good", "reply": "bad bad1 #5"}]
    # Repairs are batched: call 1 has all four, call 2 the two failures, call 3 only bad1.
    assert [len(c) for c in teacher.calls] == [4, 2, 1]
    assert teacher.calls[1][1] == [{"role": "user", "content": "bad1"},
                                   {"role": "assistant", "content": "bad bad1 #1"},
                                   {"role": "user", "content": "fix it (not_good)"}]
    d = stats.as_dict()
    assert d["reasons"] == {"not_good": 4} and d["generated_chars"] == stats.generated_chars > 0
    json.dumps(d)


def test_run_records_resume_skips_done_and_never_duplicates(tmp_path):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    # "Killed" during the second batch's first call: the first batch is already on disk.
    with pytest.raises(KeyboardInterrupt):
        run_records(RECORDS, build, parse_good, ScriptedTeacher(fail_on_call=3), Sampling(), out, rej, batch_size=2)
    assert [r["id"] for r in read_jsonl(out)] == ["ok1", "fix1"]
    teacher = ScriptedTeacher()
    stats = run_records(RECORDS, build, parse_good, teacher, Sampling(), out, rej, batch_size=2)
    assert (stats.accepted, stats.rejected, stats.skipped) == (1, 1, 2)
    assert teacher.calls[0] == [build({"id": "bad1"}), build({"id": "ok2"})]
    again = ScriptedTeacher()
    stats = run_records(RECORDS, build, parse_good, again, Sampling(), out, rej, batch_size=2)
    assert stats.skipped == 4 and again.calls == []
    ids = [r["id"] for r in read_jsonl(out) + read_jsonl(rej)]
    assert sorted(ids) == sorted(r["id"] for r in RECORDS)


def test_run_records_repairs_bypass_cached_first_answer(tmp_path):
    # Through the cache, a repair round uses attempt=k so it is a distinct request.
    teacher = CachedTeacher(ScriptedTeacher(), ResponseCache(tmp_path / "c.sqlite"))
    stats = run_records([{"id": "fix1"}], build, parse_good, teacher, Sampling(), tmp_path / "o.jsonl",
                        tmp_path / "r.jsonl")
    assert (stats.accepted, stats.repaired) == (1, 1) and teacher.misses == 2


def test_run_records_rejects_duplicate_input_ids(tmp_path):
    with pytest.raises(ValueError, match="duplicate record id 'a'"):
        run_records([{"id": "a"}, {"id": "a"}], build, parse_good, ScriptedTeacher(), Sampling(),
                    tmp_path / "o.jsonl", tmp_path / "r.jsonl")


# ---------------------------------------------------------------------------------------------- failed requests

def parse_text(record, reply):
    if not reply.strip():
        raise InvalidReply("blank")
    return {"text": reply}


def failing_on(bad: str, fail: Callable[[], str | None], broken: dict | None = None):
    """echo_upper, except that the chat "bad" gets `fail()` (which may raise ErrorReply) while broken["on"]."""
    broken = broken if broken is not None else {"on": True}

    def reply(messages):
        if messages[-1]["content"] == bad and broken["on"]:
            return fail()
        return echo_upper(messages)
    return reply


def http(status: int, message: str = "error", sleep_s: float = 0.0) -> Callable[[], str]:
    def fail():
        time.sleep(sleep_s)  # lets the other chats of the batch finish first
        raise ErrorReply(status, message)
    return fail


def test_openai_permanent_failure_is_per_chat():
    fail = http(400, "This model's maximum context length is 8192 tokens")
    with FakeTeacherServer(failing_on("long", fail)) as server:
        replies = fast(server.base_url, max_retries=3).generate([chat("a"), chat("long"), chat("b")], Sampling())
        assert replies[0] == "A" and replies[2] == "B"
        assert isinstance(replies[1], TeacherFailure) and replies[1] == ""
        assert replies[1].reason == "http_400" and "maximum context length" in replies[1].detail
        assert server.requests == 3  # a 400 is not retried


def test_run_records_http_400_is_one_reject_and_resume_skips_it(tmp_path):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    records = [{"id": f"r{i}"} for i in range(4)]
    with FakeTeacherServer(failing_on("r2", http(400, "context too long"))) as server:
        teacher = fast(server.base_url)
        stats = run_records(records, build, parse_text, teacher, Sampling(), out, rej, max_repairs=2)
        assert (stats.accepted, stats.rejected, stats.repaired) == (3, 1, 0)
        assert stats.reasons == {"http_400": 1} and server.requests == 4  # no repair round for a failed request
        assert [r["id"] for r in read_jsonl(out)] == ["r0", "r1", "r3"]
        [reject] = read_jsonl(rej)
        assert reject["id"] == "r2" and reject["reason"] == "http_400" and "context too long" in reject["reply"]
        # Resuming does not ask again for the rejected record (nor any other) and does not raise.
        stats = run_records(records, build, parse_text, teacher, Sampling(), out, rej, max_repairs=2)
        assert (stats.skipped, stats.accepted, stats.rejected) == (4, 0, 0) and server.requests == 4
    assert len(read_jsonl(out)) == 3 and len(read_jsonl(rej)) == 1


@pytest.mark.parametrize("content", [None, "", " \n"], ids=["null", "empty", "blank"])
def test_run_records_empty_content_is_rejected_without_repair(tmp_path, content):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    with FakeTeacherServer(failing_on("x", lambda: content)) as server:
        stats = run_records([{"id": "a"}, {"id": "x"}, {"id": "b"}], build, parse_text, fast(server.base_url),
                            Sampling(), out, rej, max_repairs=2)
        assert (stats.accepted, stats.rejected) == (2, 1) and stats.reasons == {"empty_reply": 1}
        assert server.requests == 3  # the same chat would come back empty again: no repair round
    [reject] = read_jsonl(rej)
    assert reject["id"] == "x" and reject["reason"] == "empty_reply" and "finish_reason 'stop'" in reject["reply"]


def test_run_records_malformed_response_is_rejected(tmp_path):
    rej = tmp_path / "rej.jsonl"
    with FakeTeacherServer(failing_on("x", http(200, "no choices here"))) as server:  # a 200 without "choices"
        stats = run_records([{"id": "a"}, {"id": "x"}], build, parse_text, fast(server.base_url), Sampling(),
                            tmp_path / "out.jsonl", rej)
    assert (stats.accepted, stats.rejected) == (1, 1) and stats.reasons == {"malformed_response": 1}
    [reject] = read_jsonl(rej)
    assert reject["reason"] == "malformed_response" and "no choices here" in reject["reply"]


def test_api_key_never_written_to_rejects(tmp_path, monkeypatch):
    key = "sk-test-SECRET-value-789"
    monkeypatch.setenv("TEST_TEACHER_KEY", key)
    rej = tmp_path / "rej.jsonl"
    echo_header = http(400, f"bad request (Authorization: Bearer {key})")  # a server echoing the header back
    with FakeTeacherServer(failing_on("x", echo_header), required_key=key) as server:
        stats = run_records([{"id": "a"}, {"id": "x"}], build, parse_text, fast(server.base_url), Sampling(),
                            tmp_path / "out.jsonl", rej)
    assert (stats.accepted, stats.rejected) == (1, 1)
    text = rej.read_text()
    assert key not in text and "[redacted]" in text and "http_400" in text


def test_auth_failure_raises_at_once_and_keeps_finished_replies(tmp_path):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    records = [{"id": "a"}, {"id": "x"}, {"id": "b"}]
    broken = {"on": True}
    with FakeTeacherServer(failing_on("x", http(401, "invalid api key", sleep_s=0.5), broken)) as server:
        teacher = CachedTeacher(fast(server.base_url, max_retries=3), ResponseCache(tmp_path / "c.sqlite"))
        with pytest.raises(TeacherError, match="HTTP 401.*not retried"):
            run_records(records, build, parse_text, teacher, Sampling(), out, rej)
        # A misconfiguration stops the stage and rejects nothing; the replies that came back are cached.
        assert server.requests == 3 and not out.exists() and not rej.exists()
        assert len(teacher.cache) == 2
        broken["on"] = False
        stats = run_records(records, build, parse_text, teacher, Sampling(), out, rej)
        assert stats.accepted == 3 and server.requests == 4  # only "x" is sent again


def test_failure_is_not_cached_but_the_rest_of_the_batch_is(tmp_path):
    broken = {"on": True}
    with FakeTeacherServer(failing_on("b", http(400), broken)) as server:
        teacher = CachedTeacher(fast(server.base_url), ResponseCache(tmp_path / "c.sqlite"))
        first = teacher.generate([chat("a"), chat("b"), chat("c")], Sampling())
        assert first[0] == "A" and isinstance(first[1], TeacherFailure) and first[2] == "C"
        assert len(teacher.cache) == 2 and server.requests == 3
        broken["on"] = False  # the endpoint is fixed: a later run asks again for "b" only
        assert teacher.generate([chat("a"), chat("b"), chat("c")], Sampling()) == ["A", "B", "C"]
        assert server.requests == 4 and len(teacher.cache) == 3


def test_retries_exhausted_still_raise_but_batch_replies_are_cached(tmp_path):
    with FakeTeacherServer(failing_on("b", http(503, "overloaded", sleep_s=0.2))) as server:
        teacher = CachedTeacher(fast(server.base_url, max_retries=2), ResponseCache(tmp_path / "c.sqlite"))
        with pytest.raises(TeacherError, match="HTTP 503 .*giving up after 3 attempts"):
            teacher.generate([chat("a"), chat("b"), chat("c")], Sampling())
        assert server.requests == 5 and len(teacher.cache) == 2
        assert teacher.generate([chat("a"), chat("c")], Sampling()) == ["A", "C"]
        assert server.requests == 5


class RepairTooLongTeacher:
    """No `on_reply`: "fix1" answers badly, and its repair chat is refused as too long."""

    name = "repair-too-long"

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, sampling, attempt=0):
        self.calls += 1
        return [TeacherFailure("http_400", "context too long") if len(m) > 1 else
                ("good ok1" if m[0]["content"] == "ok1" else "bad") for m in prompts]


def test_failure_in_repair_round_is_final_and_not_cached(tmp_path):
    out, rej = tmp_path / "out.jsonl", tmp_path / "rej.jsonl"
    teacher = CachedTeacher(RepairTooLongTeacher(), ResponseCache(tmp_path / "c.sqlite"))
    stats = run_records([{"id": "ok1"}, {"id": "fix1"}], build, parse_good, teacher, Sampling(), out, rej,
                        max_repairs=3)
    assert (stats.accepted, stats.rejected) == (1, 1) and stats.reasons == {"not_good": 1, "http_400": 1}
    assert read_jsonl(rej) == [{"id": "fix1", "reason": "http_400", "reply": "context too long"}]
    assert teacher.teacher.calls == 2 and len(teacher.cache) == 2  # both first replies; not the failure


def test_from_params_builds_a_stage_teacher_and_content_params_drops_the_speed_keys(tmp_path):
    from lib import config
    from lib.teacher import SPEED_KEYS, content_params, from_params

    section = dict(config.load("tiny")["synthesize"]["jic"])
    assert section["backend"] == "openai"
    teacher = from_params(section, tmp_path / "cache.sqlite")
    assert isinstance(teacher, CachedTeacher) and isinstance(teacher.teacher, OpenAITeacher)
    assert teacher.teacher.model == section["model"]
    content = content_params(section, drop=("source",))
    assert not set(content) & (set(SPEED_KEYS) | {"source"}) and content["model"] == section["model"]
    # a local teacher must be a model 00_models prepared
    local = section | {"backend": "local", "model": "gguf:not-prepared"}
    with pytest.raises(FileNotFoundError, match="'gguf:not-prepared' is not prepared under models/base"):
        from_params(local, tmp_path / "cache.sqlite")
    with pytest.raises(ValueError, match="unknown backend 'grpc'"):
        from_params(section | {"backend": "grpc"}, tmp_path / "cache.sqlite")
