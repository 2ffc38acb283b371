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
