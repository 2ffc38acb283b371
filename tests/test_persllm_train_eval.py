"""PersLLM training rows, stage tokens and preference pairs (lib/persllm/personify.py) on a tiny random-init Llama,
and the evaluation helpers (lib/persllm/evaluate.py): requests, distinction BLEU, summaries and the judge readings."""
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib.persllm import data, evaluate, personify

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = (ROOT / "params/prompts/persllm_system.txt").read_text()
STAGES = data.check_stages([
    {"name": "early", "token": "<TIME-I>", "films": [1, 2, 3, 4], "time": "the first films", "init": "early years"},
    {"name": "late", "token": "<TIME-II>", "films": [5, 6, 7, 8], "time": "the last films", "init": "later years"}])
TOKENS = [s["token"] for s in STAGES]


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture
def tiny(tiny_llama_dir):
    """A fresh (model, tokenizer) per test: add_stage_tokens changes both."""
    return _load(tiny_llama_dir)


def _ans(tag):
    return {"analysis": f"a {tag}", "response": f"r {tag}", "text": f"[Analysis] a {tag} [Response] r {tag}"}


def _item(iid, character, stage, answers, text="How was school today?", split="train"):
    name = {"harry": "Harry Potter", "ron": "Ron Weasley", "hermione": "Hermione Granger"}[character]
    return {"id": iid, "character": character, "name": name, "stage": stage, "type": "question", "stance": None,
            "source": "s", "input": text, "answers": {st: _ans(t) for st, t in answers.items()}, "split": split}


# --------------------------------------------------------------------------------------------- stage tokens

def test_stage_token_and_unknown_stage():
    assert personify.stage_token(STAGES, "late") == "<TIME-II>"
    with pytest.raises(KeyError, match=r"'middle'.*\('early', '<TIME-I>'\), \('late', '<TIME-II>'\)"):
        personify.stage_token(STAGES, "middle")


def test_add_stage_tokens_adds_special_single_id_tokens_initialised_from_words(tiny):
    import torch

    model, tok = tiny
    before = model.get_input_embeddings().weight.detach().clone()
    n = len(tok)
    ids = personify.add_stage_tokens(model, tok, STAGES)
    assert ids == [n, n + 1] and len(tok) == n + 2
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == n + 2 and model.get_output_embeddings().weight.shape[0] == n + 2
    assert torch.equal(emb[:n], before)  # the old rows are untouched
    for st, new_id in zip(STAGES, ids):
        assert tok.added_tokens_decoder[new_id].special
        assert tok(f"{st['token']} How are you?", add_special_tokens=False)["input_ids"][0] == new_id
        words = tok(" " + st["init"], add_special_tokens=False)["input_ids"]
        assert torch.allclose(emb[new_id], before[words].mean(0))
        assert torch.equal(model.get_output_embeddings().weight[new_id], emb[new_id])  # tied
    assert not torch.allclose(emb[ids[0]], emb[ids[1]])  # the stages differ from the first step
    assert personify.check_stage_tokens(tok, TOKENS) == ids
    assert tok.decode([ids[0], *tok("hello", add_special_tokens=False)["input_ids"]], skip_special_tokens=True) \
        == "hello"


def test_add_stage_tokens_is_deterministic_and_refuses_a_second_time(tiny_llama_dir):
    import torch

    (m1, t1), (m2, t2) = _load(tiny_llama_dir), _load(tiny_llama_dir)
    ids = personify.add_stage_tokens(m1, t1, STAGES)
    assert personify.add_stage_tokens(m2, t2, STAGES) == ids
    assert torch.equal(m1.get_input_embeddings().weight, m2.get_input_embeddings().weight)
    with pytest.raises(ValueError, match=r"\['<TIME-I>', '<TIME-II>'\] are already in the tokenizer"):
        personify.add_stage_tokens(m1, t1, STAGES)


def test_add_stage_tokens_sets_untied_output_rows_from_the_output_matrix(tiny_llama_dir):
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_llama_dir)
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    model, tok = LlamaForCausalLM(config).eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)
    out_before = model.get_output_embeddings().weight.detach().clone()
    in_before = model.get_input_embeddings().weight.detach().clone()
    assert not torch.equal(out_before, in_before)
    ids = personify.add_stage_tokens(model, tok, STAGES)
    for st, new_id in zip(STAGES, ids):
        words = tok(" " + st["init"], add_special_tokens=False)["input_ids"]
        assert torch.allclose(model.get_output_embeddings().weight[new_id], out_before[words].mean(0))
        assert torch.allclose(model.get_input_embeddings().weight[new_id], in_before[words].mean(0))


def test_check_stage_tokens_rejects_missing_and_split_tokens(tiny):
    _, tok = tiny
    with pytest.raises(ValueError, match="'<TIME-I>' is not in the tokenizer"):
        personify.check_stage_tokens(tok, ["<TIME-I>"])
    word = next(w for w in tok.get_vocab() if w.startswith("\u0120") and len(w) > 3)  # a byte-level vocab entry
    with pytest.raises(ValueError, match="is split into"):
        personify.check_stage_tokens(tok, [word])


def test_personified_base_saves_and_reloads_with_the_tokens(tiny_llama_dir, tmp_path):
    import torch

    ids = personify.save_personified_base(tiny_llama_dir, STAGES, tmp_path / "base")
    model, tok = _load(tmp_path / "base")
    assert personify.check_stage_tokens(tok, TOKENS) == ids
    fresh, _, fresh_ids = personify.personified_base(tiny_llama_dir, STAGES)
    assert fresh_ids == ids
    assert torch.equal(model.get_input_embeddings().weight, fresh.get_input_embeddings().weight)


def test_personified_model_pads_left_and_needs_adapter_files(tiny_llama_dir, tmp_path):
    model, tok = personify.personified_model(tiny_llama_dir, STAGES)
    assert tok.padding_side == "left" and tok.pad_token is not None and not model.training
    assert model.generation_config.pad_token_id is not None
    assert personify.check_stage_tokens(tok, TOKENS) == [len(tok) - 2, len(tok) - 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no adapter"):
        personify.personified_model(tiny_llama_dir, STAGES, adapters=[tmp_path / "empty"])


# --------------------------------------------------------------------------------------------- rows and pairs

def test_sft_rows_one_per_answered_stage():
    items = [_item("h1", "harry", "early", {"early": "e", "late": "l"}), _item("r1", "ron", "late", {"late": "x"})]
    rows = personify.sft_rows(items, STAGES, SYSTEM)
    assert [r["id"] for r in rows] == ["h1@early", "h1@late", "r1@late"]
    first = rows[0]
    assert first["prompt"][0] == {"role": "system", "content": SYSTEM.format(name="Harry Potter")}
    assert "Harry Potter" in first["prompt"][0]["content"]
    assert first["prompt"][1] == {"role": "user", "content": "<TIME-I> How was school today?"}
    assert rows[1]["prompt"][1]["content"].startswith("<TIME-II> ")
    assert first["completion"] == [{"role": "assistant", "content": "[Analysis] a e [Response] r e"}]
    assert (first["character"], first["stage"], first["type"]) == ("harry", "early", "question")
    with pytest.raises(KeyError, match="unknown stage 'middle'"):
        personify.sft_rows([_item("x", "ron", "early", {"middle": "m"})], STAGES, SYSTEM)


def test_with_stage_swaps_the_token_only():
    row = personify.sft_rows([_item("h1", "harry", "early", {"early": "e"})], STAGES, SYSTEM)[0]
    late = personify.with_stage(row, "late", STAGES)
    assert late["prompt"][1]["content"] == "<TIME-II> How was school today?" and late["stage"] == "late"
    assert late["prompt"][0] == row["prompt"][0] and late["completion"] == row["completion"]
    assert row["prompt"][1]["content"].startswith("<TIME-I> ") and row["stage"] == "early"  # not modified
    assert personify.with_stage(late, "early", STAGES)["prompt"] == row["prompt"]
    with pytest.raises(ValueError, match="does not start with a stage token"):
        personify.with_stage({**row, "prompt": [row["prompt"][0], {"role": "user", "content": "Hi there"}]}, "late",
                             STAGES)
    with pytest.raises(KeyError):
        personify.with_stage(row, "middle", STAGES)


def _pool():
    """Harry's input at 0 degrees (answered in both stages); Ron's at 5 and 25; Hermione's at 90 (late only)."""
    items = [_item("h", "harry", "early", {"early": "h-e", "late": "h-l"}),
             _item("r1", "ron", "early", {"early": "r1-e"}),
             _item("r2", "ron", "early", {"early": "r2-e", "late": "r2-l"}),
             _item("m", "hermione", "late", {"late": "m-l"}),
             _item("h2", "harry", "early", {"early": "h2-e"})]
    vecs = np.array([[1.0, 0.0], [math.cos(0.09), math.sin(0.09)], [math.cos(0.44), math.sin(0.44)], [0.0, 1.0],
                     [1.0, 0.0]])
    return items, vecs


def test_dpo_pairs_reject_another_characters_answer_past_the_nearest():
    items, vecs = _pool()
    pairs, drops = personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=1)
    char = {p["stage"]: p for p in pairs if p["kind"] == "character"}
    # r1 (the nearest other character) is skipped, h2 is Harry's own; r2 answers in the chosen stage where it can
    assert char["early"]["rejected_from"] == "r2" and char["early"]["rejected"][0]["content"] == _ans("r2-e")["text"]
    assert char["late"]["rejected"][0]["content"] == _ans("r2-l")["text"]
    assert char["early"]["chosen"] == [{"role": "assistant", "content": _ans("h-e")["text"]}]
    assert char["late"]["prompt"][1]["content"].startswith("<TIME-II> ") and char["late"]["id"] == "h@late-char"
    assert all(p["rejected_character"] != "harry" for p in char.values())
    assert drops == Counter()
    nearest, _ = personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=0)
    by_stage = {p["stage"]: p for p in nearest if p["kind"] == "character"}
    assert by_stage["early"]["rejected_from"] == "r1"
    assert by_stage["late"]["rejected"][0]["content"] == _ans("r1-e")["text"]  # r1 has no late answer: its own


def test_dpo_pairs_skip_a_neighbour_with_the_same_text_and_count_missing_ones():
    items, vecs = _pool()
    items[2]["answers"]["early"] = _ans("h-e")  # r2's early answer equals the chosen one
    pairs, _ = personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=1)
    early = next(p for p in pairs if p["kind"] == "character" and p["stage"] == "early")
    assert early["rejected_from"] == "m" and early["rejected"][0]["content"] == _ans("m-l")["text"]
    pairs, drops = personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=3)
    assert drops == Counter({"no_neighbour_from_other_character": 2})
    assert {p["kind"] for p in pairs} == {"stage"}  # the stage pairs are still made
    alone = [_item("h", "harry", "early", {"early": "x"}), _item("h2", "harry", "early", {"early": "y"})]
    pairs, drops = personify.dpo_pairs(alone[:1], vecs[:1], alone, vecs[:2], STAGES, SYSTEM, skip_nearest=0)
    assert pairs == [] and drops == Counter({"no_neighbour_from_other_character": 1})


def test_dpo_stage_pairs_only_with_two_different_stage_answers():
    items, vecs = _pool()
    pairs, _ = personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=1)
    stage = {p["id"]: p for p in pairs if p["kind"] == "stage"}
    assert set(stage) == {"h@early-stage-late", "h@late-stage-early"}
    p = stage["h@early-stage-late"]
    assert p["chosen"][0]["content"] == _ans("h-e")["text"] and p["rejected"][0]["content"] == _ans("h-l")["text"]
    assert p["prompt"][1]["content"].startswith("<TIME-I> ") and p["rejected_from"] == "h@late"
    assert stage["h@late-stage-early"]["prompt"][1]["content"].startswith("<TIME-II> ")
    one_stage, _ = personify.dpo_pairs(items[1:2], vecs[1:2], items, vecs, STAGES, SYSTEM, skip_nearest=0)
    assert [p["kind"] for p in one_stage] == ["character"]
    off, _ = personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=1, stage_pairs=False)
    assert {p["kind"] for p in off} == {"character"}
    items[0]["answers"]["late"] = dict(items[0]["answers"]["early"])
    same, drops = personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=1)
    assert all(p["kind"] == "character" for p in same) and drops["same_answer_in_both_stages"] == 2


def test_dpo_pairs_check_their_arguments():
    items, vecs = _pool()
    with pytest.raises(ValueError, match="1 items / 2 vectors"):
        personify.dpo_pairs(items[:1], vecs[:2], items, vecs, STAGES, SYSTEM)
    with pytest.raises(ValueError, match="5 pool / 4"):
        personify.dpo_pairs(items[:1], vecs[:1], items, vecs[:4], STAGES, SYSTEM)
    with pytest.raises(ValueError, match="skip_nearest must be >= 0"):
        personify.dpo_pairs(items[:1], vecs[:1], items, vecs, STAGES, SYSTEM, skip_nearest=-1)


def test_answer_nll_is_finite_per_row_and_independent_of_batching(tiny):
    import torch

    from lib.train import render_rows

    model, tok = tiny
    personify.add_stage_tokens(model, tok, STAGES)
    items = [_item("h1", "harry", "early", {"early": "e", "late": "a much longer answer about the walk by the river"}),
             _item("r1", "ron", "late", {"late": "x"}, text="Why?")]
    rows = personify.sft_rows(items, STAGES, SYSTEM)
    nll = personify.answer_nll(model, tok, rows, batch_size=8)
    assert len(nll) == 3 and all(math.isfinite(x) and x > 0 for x in nll)
    assert np.allclose(nll, personify.answer_nll(model, tok, rows, batch_size=1), atol=1e-4)
    # the last row by hand: the mean -log p of its completion tokens after the prompt
    r = render_rows(rows[2:], tok)[0]
    p, a = (tok(r[k], add_special_tokens=False)["input_ids"] for k in ("prompt", "completion"))
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([p + a])).logits[0].float(), -1)
    manual = -np.mean([logp[len(p) - 1 + t, tok_id].item() for t, tok_id in enumerate(a)])
    assert nll[2] == pytest.approx(manual, abs=1e-4)
    assert personify.answer_nll(model, tok, []) == []


# --------------------------------------------------------------------------------------------- evaluation

NAMES = {"harry": "Harry Potter", "ron": "Ron Weasley", "hermione": "Hermione Granger", "petunia": "Petunia Dursley"}
AVAILABLE = {"harry": {"early", "late"}, "ron": {"early"}, "hermione": {"late"}, "petunia": {"early"}}


def test_requests_roles_and_counts():
    items = [_item("h1", "harry", "early", {"early": "e"}), _item("r1", "ron", "early", {"early": "e"})]
    reqs = evaluate.requests(items, NAMES, AVAILABLE, STAGES, n_samples=3)
    h = Counter((r["role"], r["character"], r["stage"]) for r in reqs if r["item"] == "h1")
    assert h == {("own", "harry", "early"): 3, ("stage", "harry", "late"): 1, ("inter", "ron", "early"): 1,
                 ("inter", "petunia", "early"): 1}  # hermione has no early material
    r = Counter((q["role"], q["character"], q["stage"]) for q in reqs if q["item"] == "r1")
    assert r == {("own", "ron", "early"): 3, ("inter", "harry", "early"): 1, ("inter", "petunia", "early"): 1}
    assert len({q["id"] for q in reqs}) == len(reqs) == 11
    own = [q for q in reqs if q["item"] == "h1" and q["role"] == "own"]
    assert [q["sample"] for q in own] == [0, 1, 2]
    inter = next(q for q in reqs if q["role"] == "inter" and q["item"] == "h1")
    assert inter["target"] == "harry" and inter["name"] == "Ron Weasley" and inter["input"] == "How was school today?"
    assert inter["id"] == "h1|inter|ron|early|0"
    assert len(evaluate.requests(items, NAMES, AVAILABLE, STAGES)) == 9
    with pytest.raises(ValueError, match="n_samples must be >= 2"):
        evaluate.requests(items, NAMES, AVAILABLE, STAGES, n_samples=1)
    chat = evaluate.request_chat(inter, STAGES, SYSTEM)
    assert chat[0]["content"] == SYSTEM.format(name="Ron Weasley") and chat[1]["content"].startswith("<TIME-I> ")


def test_sample_items_round_robin_over_characters_and_seeded():
    items = ([_item(f"h{i}", "harry", "early", {}) for i in range(10)] + [_item("r0", "ron", "early", {}),
             _item("r1", "ron", "early", {})] + [_item("m0", "hermione", "late", {})])
    picked = evaluate.sample_items(items, 5, seed=0)
    assert Counter(it["character"] for it in picked) == {"harry": 2, "ron": 2, "hermione": 1}
    assert [it["id"] for it in picked] == [it["id"] for it in items if it in picked]  # in the items' order
    assert picked == evaluate.sample_items(items, 5, seed=0)
    seeds = {tuple(it["id"] for it in evaluate.sample_items(items, 5, seed=s)) for s in range(6)}
    assert len(seeds) > 1
    assert evaluate.sample_items(items, None) == items and evaluate.sample_items(items, 13) == items
    assert len(evaluate.sample_items(items, 12)) == 12


def _replies(rows):
    cols = ["model", "item", "target", "role", "character", "stage", "sample", "reply"]
    return pd.DataFrame(rows, columns=cols)


SENT = "the cat sat on the mat by the door today"
OTHER = "quidditch brooms fly over seven towers"


def test_distinction_rows_intra_stage_and_inter():
    df = _replies([("sft", "i1", "harry", "own", "harry", "early", 1, SENT),
                   ("sft", "i1", "harry", "own", "harry", "early", 0, SENT),
                   ("sft", "i1", "harry", "stage", "harry", "late", 0, OTHER),
                   ("sft", "i1", "harry", "inter", "ron", "early", 0, SENT),
                   ("sft", "i1", "harry", "inter", "petunia", "early", 0, OTHER),
                   ("dpo", "i1", "harry", "own", "harry", "early", 0, SENT),
                   ("dpo", "i1", "harry", "own", "harry", "early", 1, OTHER)])
    out = evaluate.distinction_rows(df)
    got = {(r["model"], r["kind"]): r for r in out.to_dict("records")}
    assert set(got) == {("sft", "intra"), ("sft", "stage"), ("sft", "inter"), ("dpo", "intra")}
    assert got[("sft", "intra")]["bleu"] == pytest.approx(100)
    assert got[("sft", "stage")]["bleu"] < 1 and got[("dpo", "intra")]["bleu"] < 1
    inter = got[("sft", "inter")]
    assert inter["n"] == 2 and inter["bleu"] == pytest.approx(
        (evaluate.sentence_bleu(SENT, SENT) + evaluate.sentence_bleu(SENT, OTHER)) / 2)
    assert all(r["character"] == "harry" for r in got.values())


def test_distinction_rows_hypothesis_is_the_first_sample():
    df = _replies([("m", "i", "ron", "own", "ron", "late", 1, OTHER), ("m", "i", "ron", "own", "ron", "late", 0, SENT),
                   ("m", "i", "ron", "stage", "ron", "early", 0, SENT)])
    got = evaluate.distinction_rows(df).set_index("kind")["bleu"]
    assert got["stage"] == pytest.approx(100) and got["intra"] < 1


def test_distinction_rows_check_their_input():
    with pytest.raises(ValueError, match=r"m/i: 1 own samples"):
        evaluate.distinction_rows(_replies([("m", "i", "ron", "own", "ron", "late", 0, SENT),
                                            ("m", "i", "ron", "stage", "ron", "early", 0, SENT)]))
    with pytest.raises(ValueError, match=r"lack columns \['reply', 'sample'\]"):
        evaluate.distinction_rows(_replies([]).drop(columns=["reply", "sample"]))


def test_response_part():
    assert evaluate.response_part("[Analysis] hm [Response] Yes, sir.") == ("Yes, sir.", True)
    assert evaluate.response_part("just  talking") == ("just talking", False)
    assert evaluate.response_part("[Analysis] a [Response]  ") == ("[Analysis] a", False)


def _bleu_rows(values, model="m", kind="intra"):
    return pd.DataFrame([{"model": model, "item": f"{c}{i}", "character": c, "kind": kind, "bleu": v}
                         for c, vs in values.items() for i, v in enumerate(vs)])


def test_summarize_averages_characters_first_and_resamples_within_them():
    rows = pd.concat([_bleu_rows({"a": [0, 10, 20], "b": [90]}), _bleu_rows({"a": [5, 5]}, kind="inter")])
    assert rows["bleu"][rows["kind"] == "intra"].mean() == 30  # the item mean
    out = evaluate.summarize(rows, n_resamples=500, seed=0)
    intra = out["m"]["intra"]
    assert intra["mean"] == pytest.approx(50) and intra["n"] == 4
    # b keeps its one input, so every replicate is (mean of a's resample + 90) / 2, within [45, 55]
    assert 45 <= intra["lo"] <= 50 <= intra["hi"] <= 55 and intra["lo"] < intra["hi"]
    assert out["m"]["inter"] == {"mean": 5.0, "lo": 5.0, "hi": 5.0, "n": 2}
    assert out == evaluate.summarize(rows, n_resamples=500, seed=0)
    assert evaluate.character_mean(rows[rows["kind"] == "intra"]) == pytest.approx(50)
    assert math.isnan(evaluate.character_mean(rows.iloc[:0]))


def test_paired_difference_sign_and_missing_model():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 50, 30)
    rows = pd.concat([_bleu_rows({"a": list(base)}, model="sft"),
                      _bleu_rows({"a": list(base + 5 + rng.normal(0, 1, 30))}, model="dpo")])
    d = evaluate.paired_difference(rows, "dpo", "sft", "intra", n_resamples=500)
    assert d["n"] == 30 and d["lo"] <= d["mean"] <= d["hi"] and d["lo"] > 3
    back = evaluate.paired_difference(rows, "sft", "dpo", "intra", n_resamples=500)
    assert back["mean"] == pytest.approx(-d["mean"]) and back["hi"] < -3
    assert evaluate.paired_difference(rows, "dpo", "base", "intra") == {"mean": None, "lo": None, "hi": None, "n": 0}
    assert evaluate.paired_difference(rows, "dpo", "sft", "inter")["n"] == 0
    # only inputs both models answered are paired
    fewer = rows[~((rows["model"] == "sft") & (rows["item"] == "a0"))]
    assert evaluate.paired_difference(fewer, "dpo", "sft", "intra", n_resamples=10)["n"] == 29


def test_yes_probability():
    logp = np.array([[math.log(0.3), math.log(0.1)], [0.0, 0.0], [-1e4, -1e4 - math.log(3)], [-1e3, 0.0]])
    p = evaluate.yes_probability(logp)
    assert p.shape == (4,) and np.allclose(p, [0.75, 0.5, 0.75, 0.0], atol=1e-9)
    for bad in (np.zeros((2, 3)), np.zeros(2)):
        with pytest.raises(ValueError, match="expected n x 2"):
            evaluate.yes_probability(bad)


def test_expected_rating():
    uniform = evaluate.expected_rating(np.zeros((2, 6)))
    assert uniform.shape == (2,) and np.allclose(uniform, 2.5)
    peaked = np.full((1, 6), -1e3)
    peaked[0, 4] = 0.0
    assert evaluate.expected_rating(peaked) == pytest.approx([4.0])
    two = np.log([[0.25, 0.75]])
    assert evaluate.expected_rating(two + 500, values=(1, 5)) == pytest.approx([4.0])
    with pytest.raises(ValueError, match="n x 6"):
        evaluate.expected_rating(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="n x 2"):
        evaluate.expected_rating(np.zeros((1, 6)), values=(0, 1))


def test_judge_chat_fills_the_template():
    chat = evaluate.judge_chat("{name} said {reply}?", name="Ron", reply="no")
    assert chat == [{"role": "user", "content": "Ron said no?"}]


def test_sample_items_refuses_repeated_ids():
    items = [{"id": "a", "character": "x"}, {"id": "a", "character": "y"}, {"id": "b", "character": "x"}]
    with pytest.raises(ValueError, match="repeated item ids"):
        evaluate.sample_items(items, 2, seed=0)


# --------------------------------------------------------------------------------------------- the training mix
# persLLM_documentation.pdf: the personified data repeated 5 times and mixed with general instruction-tuning data
# for one epoch; full fine-tuning (which one GPU cannot hold for the 8B student)

def test_check_tuning_passes_lora_and_stops_full_with_the_reason():
    assert personify.check_tuning("lora") == "lora"
    with pytest.raises(NotImplementedError) as err:
        personify.check_tuning("full")
    message = str(err.value)
    assert "sft.persllm.tuning: full" in message and "LoRA adapters only" in message
    assert "~128 GB" in message and "80 GB" in message and "multi-GPU" in message
    assert "set sft.persllm.tuning: lora" in message
    assert "~16 GB" in str(pytest.raises(NotImplementedError, personify.check_tuning, "full", 1e9).value)
    with pytest.raises(ValueError, match=r"expected one of \('lora', 'full'\)"):
        personify.check_tuning("qlora")


def test_general_source_needs_exactly_one_of_dataset_and_standin():
    assert personify.general_source({"dataset": "hf://datasets/a/b/c.parquet", "standin": None}) == \
        ("dataset", "hf://datasets/a/b/c.parquet")
    assert personify.general_source({"dataset": None, "standin": "x.jsonl"}) == ("standin", "x.jsonl")
    for bad in ({"dataset": None, "standin": None}, {"dataset": "a", "standin": "b"}):
        with pytest.raises(ValueError, match="set exactly one of dataset"):
            personify.general_source(bad)


def _conv(*turns):
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def test_read_conversations_reads_ultrachat_parquet_and_json_lines(tmp_path):
    import json

    convs = [_conv("Hi?", "Hello."), _conv("Q1", "A1", "Q2", "A2")]
    pq = tmp_path / "train_sft-00000-of-00003.parquet"
    pd.DataFrame({"prompt": ["Hi?", "Q1"], "prompt_id": ["a", "b"], "messages": convs}).to_parquet(pq)
    assert personify.read_conversations(pq) == convs
    jl = tmp_path / "g.jsonl"
    jl.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs) + "\n")
    assert personify.read_conversations(jl) == convs
    js = tmp_path / "g.json"
    js.write_text(json.dumps([{"messages": c} for c in convs]))
    assert personify.read_conversations(js) == convs
    jl.write_text(json.dumps({"text": "no messages"}) + "\n")
    with pytest.raises(ValueError, match=r"records \[0\] have no 'messages'"):
        personify.read_conversations(jl)


def test_general_rows_first_turns_and_counted_drops():
    convs = [_conv("Q1", "A1", "Q2", "A2"),
             [{"role": "system", "content": "be nice"}, *_conv("Qs", "As")],
             _conv("lonely question"),
             [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}],
             _conv("Q", "  ")]
    rows, drops = personify.general_rows(convs, max_turns=1)
    assert [r["id"] for r in rows] == ["general-0", "general-1"]
    assert rows[0] == {"id": "general-0", "kind": "general", "prompt": [{"role": "user", "content": "Q1"}],
                       "completion": [{"role": "assistant", "content": "A1"}]}
    assert rows[1]["prompt"] == [{"role": "user", "content": "Qs"}]  # no system prompt: the model as itself
    assert drops == Counter({"no_reply": 1, "not_alternating": 1, "empty_turn": 1})
    whole, _ = personify.general_rows(convs[:1], max_turns=None)
    assert [m["content"] for m in whole[0]["prompt"]] == ["Q1", "A1", "Q2"] and whole[0]["completion"][0]["content"] == "A2"
    with pytest.raises(ValueError, match="max_turns must be >= 1"):
        personify.general_rows(convs, max_turns=0)


def _general(n):
    return [{"id": f"general-{i}", "kind": "general", "prompt": [{"role": "user", "content": f"q{i}"}],
             "completion": [{"role": "assistant", "content": f"a{i}"}]} for i in range(n)]


def test_mix_general_repeats_the_personified_rows_and_mixes_the_share():
    pers = personify.sft_rows([_item(f"h{i}", "harry", "early", {"early": str(i)}) for i in range(6)], STAGES, SYSTEM)
    mixed, rep = personify.mix_general(pers, _general(100), repeat=5, share=0.7, seed=0)
    assert rep["personified_rows"] == 6 and rep["personified_rows_repeated"] == 30 and rep["repeat"] == 5
    assert rep["general_rows"] == 70 and rep["general_unique_rows"] == 70 and rep["general_available"] == 100
    assert len(mixed) == 100 and rep["general_share"] == pytest.approx(0.7)
    assert Counter(r["id"] for r in mixed if r.get("kind") != "general") == {r["id"]: 5 for r in pers}
    assert sorted(r["repeat"] for r in mixed if r["id"] == "h0@early") == [0, 1, 2, 3, 4]
    assert sum(r.get("kind") == "general" for r in mixed) == 70
    # seeded: the same mix again, another with another seed
    assert personify.mix_general(pers, _general(100), 5, 0.7, seed=0)[0] == mixed
    assert personify.mix_general(pers, _general(100), 5, 0.7, seed=1)[0] != mixed
    # the rows are what lib.train takes: prompt + completion of assistant messages
    from lib.train import check_rows

    assert len(check_rows(mixed, "train")) == 100


def test_mix_general_without_share_is_the_repetition_alone_and_a_small_share_gives_at_least_one_row():
    pers = personify.sft_rows([_item("h", "harry", "early", {"early": "e"})], STAGES, SYSTEM)
    alone, rep = personify.mix_general(pers, [], repeat=1, share=0.0)
    assert [r["id"] for r in alone] == ["h@early"] and rep["general_rows"] == 0 and rep["general_share"] == 0
    one, rep = personify.mix_general(pers, _general(3), repeat=1, share=0.01)
    assert rep["general_rows"] == 1 and len(one) == 2


def test_mix_general_cycles_a_small_dataset_and_says_so(caplog):
    pers = personify.sft_rows([_item(f"h{i}", "harry", "early", {"early": str(i)}) for i in range(10)], STAGES, SYSTEM)
    mixed, rep = personify.mix_general(pers, _general(3), repeat=1, share=0.5)
    assert rep["general_rows"] == 10 and rep["general_unique_rows"] == 3
    # three full passes over the three rows, then one more: each row 3 or 4 times, never one row many times
    assert sorted(Counter(r["id"] for r in mixed if r.get("kind") == "general").values()) == [3, 3, 4]
    assert "each is used up to 4 times" in caplog.text


def test_mix_general_checks_its_arguments():
    pers = personify.sft_rows([_item("h", "harry", "early", {"early": "e"})], STAGES, SYSTEM)
    for repeat in (0, 1.5, True):
        with pytest.raises(ValueError, match="repeat must be an integer >= 1"):
            personify.mix_general(pers, _general(2), repeat=repeat)
    for share in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"share must be in \[0, 1\)"):
            personify.mix_general(pers, _general(2), share=share)
    with pytest.raises(ValueError, match="asks for 1 general rows, but the general dataset gave none"):
        personify.mix_general(pers, [], share=0.5)


def test_the_offline_stand_in_is_a_handful_of_valid_instruction_pairs():
    path = ROOT / "lib/persllm/general_instructions.jsonl"
    rows, drops = personify.general_rows(personify.read_conversations(path), max_turns=1)
    assert 10 <= len(rows) <= 40 and not drops
    assert all(len(r["prompt"]) == 1 and r["completion"][0]["content"].strip() for r in rows)


def test_the_profiles_carry_the_documented_recipe():
    from lib import config

    paper = config.load("paper", check_files=False)
    sft, label = paper["sft"]["persllm"], paper["label"]["persllm"]
    args = sft["args"]
    assert sft["repeat"] == 5 and args["num_train_epochs"] == 1 and sft["max_seq_length"] == 3000
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 16
    assert (args["learning_rate"], args["warmup_steps"], args["weight_decay"]) == (2e-5, 50, 0.1)
    assert sft["tuning"] == "lora"  # full fine-tuning of the 8B student does not fit one GPU (check_tuning)
    assert personify.general_source(sft["general"])[1].startswith("hf://datasets/HuggingFaceH4/ultrachat_200k/")
    assert 0 < sft["general"]["share"] < 1
    assert label["encoder"] == "sentence-transformers/gtr-t5-base"
    assert (label["knowledge_words"], label["style_words"]) == (1500, 500)
    assert label["examples_template"] and label["error_note_template"]
    for profile in ("cpu", "tiny"):
        p = config.load(profile)["sft"]["persllm"]
        assert personify.general_source(p["general"])[0] == "standin" and p["general"]["share"] > 0
        assert config.load(profile)["label"]["persllm"]["encoder"] == "package:minilm"  # offline
