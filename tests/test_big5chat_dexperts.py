"""lib/big5chat/dexperts.py on a tiny random Llama with random LoRA adapters: steering, batching modes, input checks."""
import copy

import pytest
import torch

from lib import decoding
from lib.big5chat import dexperts
from lib.models import load_for_inference

ADAPTERS = ("O_high", "O_low", "C_high")
CHATS = [
    [{"role": "user", "content": "How are you?"}],
    [{"role": "user", "content": "We talked about work, friends, music and the weekend plans. How did it feel?"}],
    [{"role": "system", "content": "I feel calm."}, {"role": "user", "content": "A long walk by the river today."}],
]
EXPERT_CHATS = [[{"role": "system", "content": "Help me complete the sentence: happy"}, *chat] for chat in CHATS]
N_NEW = 10


@pytest.fixture(scope="module")
def varied_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama with weights of std 0.3: at the default std 0.02 greedy decoding repeats one token forever,
    which would let a broken decoder pass; at 0.3 the greedy continuation varies with the prompt and the step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("varied_llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.3)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dirs(varied_dir, tmp_path_factory):
    """Three saved LoRA adapters with random A and B (init_lora_weights=False), so each really changes the logits."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("adapters")
    dirs = {}
    for k, name in enumerate(ADAPTERS):
        base, _ = load_for_inference(varied_dir)
        torch.manual_seed(100 + k)
        config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                            init_lora_weights=False)
        get_peft_model(base, config).save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


@pytest.fixture(scope="module")
def experts(varied_dir, adapter_dirs):
    """(PeftModel with the three adapters, tokenizer)."""
    return dexperts.load_experts(varied_dir, adapter_dirs)


@pytest.fixture(scope="module")
def base_greedy(varied_dir):
    """Plain transformers greedy decoding of each chat, one at a time (no padding), by the base model alone."""
    model, tok = load_for_inference(varied_dir)
    outs = []
    for chat in CHATS:
        enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=N_NEW, do_sample=False)
        outs.append(out[0, enc["input_ids"].shape[1]:].tolist())
    return outs


def run(experts, mode="batched", expert_names=("O_high", "O_low", "C_high"), **kwargs):
    """dexperts_generate on the three chats; returns (replies, stats)."""
    model, tok = experts
    kwargs = {"max_new_tokens": N_NEW, "batch_size": 3, **kwargs}
    return dexperts.dexperts_generate(model, tok, CHATS, EXPERT_CHATS, list(expert_names), mode=mode,
                                      return_stats=True, **kwargs)


def test_load_experts_names_every_adapter_and_pads_left(experts):
    model, tok = experts
    assert sorted(model.peft_config) == sorted(ADAPTERS)
    assert tok.padding_side == "left"
    assert not model.training


def test_load_experts_rejects_dir_without_adapter_config(varied_dir, adapter_dirs, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter 'bad'.*adapter_config.json"):
        dexperts.load_experts(varied_dir, {"O_high": adapter_dirs["O_high"], "bad": tmp_path})


def test_reference_is_not_degenerate(base_greedy):
    # The comparisons below are only meaningful if greedy decoding varies across prompts and steps.
    assert len({tuple(ids) for ids in base_greedy}) == 3
    assert all(len(set(ids)) >= 3 and len(ids) == N_NEW for ids in base_greedy)


@pytest.mark.parametrize("mode", ["batched", "separate", "base"])
def test_alpha_zero_reproduces_plain_greedy_decoding(experts, base_greedy, mode):
    # batch_size 2: the 3 prompts of different lengths run as two chunks, the first with left padding.
    replies, stats = run(experts, mode=mode, alpha=0.0, batch_size=2)
    assert stats.token_ids == base_greedy
    _, tok = experts
    assert replies == [tok.decode(ids, skip_special_tokens=True).strip() for ids in base_greedy]
    assert stats.tokens == 3 * N_NEW


def test_forward_counts_per_mode(experts):
    # Chunks of 2 + 1 samples, N_NEW forwards per stream (1 prefill + N_NEW - 1 steps).
    assert run(experts, "batched", batch_size=2)[1].forwards == 2 * N_NEW
    assert run(experts, "base", batch_size=2)[1].forwards == 2 * N_NEW
    # separate: base + O_high + O_low streams, then base + C_high.
    stats = run(experts, "separate", batch_size=2)[1]
    assert stats.forwards == 3 * N_NEW + 2 * N_NEW
    assert 0 < stats.prefill_seconds < stats.seconds


def test_mixed_adapter_batch_forward_equals_each_adapter_alone(experts):
    model, tok = experts
    names = ["__base__", "O_high", "O_low", "O_high"]
    prompts = [dexperts._prompt_ids(tok, chat) for chat in (*CHATS, CHATS[0])]
    rows = [("expert", i, ids) for i, ids in enumerate(prompts)]
    steps = torch.tensor([[5, 9, 17, 5], [40, 2, 7, 40]])  # two decoding steps after the prefill
    with torch.inference_mode():
        mixed = dexperts._stream(model, names, rows, tok.pad_token_id)
        got = [mixed.prefill(), *(mixed.step(tokens) for tokens in steps)]
        for r, name in enumerate(names):
            alone = dexperts._stream(model, None if name == "__base__" else name, [rows[r]], tok.pad_token_id)
            want = [alone.prefill(), *(alone.step(tokens[r:r + 1]) for tokens in steps)]
            for g, w in zip(got, want):
                torch.testing.assert_close(g[r:r + 1], w, atol=1e-4, rtol=0)
    # The adapter really changes the logits: rows 0 (base) and 3 (O_high) read the same prompt.
    assert (got[0][3] - got[0][0]).abs().max() > 0.1


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_batched_and_separate_modes_give_identical_tokens(experts, alpha):
    anti = ["O_low", None, "O_high"]
    batched = run(experts, "batched", alpha=alpha, antiexperts=anti)[1].token_ids
    separate = run(experts, "separate", alpha=alpha, antiexperts=anti)[1].token_ids
    assert batched == separate
    assert all(len(ids) == N_NEW for ids in batched)


def test_expert_joins_only_after_join_after_tokens(experts, base_greedy):
    steered = run(experts, alpha=20.0, join_after=4)[1].token_ids
    assert [ids[:4] for ids in steered] == [ids[:4] for ids in base_greedy]
    assert [ids[4:] for ids in steered] != [ids[4:] for ids in base_greedy]
    assert [ids[4] for ids in steered] != [ids[4] for ids in base_greedy]  # it steers from the very next token
    from_start = run(experts, alpha=20.0, join_after=0)[1].token_ids
    assert [ids[0] for ids in from_start] != [ids[0] for ids in base_greedy]


def test_antiexpert_changes_the_result(experts):
    plain = run(experts, alpha=2.0, join_after=0)[1].token_ids
    anti = run(experts, alpha=2.0, join_after=0, antiexperts=["O_low", "O_low", "O_low"])[1].token_ids
    assert plain != anti


def test_token_id_prompts_equal_chat_prompts(experts):
    model, tok = experts
    ids = [dexperts._prompt_ids(tok, chat) for chat in CHATS]
    expert_ids = [dexperts._prompt_ids(tok, chat) for chat in EXPERT_CHATS]
    from_ids = dexperts.dexperts_generate(model, tok, ids, expert_ids, list(ADAPTERS), alpha=2.0,
                                         max_new_tokens=N_NEW)
    assert from_ids == run(experts, alpha=2.0)[0]


def test_stops_at_eos_and_returns_text_before_it(experts, base_greedy):
    model, _ = experts
    tok = copy.deepcopy(experts[1])
    stop = base_greedy[0][3]  # make the 4th greedy token of chat 0 the EOS
    tok.eos_token = tok.convert_ids_to_tokens(stop)
    replies, stats = dexperts.dexperts_generate(model, tok, CHATS[:1], EXPERT_CHATS[:1], ["O_high"], alpha=0.0,
                                                max_new_tokens=N_NEW, return_stats=True)
    cut = base_greedy[0].index(stop) + 1
    assert stats.token_ids == [base_greedy[0][:cut]]
    assert replies == [tok.decode(base_greedy[0][:cut - 1], skip_special_tokens=True).strip()]
    _, ignored = dexperts.dexperts_generate(model, tok, CHATS[:1], EXPERT_CHATS[:1], ["O_high"], alpha=0.0,
                                            max_new_tokens=N_NEW, ignore_eos=True, return_stats=True)
    assert ignored.token_ids == [base_greedy[0]]


def test_sampling_is_seeded_and_same_in_both_modes(experts):
    kwargs = {"alpha": 0.5, "temperature": 1.0, "top_p": 0.9, "join_after": 2}
    first = run(experts, seed=1, **kwargs)[1].token_ids
    assert run(experts, seed=1, **kwargs)[1].token_ids == first
    assert run(experts, "separate", seed=1, **kwargs)[1].token_ids == first
    assert run(experts, seed=2, **kwargs)[1].token_ids != first
    assert first != run(experts, alpha=0.5, join_after=2)[1].token_ids  # sampling, not greedy


def test_separate_mode_restores_the_active_adapter(experts):
    model, _ = experts
    before = model.active_adapter
    run(experts, "separate", expert_names=("C_high", "O_low", "C_high"))
    assert model.active_adapter == before


@pytest.mark.parametrize(("change", "message"), [
    ({"experts": ["O_high", "O_low"]}, "equal lengths"),
    ({"experts": ["O_high", "nope", "O_low"]}, r"experts\[1\] = 'nope'"),
    ({"antiexperts": [None, None, "missing"]}, r"antiexperts\[2\] = 'missing'"),
    ({"experts": ["O_high", "__base__", "O_low"]}, r"experts\[1\] = '__base__'"),
    ({"join_after": -1}, "join_after must be >= 0, got -1"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"mode": "fast"}, "mode must be one of .* got 'fast'"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\], got 0.0"),
    ({"temperature": -1.0}, "temperature must be >= 0, got -1.0"),
    ({"expert_chats": [[], [1, 2], [3]]}, "non-empty list of chat messages or of token ids"),
])
def test_bad_inputs_raise_value_error_naming_the_problem(experts, change, message):
    model, tok = experts
    kwargs = {"base_chats": CHATS, "expert_chats": EXPERT_CHATS, "experts": list(ADAPTERS), **change}
    with pytest.raises(ValueError, match=message):
        dexperts.dexperts_generate(model, tok, **kwargs)


def test_plain_model_without_adapters_is_rejected(varied_dir):
    model, tok = load_for_inference(varied_dir)
    with pytest.raises(ValueError, match="has no LoRA adapters"):
        dexperts.dexperts_generate(model, tok, CHATS, EXPERT_CHATS, list(ADAPTERS))


def _by_role(base, expert, anti=(0.0, 0.0, 0.0)):
    return {"base": torch.tensor([base]), "expert": torch.tensor([expert]), "anti": torch.tensor([anti])}


def test_combination_rule_by_hand():
    """base + alpha * expert, worked by hand on three tokens; every other plausible rule picks another token.

    base = [3, 0, 2.9], expert = [0, 5, 0.6]:
      alpha 0.5: [3, 2.5, 3.2]  -> token 2   (base alone -> 0; (1-a) base + a expert, expert alone, or a mixture of
                                              the two softmaxes -> 1)
      alpha 2:   [3, 10, 4.1]   -> token 1
      with an anti-expert [0, 4, 0], alpha 0.5: [3, 0.5, 3.2] -> token 2; alpha 2: [3, 2, 4.1] -> token 2
      before the expert joins: base alone -> token 0
    """
    roles = _by_role([3.0, 0.0, 2.9], [0.0, 5.0, 0.6])
    greedy = lambda logits: decoding.next_tokens(logits, decoding.Sampling(temperature=0.0), None).item()
    assert greedy(dexperts._combine(roles, 0.5, expert_joined=True, has_anti=False)) == 2
    assert greedy(dexperts._combine(roles, 2.0, expert_joined=True, has_anti=False)) == 1
    assert greedy(dexperts._combine(roles, 0.5, expert_joined=False, has_anti=False)) == 0
    assert dexperts._combine(roles, 0.5, True, False)[0].tolist() == pytest.approx([3.0, 2.5, 3.2])
    anti = _by_role([3.0, 0.0, 2.9], [0.0, 5.0, 0.6], [0.0, 4.0, 0.0])
    assert dexperts._combine(anti, 2.0, True, True)[0].tolist() == pytest.approx([3.0, 2.0, 4.1])
    assert greedy(dexperts._combine(anti, 0.5, True, True)) == 2


def test_sampling_draws_from_the_tempered_softmax_of_the_combined_logits():
    """At T 0.6 (the paper's), token frequencies over 40,000 rows match softmax((base + a expert) / 0.6)."""
    roles = _by_role([3.0, 0.0, 2.9], [0.0, 5.0, 0.6])
    logits = dexperts._combine(roles, 0.5, True, False).repeat(40_000, 1)
    tokens = decoding.next_tokens(logits, decoding.Sampling(temperature=0.6), torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=3).float() / len(tokens)
    expected = torch.softmax(torch.tensor([3.0, 2.5, 3.2]) / 0.6, -1)  # [0.40, 0.17, 0.56] / sum
    assert freq.tolist() == pytest.approx(expected.tolist(), abs=0.01)


def _nll_by_hand(model, tok, prompt, text) -> float:
    """One unpadded sequence: mean -log p of the text's tokens after the formatted prompt."""
    p = tok(tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    t = tok(text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p["input_ids"] + t])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    n = len(p["input_ids"])
    return -sum(logp[n - 1 + i, tok_id].item() for i, tok_id in enumerate(t)) / len(t)


def test_completion_nll_matches_an_unpadded_hand_computation(experts, varied_dir):
    model, tok = experts
    prompt = [{"role": "user", "content": "Help me complete the sentence: happy"}]
    texts = ["I love long walks.", "We met at the station and talked for hours about music and friends."]
    base = dexperts.completion_nll(model, tok, prompt, texts, adapter=None, batch_size=2)  # padded batch
    plain, _ = load_for_inference(varied_dir)
    assert base == pytest.approx([_nll_by_hand(plain, tok, prompt, t) for t in texts], rel=1e-4)
    with_adapter = dexperts.completion_nll(model, tok, prompt, texts, adapter="O_high", batch_size=1)
    model.set_adapter("O_high")
    assert with_adapter == pytest.approx([_nll_by_hand(model, tok, prompt, t) for t in texts], rel=1e-4)
    assert with_adapter != pytest.approx(base, rel=1e-3)  # the adapter really scored them
    with pytest.raises(ValueError, match="no texts"):
        dexperts.completion_nll(model, tok, prompt, [], adapter=None)


def test_shared_prompts_are_prefilled_once_and_decode_as_if_alone(experts):
    """One unit's base prompt under several experts, one expert's prompt under several units: each distinct
    (adapter, prompt) row is prefilled once, and every sample decodes exactly as it does in a batch of its own."""
    model, tok = experts
    base = [CHATS[0], CHATS[0], CHATS[1], CHATS[0]]
    expert = [EXPERT_CHATS[2], EXPERT_CHATS[0], EXPERT_CHATS[2], EXPERT_CHATS[2]]
    names = ["O_high", "O_low", "O_high", "O_high"]
    kwargs = {"alpha": 1.0, "join_after": 1, "max_new_tokens": N_NEW, "ignore_eos": True, "return_stats": True}
    alone = [dexperts.dexperts_generate(model, tok, [b], [e], [n], batch_size=1, **kwargs)[1].token_ids[0]
             for b, e, n in zip(base, expert, names)]
    for mode in ("batched", "separate"):
        _, stats = dexperts.dexperts_generate(model, tok, base, expert, names, batch_size=4, mode=mode, **kwargs)
        assert stats.token_ids == alone
    assert alone[0] == alone[3] and alone[0] != alone[1]  # same inputs agree; another expert changes the reply
    streams = dexperts._streams(model, "batched", [dexperts._prompt_ids(tok, c) for c in base],
                                [dexperts._prompt_ids(tok, c) for c in expert], names, [None] * 4, tok.pad_token_id)
    (stream,) = streams
    # base rows: CHATS[0] thrice + CHATS[1]; expert rows: (O_high, chat 2) thrice + (O_low, chat 0) -> 2 + 2 distinct
    assert len(stream.prefill_ids) == 4 and stream.expand.tolist() == [0, 0, 1, 0, 2, 3, 2, 2]


@pytest.mark.parametrize("mode", ["batched", "base"])
def test_stop_tokens_end_each_reply_as_plain_generate_does(varied_dir, experts, base_greedy, mode, monkeypatch):
    """The loop reads tokens back once per chunk and looks for the end only every STOP_CHECK_EVERY steps: each reply
    must still end at its own first stop token, as transformers' generate with that EOS gives, and a chunk whose
    replies have all stopped must stop decoding."""
    ids0 = base_greedy[0]
    at = next(k for k in range(2, len(ids0)) if ids0[k] not in ids0[:k])  # a token first drawn at step >= 2
    stop = ids0[at]
    monkeypatch.setattr(dexperts.decoding, "stop_ids", lambda tokenizer, model: [stop])
    n_new = 3 * dexperts.STOP_CHECK_EVERY
    model, tok = load_for_inference(varied_dir)
    want = []
    for chat in CHATS:
        enc = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=n_new, do_sample=False, eos_token_id=stop, pad_token_id=stop)
        want.append(out[0, enc["input_ids"].shape[1]:].tolist())
    assert want[0][-1] == stop and len(want[0]) == at + 1
    _, stats = run(experts, mode=mode, alpha=0.0, batch_size=3, max_new_tokens=n_new)
    assert stats.token_ids == want
    if all(ids[-1] == stop for ids in want):  # every reply stopped: the chunk ends at the next check
        assert stats.forwards < n_new * (1 if mode != "separate" else 4)
    _, one = run(experts, mode=mode, alpha=0.0, batch_size=1, max_new_tokens=n_new,
                      expert_names=("O_high",) * 3)
    assert one.token_ids[0] == want[0] and one.forwards < n_new * 3  # the first chunk stopped early


def test_expert_check_reads_discrimination_and_gain_per_trait_from_paired_scores():
    """lib.big5chat.experts.check_scores: per held-out text, opposite − own and base − own, with their intervals."""
    from lib.big5chat.experts import check_scores

    rows = []
    for i in range(12):  # the E experts: own level 0.5 nats below the opposite one, 1.0 below the base
        for level in ("high", "low"):
            own, opposite = 2.0 + 0.01 * i, 2.5 + 0.01 * i
            rows += [{"trait": "E", "text_level": level, "text": i, "scorer": level, "nll": own},
                     {"trait": "E", "text_level": level, "text": i, "scorer": "low" if level == "high" else "high",
                      "nll": opposite},
                     {"trait": "E", "text_level": level, "text": i, "scorer": "base", "nll": own + 1.0}]
    check = check_scores(rows)
    assert set(check) == {"E"}
    assert check["E"]["discrimination"]["mean"] == pytest.approx(0.5)
    assert check["E"]["gain_over_base"]["mean"] == pytest.approx(1.0)
    assert check["E"]["discrimination"]["n"] == 24 and check["E"]["discriminates"] == "positive"
    assert check["E"]["own_expert_nll"] == pytest.approx(2.055)
    assert check_scores([]) == {}
