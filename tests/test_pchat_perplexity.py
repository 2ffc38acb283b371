"""lib/pchat/perplexity.py: reference perplexity of a decoder-only chat model, checked against a direct computation."""
import math

import pytest
import torch

from lib.models import load_for_inference
from lib.pchat import perplexity

CHATS = [[{"role": "system", "content": "Persona: I fish."}, {"role": "user", "content": "Hi, any hobbies?"}],
         [{"role": "user", "content": "What did you do today?"}],
         [{"role": "user", "content": "Tell me about your weekend plans and the people you will see."}]]
REFS = ["Fishing, mostly.", "I walked by the river and read a book.", "Family."]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load_for_inference(tiny_llama_dir)


def direct_nll(model, tok, messages, reference):
    """Summed NLL and count of the reference turn's tokens, computed one sequence at a time."""
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": reference}], tokenize=False)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([tok(full, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = ids[0, 1:]
    picked = logp[torch.arange(len(targets)), targets][n_prompt - 1:]
    return -float(picked.sum()), len(picked)


def test_causal_perplexity_equals_direct_computation_batched_or_not(tiny):
    model, tok = tiny
    nll, n = map(sum, zip(*(direct_nll(model, tok, c, r) for c, r in zip(CHATS, REFS))))
    expected = math.exp(nll / n)
    for batch_size in (1, 2, 3):
        assert perplexity.causal_perplexity(model, tok, CHATS, REFS, batch_size=batch_size) == pytest.approx(
            expected, rel=1e-4)


def test_causal_perplexity_scores_only_the_reference(tiny):
    model, tok = tiny
    one = perplexity.causal_perplexity(model, tok, CHATS[:1], REFS[:1])
    longer_prompt = [[*CHATS[0][:-1], {"role": "user", "content": "Hi, any hobbies? " * 3}]]
    assert perplexity.causal_perplexity(model, tok, longer_prompt, REFS[:1]) != one  # the context matters
    with pytest.raises(ValueError, match="as many chats as references"):
        perplexity.causal_perplexity(model, tok, CHATS, REFS[:2])
    with pytest.raises(ValueError, match="does not fit max_length=4"):
        perplexity.causal_perplexity(model, tok, CHATS[:1], REFS[:1], max_length=4)
