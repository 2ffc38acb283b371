"""Perplexity of reference responses under a response model, for both architectures PersonalityChat compares.

Perplexity is exp(mean negative log-likelihood per token of the references), pooled over every reference token of
a test set (not a mean of per-response perplexities). For a decoder-only chat model the reference is scored as the
assistant turn after the chat's prompt, exactly the tokens its SFT loss covered (the reply and the end-of-turn
marker); for an encoder-decoder, as the decoder's labels given the source (lib/pchat/seq2seq.py's formatting): the
reply and its one EOS, not a BOS the tokenizer puts first (BART's <s>), which follows the decoder's start token in
every target and so costs nothing to predict.

    ppl = causal_perplexity(model, tokenizer, chats, references)
    ppl = seq2seq_perplexity(model, tokenizer, [{"source": ..., "target": ...}, ...])
"""
from __future__ import annotations

import math

from lib.pchat.seq2seq import check_seq2seq_rows, tokenize_seq2seq


def _completion_ids(tokenizer, messages: list[dict], reference: str) -> tuple[list[int], int]:
    """(ids of prompt + reference turn, number of prompt ids) under the tokenizer's chat template."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reference}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template does not extend the generation prompt with the reply; cannot score it")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return prompt_ids + tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"], len(prompt_ids)


def causal_perplexity(model, tokenizer, chats: list[list[dict]], references: list[str], batch_size: int = 8,
                      max_length: int = 1024) -> float:
    """Perplexity of each reference as the assistant's reply to its chat, pooled over all reference tokens.

    A sequence longer than `max_length` loses tokens from the start of its prompt, never from the reference.
    """
    import torch

    if len(chats) != len(references) or not chats:
        raise ValueError(f"need as many chats as references (>= 1), got {len(chats)} and {len(references)}")
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for lo in range(0, len(chats), batch_size):
        rows = []
        for messages, reference in zip(chats[lo:lo + batch_size], references[lo:lo + batch_size]):
            ids, n_prompt = _completion_ids(tokenizer, messages, reference)
            cut = max(0, len(ids) - max_length)
            if cut > n_prompt:
                raise ValueError(f"a reference of {len(ids) - n_prompt} tokens does not fit max_length={max_length}")
            rows.append((ids[cut:], n_prompt - cut))
        width = max(len(ids) for ids, _ in rows)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in rows], device=device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=device)
        labels = torch.tensor([[-100] * n + ids[n:] + [-100] * (width - len(ids)) for ids, n in rows], device=device)
        with torch.inference_mode():
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        targets = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                                reduction="sum")
        total_nll += float(nll)
        total_tokens += int((targets != -100).sum())
    return math.exp(total_nll / total_tokens)


def seq2seq_perplexity(model, tokenizer, rows: list[dict], batch_size: int = 8, max_source_length: int = 512,
                       max_target_length: int = 64) -> float:
    """exp(mean token negative log-likelihood of the targets given their sources), over the reply tokens and EOS of
    every target (a leading BOS is fed to the decoder but not scored)."""
    import torch

    rows = check_seq2seq_rows(rows, "perplexity")
    total_nll, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    for lo in range(0, len(rows), batch_size):
        batch = tokenize_seq2seq(tokenizer, rows[lo:lo + batch_size], max_source_length, max_target_length)
        width = max(len(b["input_ids"]) for b in batch)
        label_width = max(len(b["labels"]) for b in batch)
        ids = torch.tensor([b["input_ids"] + [tokenizer.pad_token_id] * (width - len(b["input_ids"])) for b in batch],
                           device=device)
        mask = torch.tensor([[1] * len(b["input_ids"]) + [0] * (width - len(b["input_ids"])) for b in batch],
                            device=device)
        labels = torch.tensor([b["labels"] + [-100] * (label_width - len(b["labels"])) for b in batch], device=device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, labels=labels).logits
        scored = labels.clone()
        if tokenizer.bos_token_id is not None:
            first = scored[:, 0]
            scored[:, 0] = torch.where(first == tokenizer.bos_token_id, torch.full_like(first, -100), first)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), scored.flatten(), ignore_index=-100,
                                                reduction="sum")
        total_nll += float(nll)
        total_tokens += int((scored != -100).sum())
    return math.exp(total_nll / total_tokens)
