"""DPG generation units and evaluation helpers (lib/dpg/evaluate.py), and the assessment runner that 05 and 12 share
(lib.dpg.label.assess_samples) in both readings."""
import json
from pathlib import Path

import numpy as np
import pytest

from lib.dpg import evaluate, label
from lib.traits import TRAITS

ROOT = Path(__file__).resolve().parents[1]
PERSONA = (ROOT / "params/prompts/dpg_persona.txt").read_text()
COHERENCY = (ROOT / "params/prompts/dpg_judge_coherency.txt").read_text()
CONSISTENCY = (ROOT / "params/prompts/dpg_judge_consistency.txt").read_text()
VEC = {"O": 1, "C": 0, "E": -2, "A": 3, "N": 0.5}
INFO = {"name": "Ron Weasley", "house": "Gryffindor"}


def _sample(sid, turns, character="Ron Weasley"):
    return {"sample_id": sid, "character": character, "info": dict(INFO, name=character),
            "turns": [{"speaker": s, "text": t} for s, t in turns]}


SAMPLES = [
    # Ron answers someone at turns 2 and 4; turn 0 opens the window and turn 5 follows his own line
    _sample("a", [("Ron Weasley", "Hi."), ("Harry Potter", "Hello."), ("Ron Weasley", "Bloody hell."),
                  ("Hermione Granger", "Language."), ("Ron Weasley", "Sorry."), ("Ron Weasley", "Really.")]),
    _sample("b", [("Harry Potter", "Ready?"), ("Ron Weasley", "No.")]),
    _sample("c", [("Ron Weasley", "Alone."), ("Ron Weasley", "Still alone.")]),  # no reply to anyone
    _sample("d", [("Harry Potter", "Ready?"), ("Ron Weasley", "Yes.")]),  # an outlier: no vector
]
VECTORS = {"a": VEC, "b": {t: -1 for t in TRAITS}, "c": VEC}


def test_units_hold_the_turns_before_each_reply_and_skip_what_cannot_be_prompted():
    units, stats = evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=5, context_turns=2)
    assert stats == {"units": 2, "without_vector": 1, "without_context": 1}
    a = units[0]
    assert a["unit_id"] == "char:a" and a["kind"] == "character" and a["vector"] == VEC
    assert [[t["text"] for t in c] for c in a["contexts"]] == [["Hi.", "Hello."], ["Bloody hell.", "Language."]]
    assert a["references"] == ["Bloody hell.", "Sorry."]
    capped, _ = evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=1, context_turns=1)
    assert [len(u["contexts"]) for u in capped] == [1, 1] and capped[0]["contexts"][0] == [
        {"speaker": "Harry Potter", "text": "Hello."}]
    with pytest.raises(ValueError, match="replies_per_unit"):
        evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=0)


def test_new_vectors_are_seeded_integers_away_from_every_character():
    existing = [VEC, {t: -1 for t in TRAITS}]
    first = evaluate.new_vectors(5, seed=3, existing=existing, min_distance=3.0)
    assert first == evaluate.new_vectors(5, seed=3, existing=existing, min_distance=3.0)
    assert first != evaluate.new_vectors(5, seed=4, existing=existing, min_distance=3.0)
    points = [np.array([v[t] for t in TRAITS], float) for v in existing + first]
    for i, v in enumerate(first):
        assert set(v) == set(TRAITS) and all(isinstance(x, int) and -4 <= x <= 4 for x in v.values())
        here = points[len(existing) + i]
        assert all(np.linalg.norm(here - q) >= 3.0 for j, q in enumerate(points) if j != len(existing) + i)
    with pytest.raises(ValueError, match="found only"):
        evaluate.new_vectors(3, low=0, high=0, min_distance=1.0)  # one point in the space


def test_new_personality_units_change_only_the_vector():
    units, _ = evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=5)
    new = evaluate.new_personality_units(units, 3, seed=0)
    assert [u["kind"] for u in new] == ["new"] * 3 and len({u["unit_id"] for u in new}) == 3
    assert [u["sample_id"] for u in new] == ["a", "b", "a"]  # contexts borrowed from the character units in turn
    assert new[0]["contexts"] == units[0]["contexts"] and new[0]["info"] == units[0]["info"]
    assert all(u["vector"] not in (VEC, VECTORS["b"]) for u in new)
    with pytest.raises(ValueError, match="at least one character unit"):
        evaluate.new_personality_units([], 1)


def test_a_wrong_vector_is_named_with_its_unit():
    units, _ = evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=1)
    for bad, what in (({**VEC, "N": 7}, "outside|not a finite number"), ({"O": 1}, "missing")):
        with pytest.raises(ValueError, match=f"unit char:a: .*({what})"):
            evaluate.unit_chats(dict(units[0], vector=bad), PERSONA, persona_in_context=True)


def test_chats_carry_the_persona_only_for_methods_that_read_it():
    units, _ = evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=5)
    with_p = evaluate.unit_chats(units[0], PERSONA, persona_in_context=True)
    without = evaluate.unit_chats(units[0], PERSONA, persona_in_context=False)
    assert [m["role"] for m in with_p[0]] == ["system", "user"] and [m["role"] for m in without[0]] == ["user"]
    assert "You are Ron Weasley" in with_p[0][0]["content"] and "Agreeableness: +3" in with_p[0][0]["content"]
    assert with_p[1][1]["content"] == without[1][0]["content"] == "Ron Weasley: Bloody hell.\nHermione Granger: Language."


def test_generated_replies_become_the_characters_lines_for_the_assessor():
    units, _ = evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=5)
    replies = {"char:a": ["Wicked!", ""], "char:b": ["Fine."]}
    samples = evaluate.generated_samples(units, replies)
    assert [s["sample_id"] for s in samples] == ["char:a", "char:b"]
    assert [(t["speaker"], t["text"]) for t in samples[0]["turns"]] == [
        ("Ron Weasley", "Hi."), ("Harry Potter", "Hello."), ("Ron Weasley", "Wicked!"),
        ("Ron Weasley", "Bloody hell."), ("Hermione Granger", "Language."), ("Ron Weasley", "...")]
    chat = label.assessment_chats(samples[0], "E", (ROOT / "params/prompts/dpg_assess_vanilla.txt").read_text())
    assert "Ron Weasley: Wicked!" in chat[0]["content"]
    with pytest.raises(ValueError, match="unit char:a: 1 replies for 2 contexts"):
        evaluate.generated_samples(units, {"char:a": ["x"], "char:b": ["y"]})


def test_judge_chats_fill_the_templates_and_refuse_unknown_fields():
    units, _ = evaluate.generation_units(SAMPLES, VECTORS, replies_per_unit=5)
    coh = evaluate.judge_chats(units[0], ["Wicked!", ""], COHERENCY, PERSONA)
    con = evaluate.judge_chats(units[0], ["Wicked!", ""], CONSISTENCY, PERSONA)
    assert len(coh) == 2 and 'Ron Weasley replies: "Wicked!"' in coh[0][0]["content"]
    assert '"(nothing)"' in coh[1][0]["content"] and "Harry Potter: Hello." in coh[0][0]["content"]
    assert "Agreeableness: +3" in con[0][0]["content"] and "Agreeableness" not in coh[0][0]["content"]
    with pytest.raises(ValueError, match="unknown placeholders \\['mood'\\]"):
        evaluate.judge_chats(units[0], ["x", "y"], "{reply} {mood}", PERSONA)
    with pytest.raises(ValueError, match="no \\{reply\\}"):
        evaluate.judge_chats(units[0], ["x", "y"], "{context}", PERSONA)


def test_expected_rating_hand_example():
    with np.errstate(divide="ignore"):  # log 0 = -inf: an option with no mass
        logp = np.log([[1, 0, 0, 0, 0], [0.25, 0.25, 0, 0, 0.5], [0.2] * 5])
    np.testing.assert_allclose(evaluate.expected_rating(logp), [1.0, 0.25 + 0.5 + 2.5, 3.0])
    with pytest.raises(ValueError):
        evaluate.expected_rating(np.zeros((2, 4)))


def test_trait_agreement_hand_example():
    prompted = np.array([[3, 0, -2, 1, 0], [-1, 0, 2, 1, 0], [2, 0, -4, -3, 0]], float)
    p_high = np.array([[0.9, 0.5, 0.2, 0.6, 0.5], [0.3, 0.1, 0.4, 0.4, 0.5], [0.4, 0.7, 0.1, 0.45, 0.5]])
    out = evaluate.trait_agreement(prompted, p_high)
    assert out["O"]["sign_accuracy"] == pytest.approx(2 / 3) and out["O"]["n"] == 3
    assert np.isnan(out["C"]["sign_accuracy"]) and out["C"]["n"] == 0  # never prompted away from 0
    assert out["E"]["sign_accuracy"] == pytest.approx(2 / 3)  # 0.4 for +2 is on the low side
    assert out["A"]["sign_accuracy"] == pytest.approx(2 / 3)
    assert np.isnan(out["N"]["r"])  # constant prompted score
    assert out["O"]["r"] == pytest.approx(np.corrcoef(prompted[:, 0], p_high[:, 0])[0, 1])
    # a calibrated threshold moves the cut: at 0.35 the 0.4 of unit 2 reads high, matching its +2
    assert evaluate.trait_agreement(prompted, p_high, [0.5, 0.5, 0.35, 0.5, 0.5])["E"]["sign_accuracy"] == 1.0
    with pytest.raises(ValueError):
        evaluate.trait_agreement(prompted, p_high[:2])


class _Assessor:
    """A teacher stand-in that scores every trait +2 in JSON, but answers one sample's Openness with prose."""

    name = "assessor"

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, sampling):
        self.calls += len(prompts)
        return ["I cannot say." if "Sorry about that" in m[0]["content"] and "Openness" in m[0]["content"]
                else json.dumps({"analysis": "Facet by facet.", "result": 2}) for m in prompts]


def test_assess_samples_by_teacher_counts_a_reply_that_never_parses_and_resumes(tmp_path):
    settings = {"backend": "openai", "max_words": 100, "batch_size": 4, "repeats": 1, "temperature": 0.0, "top_p": 1.0,
                "max_new_tokens": 50, "seed": 0, "max_repairs": 1}
    samples = [_sample("x", [("Harry Potter", "Hi."), ("Ron Weasley", "Hello.")]),
               _sample("y", [("Harry Potter", "Hi."), ("Ron Weasley", "Sorry about that.")])]
    template = (ROOT / "params/prompts/dpg_assess_vanilla.txt").read_text()
    out, rej = tmp_path / "s.jsonl", tmp_path / "s_rejects.jsonl"
    teacher = _Assessor()
    rows, stats = label.assess_samples(samples, template, None, settings, out, rej, teacher=teacher)
    assert len(rows) == 9 and set(rows["score"]) == {2} and stats["rejects"] == 1
    assert list(stats["reject_reasons"].values()) == [1]
    table = label.score_table(rows).set_index("sample_id")
    assert np.isnan(table.loc["y", "O"]) and table.loc["x", "O"] == 2
    asked = teacher.calls
    again, stats2 = label.assess_samples(samples, template, None, settings, out, rej, teacher=_Assessor())
    assert len(again) == 9 and stats2["runs"][0]["skipped"] == 10 and asked == 10 + 1  # one repair round
    with pytest.raises(ValueError, match="needs a teacher"):
        label.assess_samples(samples, template, None, settings, tmp_path / "z.jsonl", rej)
    with pytest.raises(ValueError, match="no samples"):
        label.assess_samples([], template, None, settings, out, rej, teacher=teacher)


def test_assess_samples_by_loglik_writes_once_and_reads_back(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)
    settings = {"backend": "loglik", "max_words": 50, "batch_size": 4}
    template = (ROOT / "params/prompts/dpg_assess_vanilla.txt").read_text()
    samples = [_sample("x", [("Harry Potter", "Hi."), ("Ron Weasley", "Hello.")])]
    out = tmp_path / "s.jsonl"
    rows, stats = label.assess_samples(samples, template, None, settings, out, tmp_path / "r.jsonl",
                                       model=model, tokenizer=tok)
    assert len(rows) == 5 and stats["prompts"] == 5 and out.exists() and not out.with_suffix(".tmp").exists()
    expected, _ = label.loglik_scores(model, tok, [label.assessment_chats(samples[0], t, template, answer="score")
                                                  for t in TRAITS])
    np.testing.assert_allclose(rows["score"], expected, atol=1e-6)
    back, stats = label.assess_samples(samples, template, None, settings, out, tmp_path / "r.jsonl",
                                       model=model, tokenizer=tok)
    assert stats == {"kept": True} and back["score"].tolist() == pytest.approx(rows["score"].tolist())
    with pytest.raises(ValueError, match="needs the model"):
        label.assess_samples(samples, template, None, settings, tmp_path / "q.jsonl", tmp_path / "r.jsonl")
