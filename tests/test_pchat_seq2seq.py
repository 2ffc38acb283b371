"""lib/pchat/seq2seq.py on a tiny random-init T5: the encoder-decoder path of PersonalityChat's BART/T5 models."""
import math

import pytest

from lib.pchat import perplexity, seq2seq

ROWS = [{"source": f"persona: I like {thing}.\npartner: What do you like?", "target": f"I like {thing} a lot."}
        for thing in ("dogs", "tea", "rain", "jazz", "maps", "snow", "bread", "trains")]
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q", "v"]}


def args(steps: int) -> dict:
    return {"learning_rate": 5e-2, "per_device_train_batch_size": 4, "max_steps": steps, "save_steps": 2,
            "logging_steps": 1, "seed": 0, "use_cpu": True}


@pytest.fixture(scope="module")
def tiny_t5(tiny_llama_dir, tmp_path_factory):
    return seq2seq.build_tiny_t5(tmp_path_factory.mktemp("tiny_t5"), tiny_llama_dir)


def test_chat_rows_flatten_to_source_and_target():
    row = {"prompt": [{"role": "system", "content": "Persona: I fish. Traits: Extraversion - high"},
                      {"role": "user", "content": "Hi! "}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "Any hobbies?"}],
           "completion": [{"role": "assistant", "content": " Fishing, mostly. "}]}
    assert seq2seq.chat_to_seq2seq(row) == {
        "source": "Persona: I fish. Traits: Extraversion - high\npartner: Hi!\nyou: Hello.\npartner: Any hobbies?",
        "target": "Fishing, mostly."}
    with pytest.raises(ValueError, match="unknown role 'tool'"):
        seq2seq.chat_to_seq2seq({"prompt": [{"role": "tool", "content": "x"}], "completion": row["completion"]})
    with pytest.raises(ValueError, match="non-empty 'prompt' and 'completion'"):
        seq2seq.chat_to_seq2seq({"prompt": [], "completion": row["completion"]})


def test_training_lowers_perplexity_saves_the_adapter_and_resumes(tiny_t5, tmp_path):
    base, tok = seq2seq.load_seq2seq(tiny_t5)
    before = perplexity.seq2seq_perplexity(base, tok, ROWS)
    assert math.isfinite(before) and before > 1

    first = seq2seq.seq2seq_sft(tiny_t5, ROWS, ROWS[:2], tmp_path, LORA, args(4))
    assert first["steps"] == 4 and first["resumed_from_step"] == 0 and math.isfinite(first["train_loss"])
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    more = seq2seq.seq2seq_sft(tiny_t5, ROWS, None, tmp_path, LORA, args(8))  # a longer run resumes at step 4
    assert more["resumed_from_step"] == 4 and more["steps"] == 8

    model, tok = seq2seq.load_seq2seq(tiny_t5, tmp_path / "adapter")
    after = perplexity.seq2seq_perplexity(model, tok, ROWS)
    assert after < before * 0.8, (before, after)
    replies = seq2seq.seq2seq_generate(model, tok, [r["source"] for r in ROWS[:3]], max_new_tokens=6)
    assert len(replies) == 3 and all(isinstance(r, str) for r in replies)


def test_bad_rows_and_missing_adapter(tiny_t5, tmp_path):
    with pytest.raises(ValueError, match="no training rows"):
        seq2seq.seq2seq_sft(tiny_t5, [], None, tmp_path, LORA, args(1))
    with pytest.raises(ValueError, match="train row #1: needs non-empty string 'source' and 'target'"):
        seq2seq.seq2seq_sft(tiny_t5, [ROWS[0], {"source": "x", "target": " "}], None, tmp_path, LORA, args(1))
    with pytest.raises(ValueError, match="must not set 'output_dir'"):
        seq2seq.seq2seq_sft(tiny_t5, ROWS, None, tmp_path, LORA, {**args(1), "output_dir": "x"})
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        seq2seq.load_seq2seq(tiny_t5, tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers that add their own EOS (BART: <s> ... </s>; T5: ... </s>)


@pytest.fixture(scope="module")
def tiny_bart(tmp_path_factory):
    """The paper run's stand-in for facebook/bart-base: a real BartTokenizerFast (it adds <s> and </s> itself)."""
    from tests.standins.hub_cache import build_bart

    return build_bart(tmp_path_factory.mktemp("tiny_bart"))


def test_labels_end_in_exactly_one_eos(tiny_bart, tiny_t5):
    from transformers import AutoTokenizer

    bart, plain = AutoTokenizer.from_pretrained(tiny_bart), AutoTokenizer.from_pretrained(tiny_t5)
    assert bart("I love walks")["input_ids"][-1] == bart.eos_token_id  # this tokenizer appends EOS itself ...
    assert plain("I love walks")["input_ids"][-1] != plain.eos_token_id  # ... this one does not
    for tok in (bart, plain):
        for max_target_length in (64, 4):
            (row,) = seq2seq.tokenize_seq2seq(tok, [{"source": "hi", "target": "I love long walks by the river."}],
                                              max_source_length=32, max_target_length=max_target_length)
            labels = row["labels"]
            assert labels[-1] == tok.eos_token_id and labels.count(tok.eos_token_id) == 1, labels
            assert len(labels) <= max_target_length
    (row,) = seq2seq.tokenize_seq2seq(bart, [{"source": "hi", "target": "I love walks"}], 32, 64)
    assert row["labels"] == bart(text_target="I love walks")["input_ids"]  # <s> ... </s>, as BART was trained


def direct_seq2seq_nll(model, tok, row):
    """Summed NLL and count of the reply tokens and the EOS of one target (the leading <s> is not scored)."""
    import torch

    labels = tok(text_target=row["target"])["input_ids"]
    assert labels[0] == tok.bos_token_id and labels[-1] == tok.eos_token_id
    enc = tok(row["source"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc, labels=torch.tensor([labels])).logits[0]
    logp = torch.log_softmax(logits.float(), -1)
    picked = logp[torch.arange(len(labels)), torch.tensor(labels)][1:]
    return -float(picked.sum()), len(picked)


def test_seq2seq_perplexity_counts_reply_tokens_and_one_eos(tiny_bart):
    model, tok = seq2seq.load_seq2seq(tiny_bart)
    nll, n = map(sum, zip(*(direct_seq2seq_nll(model, tok, r) for r in ROWS[:3])))
    expected = math.exp(nll / n)
    for batch_size in (1, 3):
        assert perplexity.seq2seq_perplexity(model, tok, ROWS[:3], batch_size=batch_size) == pytest.approx(
            expected, rel=1e-4)


def test_base_eval_loss_is_the_untrained_models_held_out_loss(tiny_t5, tmp_path):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

    metrics = seq2seq.seq2seq_sft(tiny_t5, ROWS, ROWS[:2], tmp_path, LORA, args(6))
    tok = AutoTokenizer.from_pretrained(tiny_t5)
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny_t5).eval()
    batch = DataCollatorForSeq2Seq(tok, model=base, label_pad_token_id=-100)(
        seq2seq.tokenize_seq2seq(tok, ROWS[:2], 512, 64))
    with torch.no_grad():
        expected = float(base(**batch).loss)
    assert metrics["base_eval_loss"] == pytest.approx(expected, rel=1e-4)
    assert metrics["eval_loss"] < metrics["base_eval_loss"]  # the adapter learned the held-out rows' pattern
    assert "base_eval_loss" not in seq2seq.seq2seq_sft(tiny_t5, ROWS, None, tmp_path / "no_eval", LORA, args(1))


def test_sampled_generation_is_seeded(tiny_t5):
    model, tok = seq2seq.load_seq2seq(tiny_t5)
    sources = [r["source"] for r in ROWS[:4]]

    def sample(seed):
        return seq2seq.seq2seq_generate(model, tok, sources, max_new_tokens=8, temperature=1.0, seed=seed)

    assert sample(0) == sample(0) and sample(0) != sample(1)  # a random-init model samples widely
    assert seq2seq.seq2seq_generate(model, tok, sources, max_new_tokens=8) == seq2seq.seq2seq_generate(
        model, tok, sources, max_new_tokens=8, seed=5)  # greedy ignores the seed
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        seq2seq.seq2seq_generate(model, tok, sources, temperature=-1)
