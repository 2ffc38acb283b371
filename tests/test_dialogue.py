"""lib/dialogue.py: dialogue parsing rules and both synthesis modes, against the fake endpoint and stubs."""
from pathlib import Path

import pytest

from lib.dialogue import parse_dialogue, parse_utterance, synthesize_dialogues
from lib.records import read_jsonl
from lib.teacher import CachedTeacher, InvalidReply, OpenAITeacher, ResponseCache, Sampling
from tests.fake_teacher import FakeTeacherServer, scripted_dialogue_reply

ROOT = Path(__file__).resolve().parents[1]
WHOLE = (ROOT / "params/prompts/jic_whole.txt").read_text()
TURN = (ROOT / "params/prompts/jic_turn.txt").read_text()
SYSTEM = (ROOT / "params/prompts/jic_system.txt").read_text()


def lines(n: int, speakers=("A", "B"), words: int = 3) -> list[str]:
    return [f"{speakers[i % 2]}: " + " ".join(["word"] * words) + f" {i}" for i in range(n)]


def reason(text: str, **kw) -> str:
    with pytest.raises(InvalidReply) as err:
        parse_dialogue(text, **kw)
    return err.value.reason


# ---------------------------------------------------------------------------------------------- parse_dialogue

def test_parse_valid_dialogue():
    turns = parse_dialogue("\n".join(lines(9)))
    assert [t["speaker"] for t in turns] == list("ABABABABA")
    assert turns[0]["text"] == "word word word 0" and turns[8]["text"] == "word word word 8"


def test_parse_tolerates_numbering_markup_quotes_and_preamble():
    text = ("Here is the conversation:\n\n"
            "1. **Alice:** \"I went for a long walk today.\"\n"
            "2) **Bob**: “Sounds lovely, where did you go?”\n\n"
            "- Alice - By the river, it was calm.\n"
            "*Bob*: I prefer the city,\n  honestly.\n"
            "[Alice]: Why is that?\n"
            "Speaker Bob: More coffee shops.\n"
            "alice: Fair point.\n"
            "Bob: 'Come along next time.'\n"
            "ALICE: Maybe I will.\n"
            "Bob: Great, see you then.\n"
            "Let me know if you want changes!")
    turns = parse_dialogue(text, speakers=("Alice", "Bob"))
    assert [t["text"] for t in turns] == [
        "I went for a long walk today.", "Sounds lovely, where did you go?", "By the river, it was calm.",
        "I prefer the city, honestly.", "Why is that?", "More coffee shops.", "Fair point.",
        "Come along next time.", "Maybe I will."]
    assert [t["speaker"] for t in turns] == ["Alice", "Bob"] * 4 + ["Alice"]


def test_parse_rejections():
    assert reason("\n".join(lines(8))) == "turn_count"
    assert reason("") == "turn_count"
    swapped = lines(9, speakers=("B", "A"))
    assert reason("\n".join(swapped)) == "speaker_order"
    double = lines(9)
    double[3] = "A: again me"
    assert reason("\n".join(double)) == "speaker_order"
    long = lines(9)
    long[4] = "A: " + " ".join(["w"] * 21)
    assert reason("\n".join(long)) == "too_long"
    long[4] = "A: " + " ".join(["w"] * 20)  # exactly max_words is fine
    assert len(parse_dialogue("\n".join(long))) == 9
    empty = lines(9)
    empty[2] = 'A: ""'
    assert reason("\n".join(empty)) == "empty"


def test_parse_cuts_lines_after_a_complete_dialogue():
    turns = parse_dialogue("\n".join(lines(11)))
    assert len(turns) == 9 and turns[-1]["text"] == "word word word 8"


def test_parse_custom_sizes_and_bad_speakers():
    assert len(parse_dialogue("\n".join(lines(4, words=5)), n_turns=4, max_words=6)) == 4
    assert reason("\n".join(lines(4, words=5)), n_turns=4, max_words=5) == "too_long"
    with pytest.raises(ValueError, match="two distinct speaker names"):
        parse_dialogue("A: hi", speakers=("A", "a"))


def test_parse_utterance():
    assert parse_utterance('**Alice:** "Hi there, how are you?"\nBob: fine', labels=("Alice", "Bob")) == \
        "Hi there, how are you?"
    assert parse_utterance("\n\nAlice:\nGood morning!", labels=("Alice", "Bob")) == "Good morning!"
    assert parse_utterance("Hi Sam,\nI just got back.\n") == "Hi Sam, I just got back."  # one message, two lines
    assert parse_utterance("Hello there!\nB: hi A", labels=("A", "B")) == "Hello there!"  # stops at the next turn
    for text, why in [("", "empty"), ("  \n ", "empty"), ('A: ""', "empty"), (" ".join(["w"] * 21), "too_long")]:
        with pytest.raises(InvalidReply) as err:
            parse_utterance(text, max_words=20)
        assert err.value.reason == why


# ---------------------------------------------------------------------------------------------- synthesis

PAIRS = [{"id": f"p{i}", "speaker_a": f"au{i}", "speaker_b": f"bu{i}", "profile_a": f"I walked {i} miles today.",
          "profile_b": f"Work was long, {i} meetings."} for i in range(3)]


def check_dialogue(rec: dict, pair: dict, n_turns: int = 9) -> None:
    assert rec["id"] == pair["id"] and rec["speaker_a"] == pair["speaker_a"] and rec["speaker_b"] == pair["speaker_b"]
    assert [t["speaker"] for t in rec["turns"]] == ["A", "B"] * (n_turns // 2) + ["A"] * (n_turns % 2)
    assert [t["speaker_id"] for t in rec["turns"]] == [pair["speaker_a" if t["speaker"] == "A" else "speaker_b"]
                                                   for t in rec["turns"]]
    assert all(0 < len(t["text"].split()) <= 20 for t in rec["turns"])


def test_whole_mode_against_fake_server_resumes_from_cache(tmp_path):
    out, rej = tmp_path / "d.jsonl", tmp_path / "rej.jsonl"
    with FakeTeacherServer(scripted_dialogue_reply) as server:
        teacher = CachedTeacher(OpenAITeacher(server.base_url, "fake-teacher"), ResponseCache(tmp_path / "c.sqlite"))
        stats = synthesize_dialogues(PAIRS[:2], "whole", teacher, Sampling(seed=0), out, rej, WHOLE, SYSTEM)
        assert (stats.accepted, stats.rejected, stats.repaired) == (2, 0, 0) and server.requests == 2
        # A third pair later: only it is generated.
        stats = synthesize_dialogues(PAIRS, "whole", teacher, Sampling(seed=0), out, rej, WHOLE, SYSTEM)
        assert (stats.accepted, stats.skipped) == (1, 2) and server.requests == 3
        # Deleting the output (a killed run that lost it) regenerates identically from the cache.
        first = read_jsonl(out)
        out.unlink()
        synthesize_dialogues(PAIRS, "whole", teacher, Sampling(seed=0), out, rej, WHOLE, SYSTEM)
        assert server.requests == 3 and read_jsonl(out) == first
    for rec, pair in zip(first, PAIRS):
        check_dialogue(rec, pair)
        assert rec["repairs"] == 0
    assert not rej.exists()


class WholeStub:
    """First reply per pair has 8 turns; the repaired one is valid, except pair p2 which stays too long."""

    name = "stub"

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling):
        self.calls.append(prompts)
        out = []
        for m in prompts:
            first = m[1]["content"]
            words = 25 if "2 miles" in first else 4
            if len(m) == 2:
                out.append("\n".join(lines(8, speakers=("Ann", "Ben"))))
            else:
                out.append("\n".join(lines(9, speakers=("Ann", "Ben"), words=words)))
        return out


def test_whole_mode_repairs_and_rejects_with_names(tmp_path):
    pairs = [dict(p, name_a="Ann", name_b="Ben") for p in PAIRS]
    stub = WholeStub()
    out, rej = tmp_path / "d.jsonl", tmp_path / "rej.jsonl"
    stats = synthesize_dialogues(pairs, "whole", stub, Sampling(), out, rej, WHOLE, SYSTEM, max_repairs=2)
    assert (stats.accepted, stats.repaired, stats.rejected) == (2, 2, 1)
    assert stats.reasons == {"turn_count": 3, "too_long": 2}
    assert "between Ann and Ben" in stub.calls[0][0][1]["content"]
    assert stub.calls[0][0][0] == {"role": "system", "content": SYSTEM}
    assert "exactly 9 utterances" in stub.calls[1][0][-1]["content"]  # the repair names what was wrong
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == ["p0", "p1"] and all(r["repairs"] == 1 for r in recs)
    check_dialogue(recs[0], pairs[0])
    assert read_jsonl(rej)[0]["id"] == "p2" and read_jsonl(rej)[0]["reason"] == "too_long"


def test_turn_mode_against_fake_server(tmp_path):
    out, rej = tmp_path / "d.jsonl", tmp_path / "rej.jsonl"
    with FakeTeacherServer(scripted_dialogue_reply) as server:
        teacher = CachedTeacher(OpenAITeacher(server.base_url, "fake-teacher"), ResponseCache(tmp_path / "c.sqlite"))
        stats = synthesize_dialogues(PAIRS, "turn", teacher, Sampling(seed=0), out, rej, TURN, SYSTEM, n_turns=5,
                                     batch_size=2)
        assert (stats.accepted, stats.rejected) == (3, 0) and server.requests == 15
        recs = read_jsonl(out)
        for rec, pair in zip(recs, PAIRS):
            check_dialogue(rec, pair, n_turns=5)
        out.unlink()
        synthesize_dialogues(PAIRS, "turn", teacher, Sampling(seed=0), out, rej, TURN, SYSTEM, n_turns=5)
        assert server.requests == 15 and read_jsonl(out) == recs  # cache makes the regenerated turns identical


class TurnStub:
    """Writes "<speaker> says <t>"; pair p1's third turn is too long until repaired; p2 never speaks at turn 1."""

    name = "turn-stub"

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling):
        self.calls.append(prompts)
        out = []
        for m in prompts:
            user = m[0]["content"]  # system prompt + persona
            speaker = user.split("You are ")[1].split(",")[0]
            t = sum(x["role"] in ("user", "assistant") for x in m[1:])  # turns so far (the opener counts as none)
            t = 0 if m[1]["content"].startswith("Write your first message") else t
            repaired = m[-1]["role"] == "user" and "Reply again" in m[-1]["content"]
            t -= 2 if repaired else 0  # a repair appends the bad reply and the instruction
            if "1 miles" in user and t == 2 and not repaired:
                out.append(" ".join(["long"] * 30))
            elif "2 meetings" in user and t == 1:
                out.append("")
            else:
                other = "B" if speaker == "A" else "A"  # the model going on to write the other side's turn
                out.append(f'{speaker}: "{speaker} says {t}"\n{other}: and so on')
        return out


def test_turn_mode_batches_turns_repairs_and_rejects(tmp_path):
    out, rej = tmp_path / "d.jsonl", tmp_path / "rej.jsonl"
    stub = TurnStub()
    stats = synthesize_dialogues(PAIRS, "turn", stub, Sampling(), out, rej, TURN, SYSTEM, n_turns=4, max_repairs=1)
    assert (stats.accepted, stats.repaired, stats.rejected) == (2, 1, 1)
    assert stats.reasons == {"empty": 2, "too_long": 1}
    # Turn 0 for all three dialogues in one call; p2 drops out after turn 1; p1's repair is its own call.
    assert [len(c) for c in stub.calls] == [3, 3, 1, 2, 1, 2]
    recs = {r["id"]: r for r in read_jsonl(out)}
    assert [t["text"] for t in recs["p0"]["turns"]] == ["A says 0", "B says 1", "A says 2", "B says 3"]
    assert recs["p0"]["repairs"] == 0 and recs["p1"]["repairs"] == 1
    check_dialogue(recs["p1"], PAIRS[1], n_turns=4)
    assert read_jsonl(rej) == [{"id": "p2", "reason": "empty", "reply": "", "turn": 1}]
    # At turn 2 speaker A sees its own turn as assistant and B's as user, after the system prompt.
    assert [(m["role"], m["content"]) for m in stub.calls[3][0][1:]] == [("assistant", "A says 0"),
                                                                        ("user", "B says 1")]
    assert stub.calls[0][0][1] == {"role": "user", "content": "Write your first message to B."}
    # Resume: nothing left to do.
    again = TurnStub()
    stats = synthesize_dialogues(PAIRS, "turn", again, Sampling(), out, rej, TURN, SYSTEM, n_turns=4, max_repairs=1)
    assert stats.skipped == 3 and again.calls == []


def test_synthesize_rejects_bad_input(tmp_path):
    args = (Sampling(), tmp_path / "o.jsonl", tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="unknown mode 'both'"):
        synthesize_dialogues(PAIRS, "both", WholeStub(), *args, WHOLE, SYSTEM)
    with pytest.raises(ValueError, match="pair 'p0': missing or non-string 'profile_b'"):
        synthesize_dialogues([{k: v for k, v in PAIRS[0].items() if k != "profile_b"}], "whole", WholeStub(), *args,
                             WHOLE, SYSTEM)
    with pytest.raises(ValueError, match=r"turn template has unknown placeholders \[.*'name_a'"):
        synthesize_dialogues(PAIRS, "turn", WholeStub(), *args, WHOLE, SYSTEM)


def test_fake_teacher_cli_serves_dialogues(tmp_path):
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/fake_teacher.py"), "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert "serving on" in proc.stdout.readline()
        teacher = OpenAITeacher(f"http://127.0.0.1:{port}/v1", "fake-teacher", max_retries=3, backoff_s=0.05)
        t0 = time.time()
        stats = synthesize_dialogues(PAIRS[:1], "whole", teacher, Sampling(), tmp_path / "o.jsonl",
                                     tmp_path / "r.jsonl", WHOLE, SYSTEM)
        assert stats.accepted == 1 and time.time() - t0 < 10
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_parse_utterance_keeps_whole_sentences_that_fit():
    text = "I love rain. It reminds me of " + "many " * 20 + "things."
    assert parse_utterance(text, max_words=10) == "I love rain."
    with pytest.raises(InvalidReply, match="too_long"):
        parse_utterance("Hi. " + "and " * 30, max_words=10)  # no sentence of >= 3 words ends within the cap


class ParrotStub:
    name = "parrot"

    def generate(self, prompts, sampling):
        return ["Same old thing again." for _ in prompts]


def test_turn_mode_rejects_an_utterance_that_repeats_the_history(tmp_path):
    stats = synthesize_dialogues(PAIRS[:1], "turn", ParrotStub(), Sampling(), tmp_path / "o.jsonl",
                                 tmp_path / "r.jsonl", TURN, SYSTEM, n_turns=4, max_repairs=1)
    assert (stats.accepted, stats.rejected) == (0, 1) and stats.reasons == {"repeats": 2}
    assert read_jsonl(tmp_path / "r.jsonl") == [{"id": "p0", "reason": "repeats", "reply": "Same old thing again.",
                                                 "turn": 1}]
