"""lib.dpg.hypernet on the micro Llama: per-sample LoRA equals peft's, only the hypernetwork trains, resume, errors."""
import copy

import pytest
import torch

from lib.dpg import hypernet as hn

TARGETS = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def base(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama_dir)


def _ids(tok, texts):
    tok.padding_side = "right"
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def _peft(model, name_seed: dict[str, int], r=4, alpha=8):
    """A PeftModel over a copy of `model` with one random (non-zero B) LoRA adapter per name."""
    from peft import LoraConfig, get_peft_model

    peft_model = None
    for name, seed in name_seed.items():
        torch.manual_seed(seed)
        cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
        if peft_model is None:
            peft_model = get_peft_model(copy.deepcopy(model), cfg, adapter_name=name)
        else:
            peft_model.add_adapter(name, cfg)
    return peft_model.eval()


def _peft_weights(peft_model, name: str) -> dict:
    """{(layer, module): (A [r, in], B [out, r])} of one peft adapter."""
    out = {}
    for mod_name, module in peft_model.named_modules():
        leaf = mod_name.rsplit(".", 1)[-1]
        if leaf in TARGETS and hasattr(module, "lora_A"):
            layer = int(hn._LAYER_RE.search(mod_name).group(1))
            out[(layer, leaf)] = (module.lora_A[name].weight.detach().clone(),
                                  module.lora_B[name].weight.detach().clone())
    return out


def test_per_sample_lora_equals_peft_for_each_row(base):
    model, tok = base
    peft_model = _peft(model, {"one": 1, "two": 2})
    enc = _ids(tok, ["I feel calm today.", "We talked about music and friends."])
    expected = []
    for row, name in enumerate(("one", "two")):
        peft_model.set_adapter(name)
        with torch.no_grad():
            expected.append(peft_model(input_ids=enc["input_ids"][row:row + 1],
                                       attention_mask=enc["attention_mask"][row:row + 1]).logits[0])
    wa, wb = _peft_weights(peft_model, "one"), _peft_weights(peft_model, "two")
    weights = {k: (torch.stack([wa[k][0], wb[k][0]]), torch.stack([wa[k][1], wb[k][1]])) for k in wa}
    mine = copy.deepcopy(model)
    hn.attach(mine, list(weights))
    with torch.no_grad(), hn.lora_weights(mine, weights, scale=8 / 4):
        got = mine(**enc).logits
        plain = None
    with torch.no_grad():
        plain = mine(**enc).logits  # outside the block: the base again
        base_logits = model(**enc).logits
    for row in range(2):
        n = int(enc["attention_mask"][row].sum())
        torch.testing.assert_close(got[row, :n], expected[row][:n], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(got[0], got[1])  # two different LoRAs in one batch
    torch.testing.assert_close(plain, base_logits)


def test_hypernetwork_can_emit_a_given_static_lora(base):
    """Heads set so that the generated weights are exactly peft's LoRA: outputs equal peft's."""
    model, tok = base
    peft_model = _peft(model, {"one": 3})
    target = _peft_weights(peft_model, "one")
    mine = copy.deepcopy(model)
    hyper = hn.HyperLoRA.for_model(mine, TARGETS, cond_dim=model.config.hidden_size, r=4, lora_alpha=8, hidden=16,
                                   layer_dim=model.config.num_hidden_layers)
    with torch.no_grad():
        hyper.layer_emb.weight.copy_(torch.eye(model.config.num_hidden_layers))  # one-hot layer codes
        for m in TARGETS:
            for head, which in ((hyper.head_a[m], 0), (hyper.head_b[m], 1)):
                head.weight.zero_()
                head.bias.zero_()
                for layer in hyper.layers:  # the column of layer l's one-hot code holds that layer's flat factor
                    head.weight[:, 16 + layer] = target[(layer, m)][which].reshape(-1)
    hn.attach(mine, hyper.targets)
    enc = _ids(tok, ["How are you feeling?", "I wrote in my journal today."])
    with torch.no_grad():
        weights = hyper(torch.randn(2, model.config.hidden_size))
        for key, (a, b) in weights.items():
            torch.testing.assert_close(a[1], target[key][0])
            torch.testing.assert_close(b[0], target[key][1])
        with hn.lora_weights(mine, weights, hyper.scale):
            got = mine(**enc).logits
        want = peft_model(**enc).logits
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-4)


def test_fresh_hypernetwork_is_a_no_op(base):
    model, tok = base
    mine = copy.deepcopy(model)
    hyper = hn.HyperLoRA.for_model(mine, TARGETS, cond_dim=model.config.hidden_size, r=4)
    hn.attach(mine, hyper.targets)
    enc = _ids(tok, ["We talked about work."])
    with torch.no_grad(), hn.lora_weights(mine, hyper(torch.randn(1, model.config.hidden_size)), hyper.scale):
        torch.testing.assert_close(mine(**enc).logits, model(**enc).logits)


def _rows():
    user = [{"role": "user", "content": "How was your day?"}]
    return [{"sample_id": f"s{i}", "prompt": [{"role": "system", "content": persona}, *user],
             "completion": [{"role": "assistant", "content": reply}]}
            for i, (persona, reply) in enumerate([("Extraversion 5. Harry.", "great walk with friends by the river"),
                                                  ("Extraversion -5. Snape.", "tired calm journal music alone")] * 2)]


ARGS = {"learning_rate": 5e-3, "max_steps": 6, "per_device_train_batch_size": 2, "save_steps": 2, "seed": 0,
        "logging_steps": 2}
HYPER = {"target_modules": TARGETS, "r": 4, "lora_alpha": 8, "hidden": 16, "layer_dim": 8}


def _fresh(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_llama_dir, torch_dtype=torch.float32),
            AutoTokenizer.from_pretrained(tiny_llama_dir))


def test_only_the_hypernetwork_trains(tiny_llama_dir, tmp_path):
    model, tok = _fresh(tiny_llama_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    metrics = hn.train_hypernet(model, tok, _rows(), _rows()[:2], tmp_path, HYPER, ARGS, max_seq_length=64)
    after = {k.replace(".base.", "."): v for k, v in model.state_dict().items()}
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(v, after[k]), f"base weight {k} changed"
    assert all(p.grad is None for p in model.parameters())
    trained = hn.HyperLoRA.load(tmp_path / "hypernet")
    fresh = hn.HyperLoRA.for_model(model, TARGETS, cond_dim=model.config.hidden_size,
                                   **{k: v for k, v in HYPER.items() if k != "target_modules"})
    assert not torch.equal(trained.head_b["q_proj"].weight, fresh.head_b["q_proj"].weight)  # B left zero
    assert not torch.equal(trained.head_a["v_proj"].weight, fresh.head_a["v_proj"].weight)  # A moved after B did
    assert metrics["steps"] == 6 and metrics["eval_loss"] != metrics["base_eval_loss"]


def test_learns_the_conditioning(tiny_llama_dir, tmp_path):
    """Same user turn, two personas, two replies: trained, each persona's own reply becomes likelier than the other's."""
    model, tok = _fresh(tiny_llama_dir)
    rows = _rows()[:2]
    args = ARGS | {"max_steps": 40, "learning_rate": 1e-2, "save_steps": 100}
    metrics = hn.train_hypernet(model, tok, rows, rows, tmp_path, HYPER, args, max_seq_length=64)
    hyper = hn.HyperLoRA.load(tmp_path / "hypernet")
    swapped = [dict(rows[0], completion=rows[1]["completion"]), dict(rows[1], completion=rows[0]["completion"])]
    own = hn.evaluate_loss(model, tok, hyper, hn.tokenize_rows(rows, tok, 64, False))
    other = hn.evaluate_loss(model, tok, hyper, hn.tokenize_rows(swapped, tok, 64, False))
    assert metrics["eval_loss"] < metrics["base_eval_loss"]
    assert own < other - 0.1


def test_killed_run_resumes_to_the_same_weights(tiny_llama_dir, tmp_path):
    whole, tok = _fresh(tiny_llama_dir)
    hn.train_hypernet(whole, tok, _rows(), None, tmp_path / "whole", HYPER, ARGS, max_seq_length=64)
    killed, tok = _fresh(tiny_llama_dir)
    assert hn.train_hypernet(killed, tok, _rows(), None, tmp_path / "killed", HYPER, ARGS, max_seq_length=64,
                             stop_after=3) == {"stopped_at": 3}
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == ["step-2.pt"]
    resumed, tok = _fresh(tiny_llama_dir)  # a new process: resumes from step 2
    metrics = hn.train_hypernet(resumed, tok, _rows(), None, tmp_path / "killed", HYPER, ARGS, max_seq_length=64)
    a = hn.HyperLoRA.load(tmp_path / "whole" / "hypernet").state_dict()
    b = hn.HyperLoRA.load(tmp_path / "killed" / "hypernet").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert metrics["steps"] == 6 and len(metrics["log_history"]) == 6


def test_checkpoints_are_written_whole_and_bounded(tiny_llama_dir, tmp_path):
    model, tok = _fresh(tiny_llama_dir)
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    (ckpts / "step-9.pt.partial").write_bytes(b"cut short by a kill")  # never read as a checkpoint
    hn.train_hypernet(model, tok, _rows(), None, tmp_path, HYPER, ARGS | {"save_steps": 1}, max_seq_length=64)
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["step-5.pt", "step-6.pt"]
    with pytest.raises(ValueError, match="save_total_limit must be a positive number"):
        hn.train_hypernet(model, tok, _rows(), None, tmp_path / "x", HYPER, ARGS | {"save_total_limit": 0})


def test_generate_with_a_fresh_hypernetwork_is_the_base(base):
    model, tok = base
    mine = copy.deepcopy(model)
    hyper = hn.HyperLoRA.for_model(mine, TARGETS, cond_dim=model.config.hidden_size, r=4)
    hn.attach(mine, hyper.targets)
    chats = [[{"role": "user", "content": "How are you?"}], [{"role": "user", "content": "We talked about work."}]]
    got = hn.generate(mine, tok, hyper, chats, ["Extraversion 5.", "Extraversion -5."], max_new_tokens=6)
    assert got == hn.generate(mine, tok, None, chats, None, max_new_tokens=6)
    with pytest.raises(ValueError, match="personality prompts"):
        hn.generate(mine, tok, hyper, chats, ["only one"], max_new_tokens=2)


def test_bad_input_is_named(base):
    model, tok = base
    mine = copy.deepcopy(model)
    with pytest.raises(ValueError, match="attach"), hn.lora_weights(mine, {}, 1.0):
        pass
    hyper = hn.HyperLoRA.for_model(mine, TARGETS, cond_dim=model.config.hidden_size, r=4)
    hn.attach(mine, hyper.targets)
    weights = hyper(torch.randn(1, model.config.hidden_size))
    with pytest.raises(ValueError, match="one generated LoRA per row"), hn.lora_weights(mine, weights, hyper.scale):
        mine(**_ids(tok, ["a b", "c d"]))
    with pytest.raises(ValueError, match="conditioning must be"):
        hyper(torch.randn(1, 3))
    with pytest.raises(ValueError, match="no decoder-layer linear"):
        hn.HyperLoRA.for_model(mine, ["w_proj"], cond_dim=4)
    with pytest.raises(ValueError, match="system turn"):
        hn.split_persona({"prompt": [{"role": "user", "content": "hi"}]}, False)
    with pytest.raises(ValueError, match="unknown hypernetwork training arguments"):
        hn.train_hypernet(mine, tok, _rows(), None, "/nonexistent", HYPER, ARGS | {"num_train_epochs": 1})
    with pytest.raises(FileNotFoundError, match="no trained hypernetwork"):
        hn.HyperLoRA.load("/nonexistent")


def test_normalized_conditioning_is_fit_on_the_training_prompts_and_kept(tiny_llama_dir, tmp_path):
    """normalize_cond: the training prompts' conditioning is centred and scaled per feature (floored), the statistics
    are saved with the weights and restored on resume, and the conditioning is still learnt."""
    model, tok = _fresh(tiny_llama_dir)
    rows = _rows()[:2]
    hyper_cfg = HYPER | {"normalize_cond": True}
    args = ARGS | {"max_steps": 40, "learning_rate": 1e-2, "save_steps": 100}
    metrics = hn.train_hypernet(model, tok, rows, rows, tmp_path, hyper_cfg, args, max_seq_length=64)
    hyper = hn.HyperLoRA.load(tmp_path / "hypernet")
    cond = hn.encode_prompts(model, tok, sorted({r["prompt"][0]["content"] for r in rows}))
    torch.testing.assert_close(hyper.cond_mean, cond.mean(0))
    std = cond.std(0)
    assert torch.all(hyper.cond_scale >= 0.1 * std.mean() - 1e-6) and torch.all(hyper.cond_scale >= std - 1e-6)
    swapped = [dict(rows[0], completion=rows[1]["completion"]), dict(rows[1], completion=rows[0]["completion"])]
    own = hn.evaluate_loss(model, tok, hyper, hn.tokenize_rows(rows, tok, 64, False))
    other = hn.evaluate_loss(model, tok, hyper, hn.tokenize_rows(swapped, tok, 64, False))
    assert metrics["eval_loss"] < metrics["base_eval_loss"] and own < other - 0.1
    off = hn.HyperLoRA.for_model(model, TARGETS, cond_dim=model.config.hidden_size, r=4)
    off.fit_conditioning(cond)  # without normalize_cond: the identity stays
    assert torch.equal(off.cond_mean, torch.zeros_like(off.cond_mean))
    with pytest.raises(ValueError, match="n >= 2"):
        hyper.fit_conditioning(cond[:1])
    # resumed from a checkpoint, the statistics come back with the weights
    killed, tok = _fresh(tiny_llama_dir)
    hn.train_hypernet(killed, tok, _rows(), None, tmp_path / "k", hyper_cfg, ARGS, max_seq_length=64, stop_after=3)
    resumed, tok = _fresh(tiny_llama_dir)
    hn.train_hypernet(resumed, tok, _rows(), None, tmp_path / "k", hyper_cfg, ARGS, max_seq_length=64)
    whole, tok = _fresh(tiny_llama_dir)
    hn.train_hypernet(whole, tok, _rows(), None, tmp_path / "w", hyper_cfg, ARGS, max_seq_length=64)
    a = hn.HyperLoRA.load(tmp_path / "w" / "hypernet").state_dict()
    b = hn.HyperLoRA.load(tmp_path / "k" / "hypernet").state_dict()
    assert set(a) >= {"cond_mean", "cond_scale"}
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


def test_trimmed_rows_keep_llama3s_bos(tmp_path, base):
    """Over-long prompts lose their oldest context after the template's BOS, never the BOS itself (Llama 3); ChatML's
    first token (<|im_start|>, which opens every message) is trimmed like any other."""
    from transformers import AutoTokenizer

    from tests.standins import hub_cache

    tok = AutoTokenizer.from_pretrained(hub_cache.build_llama(tmp_path / "llama3"))
    long = "We talked about work, friends, music and the weekend plans. " * 20
    row = {"prompt": [{"role": "system", "content": "You are calm."}, {"role": "user", "content": long}],
           "completion": [{"role": "assistant", "content": "I feel calm and a bit tired."}]}
    (out,) = hn.tokenize_rows([row], tok, 48, persona_in_context=True)
    assert len(out["input_ids"]) == 48 and out["input_ids"][0] == tok.bos_token_id
    assert out["input_ids"].count(tok.bos_token_id) == 1
    assert out["labels"][0] == -100 and out["labels"][-1] != -100
    _, chatml = base
    (short,) = hn.tokenize_rows([row], chatml, 48, persona_in_context=True)
    full = chatml.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
    full = full["input_ids"] if isinstance(full, dict) or hasattr(full, "input_ids") else full
    assert short["input_ids"] == list(full[-48:])  # ChatML: the newest 48 tokens, as before
