"""lib/decoding.py and the generation routines that use it, on the strict Llama 3 and BART stand-ins
(tests/standins/hub_cache.py): stop ids, explicit settings no config can override, seeding per batch."""
import pytest
import torch

from lib import decoding
from lib.models import generate_chat, load_for_inference
from tests.standins import hub_cache

CHATS = [[{"role": "user", "content": "How are you feeling today?"}],
         [{"role": "system", "content": "You are calm."}, {"role": "user", "content": "We talked about work."}],
         [{"role": "user", "content": "I wrote in my journal about the river."}],
         [{"role": "user", "content": "Music and the weekend plans?"}]]


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    return hub_cache.build_llama(tmp_path_factory.mktemp("llama3"))


@pytest.fixture(scope="module")
def llama3(llama3_dir):
    return load_for_inference(llama3_dir)


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory):
    return hub_cache.build_bart(tmp_path_factory.mktemp("bart"))


def _special(tok, text):
    return tok.convert_tokens_to_ids(text)


def test_stop_ids_are_tokenizer_eos_generation_config_eos_and_end_of_turn(llama3, tiny_llama_dir):
    model, tok = llama3
    assert decoding.stop_ids(tok, model) == sorted({_special(tok, "<|eot_id|>"), _special(tok, "<|end_of_text|>")})
    assert decoding.end_of_turn_ids(tok) == [_special(tok, "<|eot_id|>")]
    _, chatml_tok = load_for_inference(tiny_llama_dir)
    assert decoding.end_of_turn_ids(chatml_tok) == [_special(chatml_tok, "<|im_end|>")]


def test_template_bos_is_llama3s_and_not_chatml_s(llama3, tiny_llama_dir):
    _, tok = llama3
    assert decoding.template_bos_id(tok) == _special(tok, "<|begin_of_text|>")
    _, chatml_tok = load_for_inference(tiny_llama_dir)
    assert decoding.template_bos_id(chatml_tok) is None  # ChatML's "BOS" <|im_start|> opens every message


def test_chat_prompts_hold_one_bos(llama3):
    _, tok = llama3
    ids = decoding.chat_prompt_ids(tok, CHATS[:1])[0]
    bos = tok.bos_token_id
    assert ids[0] == bos and ids[1] != bos


def test_generate_kwargs_spell_out_every_decoding_setting():
    greedy = decoding.generate_kwargs(decoding.Sampling(temperature=0, max_new_tokens=5), [7, 9], 3)
    assert greedy["do_sample"] is False and greedy["num_beams"] == 1 and greedy["no_repeat_ngram_size"] == 0
    assert greedy["eos_token_id"] == [7, 9] and greedy["pad_token_id"] == 3 and greedy["max_new_tokens"] == 5
    sampled = decoding.generate_kwargs(decoding.Sampling(temperature=0.7, top_p=0.9), [7], 3)
    assert sampled["do_sample"] is True and sampled["top_k"] == 0  # no silent top-k 50
    assert decoding.generate_kwargs(decoding.Sampling(temperature=0.7, top_k=40), [7], 3)["top_k"] == 40


@pytest.mark.parametrize("bad", [{"temperature": -1}, {"top_p": 0}, {"top_k": 0}, {"max_new_tokens": 0}])
def test_sampling_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        decoding.Sampling(**bad)


def _argmax_decode(model, tok, chat, n, stop):
    ids = torch.tensor([decoding.chat_prompt_ids(tok, [chat])[0]])
    out = []
    with torch.inference_mode():
        for _ in range(n):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            if nxt in stop:
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tok.decode(out, skip_special_tokens=True).strip()


def test_greedy_generate_chat_is_greedy_despite_llama3s_sampling_config(llama3):
    """Meta-Llama-3-8B-Instruct's generation_config.json asks for sampling at T 0.6, top-p 0.9."""
    model, tok = llama3
    assert model.generation_config.do_sample is True
    got = generate_chat(model, tok, CHATS, max_new_tokens=12, batch_size=2)
    stop = set(decoding.stop_ids(tok, model))
    assert got == [_argmax_decode(model, tok, c, 12, stop) for c in CHATS]


def test_sampled_batches_are_seeded_by_their_first_row(llama3):
    """Batch b draws from seed + its first row: the second batch of a call equals a call made of it alone."""
    model, tok = llama3
    whole = generate_chat(model, tok, CHATS, max_new_tokens=10, batch_size=2, temperature=1.0, seed=5)
    assert whole == generate_chat(model, tok, CHATS, max_new_tokens=10, batch_size=2, temperature=1.0, seed=5)
    assert whole[2:] == generate_chat(model, tok, CHATS[2:], max_new_tokens=10, batch_size=2, temperature=1.0,
                                      seed=7)


def _bias_towards(model, token_id):
    """A forward hook that makes `token_id` the argmax of every next-token distribution."""
    head = model.get_output_embeddings()

    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_id] += 1e4
        return output

    return head.register_forward_hook(hook)


def test_dexperts_stops_at_the_generation_configs_end_of_text(llama3_dir, tmp_path):
    """A Llama 3 reply ending in <|end_of_text|> (generation_config's EOS list, not the tokenizer's EOS) stops there."""
    from peft import LoraConfig, get_peft_model

    from lib.big5chat import dexperts

    model, tok = load_for_inference(llama3_dir)
    for name, seed in (("a", 1), ("b", 2)):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"],
                                                      init_lora_weights=False))
        peft_model.save_pretrained(tmp_path / name)
        model = peft_model.unload()
    experts, tok = dexperts.load_experts(llama3_dir, {"a": tmp_path / "a", "b": tmp_path / "b"})
    handle = _bias_towards(experts, _special(tok, "<|end_of_text|>"))
    try:
        replies, stats = dexperts.dexperts_generate(experts, tok, CHATS[:2], CHATS[:2], ["a", "b"], max_new_tokens=8,
                                                    return_stats=True)
    finally:
        handle.remove()
    assert replies == ["", ""] and stats.tokens == 2  # one token each: the stop token, nothing after it


def test_seq2seq_greedy_is_greedy_despite_bart_bases_beam_config(bart_dir):
    """facebook/bart-base's config.json carries num_beams 4 and no_repeat_ngram_size 3; greedy must stay greedy."""
    from lib.pchat.seq2seq import load_seq2seq, seq2seq_generate

    model, tok = load_seq2seq(bart_dir)
    assert model.generation_config.num_beams == 4  # the stand-in carries the quirk
    sources = ["I wrote in my journal today about the long walk.", "How are you feeling? I feel calm."]
    got = seq2seq_generate(model, tok, sources, max_new_tokens=12, batch_size=2)
    expected = []
    with torch.inference_mode():
        for source in sources:
            enc = tok(source, return_tensors="pt")
            start = model.generation_config.decoder_start_token_id
            out = [start]
            for step in range(12):
                logits = model(**enc, decoder_input_ids=torch.tensor([out])).logits[0, -1]
                nxt = int(logits.argmax())
                if step == 0 and model.generation_config.forced_bos_token_id is not None:
                    nxt = model.generation_config.forced_bos_token_id
                if step == 11 and model.generation_config.forced_eos_token_id is not None:
                    nxt = model.generation_config.forced_eos_token_id
                out.append(nxt)
                if nxt == tok.eos_token_id:
                    break
            expected.append(tok.decode(out[1:], skip_special_tokens=True).strip())
    assert got == expected
