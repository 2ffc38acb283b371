"""lib/served.py: student generation through a vLLM-like server holding the base model and the stage's adapters."""
import json

import pandas as pd
import pytest

from lib import psychometrics
from lib.served import ServedStudent, adapter_rank, serve_command, vllm_max_lora_rank
from lib.teacher import TeacherError
from tests.fake_teacher import ErrorReply, FakeTeacherServer

BASE = "meta-llama/Meta-Llama-3-8B-Instruct"
KEY = "served-secret"


def _adapters(tmp_path, ranks=(16, 8)):
    out = {}
    for name, r in zip(("sft", "dpo"), ranks):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"r": r, "peft_type": "LORA"}))
        out[name] = tmp_path / name
    return out


def _student(server, adapters, **cfg):
    return ServedStudent({"base_url": server.base_url, "api_key_env": "VLLM_TEST_KEY", "max_concurrency": 4,
                          "gpu_memory_utilization": 0.6, **cfg}, BASE, adapters)


def test_requests_name_the_adapter_or_the_base_and_carry_the_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_TEST_KEY", KEY)
    adapters = _adapters(tmp_path)
    with FakeTeacherServer(lambda m: f"re: {m[-1]['content']}", required_key=KEY,
                           served_models=[BASE, "sft", "dpo"]) as server:
        student = _student(server, adapters)
        assert student.check() == [BASE, "sft", "dpo"]
        chats = [[{"role": "system", "content": "You are calm."}, {"role": "user", "content": f"q{i}"}]
                 for i in range(3)]
        assert student.generate_chat(chats, "dpo", max_new_tokens=32, temperature=0.6, top_p=0.9, seed=7) == \
            ["re: q0", "re: q1", "re: q2"]
        student.generate_chat(chats[:1], None, max_new_tokens=8)
        names = [p["model"] for p in server.payloads]
        assert sorted(names[:3]) == ["dpo"] * 3 and names[3] == BASE
        first = next(p for p in server.payloads if p["messages"] == chats[0] and p["model"] == "dpo")
        assert (first["seed"], first["temperature"], first["top_p"], first["max_tokens"]) == (7, 0.6, 0.9, 32)
        assert first["messages"][0] == {"role": "system", "content": "You are calm."}  # the server applies the template
        with pytest.raises(ValueError, match=r"adapter 'raft' is not one this stage serves: \['dpo', 'sft'\]"):
            student.generate_chat(chats, "raft", max_new_tokens=8)


def test_questionnaires_by_generation_draw_a_new_seed_per_run(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_TEST_KEY", KEY)
    items = pd.DataFrame({"item": [1, 2], "text": ["am talkative", "worry a lot"], "domain": ["E", "N"],
                          "reverse": [False, False]})
    with FakeTeacherServer(lambda m: "4", required_key=KEY, served_models=[BASE, "sft", "dpo"]) as server:
        fn = _student(server, _adapters(tmp_path)).generate_fn("sft", top_p=0.9)
        answers, bad = psychometrics.administer_by_generation(fn, items, n_runs=3, temperature=0.6,
                                                              max_new_tokens=16, seed=10)
        assert bad == 0 and answers.answer.tolist() == [4] * 6
        assert sorted({p["seed"] for p in server.payloads}) == [10, 11, 12]
        assert {p["model"] for p in server.payloads} == {"sft"}


def test_a_server_without_the_adapters_is_a_clear_error_with_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_TEST_KEY", KEY)
    adapters = _adapters(tmp_path, ranks=(32, 8))
    with FakeTeacherServer(lambda m: "x", required_key=KEY, served_models=[BASE, "sft"]) as server:
        student = _student(server, adapters)
        with pytest.raises(TeacherError, match=r"does not hold \['dpo'\]") as err:
            student.check()
        assert f"vllm serve {BASE} --port {server.port} --api-key $VLLM_TEST_KEY --gpu-memory-utilization 0.6 --enable-lora " \
               f"--max-lora-rank 32 --lora-modules sft={adapters['sft']} dpo={adapters['dpo']}" in str(err.value)
        with pytest.raises(TeacherError, match="HTTP 404"):  # what vLLM answers for a name it does not hold
            student.generate_chat([[{"role": "user", "content": "hi"}]], "dpo", max_new_tokens=4)
    with pytest.raises(TeacherError, match="no vLLM server at"):
        student.check()


def test_an_empty_reply_is_an_answer_and_a_refused_request_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_TEST_KEY", KEY)

    def reply(messages):
        if messages[-1]["content"] == "too long":
            raise ErrorReply(400, "This model's maximum context length is 8192 tokens.")
        return "" if messages[-1]["content"] == "silent" else "ok"

    with FakeTeacherServer(reply, required_key=KEY, served_models=[BASE, "sft", "dpo"]) as server:
        student = _student(server, _adapters(tmp_path), max_retries=0)
        chats = [[{"role": "user", "content": c}] for c in ("silent", "hello")]
        assert student.generate_chat(chats, None, max_new_tokens=4) == ["", "ok"]
        with pytest.raises(TeacherError, match=r"1 of 2 requests to sft failed; chat 1: http_400: .*maximum context"):
            student.generate_chat([chats[1], [{"role": "user", "content": "too long"}]], "sft", max_new_tokens=4)


def test_serve_command_and_rank(tmp_path):
    adapters = _adapters(tmp_path)
    assert adapter_rank(adapters["dpo"]) == 8
    assert serve_command(BASE, {"sft": "a/b"}, 8002, 16, None) == \
        f"vllm serve {BASE} --port 8002 --gpu-memory-utilization 0.9 --enable-lora --max-lora-rank 16 --lora-modules sft=a/b"
    with pytest.raises(ValueError, match="cannot read the adapter's rank"):
        adapter_rank(tmp_path)


def test_seeds_per_chat_rank_rounding_and_a_served_name(tmp_path, monkeypatch):
    """Two samples of one chat need their own seeds (vLLM seeds each request alone); --max-lora-rank takes only the
    values vLLM accepts; a local folder is served and requested under its --served-model-name."""
    monkeypatch.setenv("VLLM_TEST_KEY", KEY)
    adapters = _adapters(tmp_path, ranks=(16, 24))
    with FakeTeacherServer(lambda m: "ok", required_key=KEY, served_models=["persllm-base", "sft", "dpo"]) as server:
        student = ServedStudent({"base_url": server.base_url, "api_key_env": "VLLM_TEST_KEY"}, "/work/base", adapters,
                                served_name="persllm-base")
        assert student.check() == ["persllm-base", "sft", "dpo"]
        chat = [{"role": "user", "content": "same"}]
        assert student.generate_chat([chat, chat, chat], None, max_new_tokens=4, seed=[5, 9, 5]) == ["ok"] * 3
        assert sorted(p["seed"] for p in server.payloads) == [5, 5, 9]
        assert {p["model"] for p in server.payloads} == {"persllm-base"}
        with pytest.raises(ValueError, match="2 seeds for 3 chats"):
            student.generate_chat([chat] * 3, None, max_new_tokens=4, seed=[1, 2])
        cmd = student.command()
        assert cmd.startswith("vllm serve /work/base --served-model-name persllm-base --port ") and \
            "--max-lora-rank 32 " in cmd  # rank 24 rounds up to vLLM's 32
    assert [vllm_max_lora_rank(r) for r in (1, 8, 9, 16, 40, 300, 512)] == [8, 8, 16, 16, 64, 320, 512]
    with pytest.raises(ValueError, match="exceeds vLLM's largest"):
        vllm_max_lora_rank(513)
