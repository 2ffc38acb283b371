"""PersLLM's personified tuning and automatic DPO: stage tokens, training rows, preference pairs.

Stage tokens. The paper marks the temporal stage with special tokens (`<TIME-I>`, `<TIME-II>`) before the input.
Its code adds them to the tokenizer but never resizes the embedding matrix; here they are added, the matrix is
resized, and each new row starts as the mean embedding of words that name its stage (`init` in the stage's params,
e.g. "early years"), so the stages differ from the first step. The rows stay as initialised (trl's SFT reads
`lm_head.weight` directly, which peft's trainable-token wrapper on a tied head cannot pass through); the LoRA learns
to read them.

One model serves all characters: the system prompt names the character, the user turn starts with the stage token.

Automatic DPO. For each training answer the chosen side is the character's own answer; the rejected side is another
character's answer to a similar input: the inputs are embedded, the `skip_nearest` most similar inputs of other
characters are skipped (near-paraphrases whose answers may be as good) and the next one whose answer text differs is
taken. Where an input was answered in both stages, the other stage's answer to the same input is a second, stage
pair. Both aim at the paper's contrast: between characters and between stages.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lib.persllm import unit_rows

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- stage tokens

def stage_token(stages: Sequence[Mapping], stage: str) -> str:
    """The special token of a stage; an unknown stage is an error naming the known ones."""
    for st in stages:
        if st["name"] == stage:
            return st["token"]
    raise KeyError(f"unknown stage {stage!r}: the stage tokens are {[(s['name'], s['token']) for s in stages]}")


def check_stage_tokens(tokenizer, tokens: Sequence[str]) -> list[int]:
    """Each token's id, when the tokenizer has it as one token; else an error (a model without the stage tokens,
    or a token the profile does not define)."""
    ids = []
    vocab = tokenizer.get_vocab()
    for tok in tokens:
        if tok not in vocab:
            raise ValueError(f"stage token {tok!r} is not in the tokenizer of {tokenizer.name_or_path!r}: load the "
                             "personified model (lib.persllm.personify.add_stage_tokens), or fix the stage's token")
        pieces = tokenizer(tok, add_special_tokens=False)["input_ids"]
        if pieces != [vocab[tok]]:
            raise ValueError(f"stage token {tok!r} is split into {pieces}: it was not added as a special token")
        ids.append(vocab[tok])
    return ids


def add_stage_tokens(model, tokenizer, stages: Sequence[Mapping]) -> list[int]:
    """Add every stage's token to the tokenizer as a special token, resize the embeddings and set each new row to
    the mean embedding of its `init` words (input and, when untied, output embeddings). Deterministic. Returns the
    token ids. Tokens already present are an error: the model would be personified twice."""
    import torch

    tokens = [st["token"] for st in stages]
    present = [t for t in tokens if t in tokenizer.get_vocab()]
    if present:
        raise ValueError(f"{present} are already in the tokenizer: is this model already personified?")
    tokenizer.add_tokens(tokens, special_tokens=True)
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = check_stage_tokens(tokenizer, tokens)
    emb_in = model.get_input_embeddings().weight
    emb_out = model.get_output_embeddings().weight if model.get_output_embeddings() is not None else None
    with torch.no_grad():
        for st, new_id in zip(stages, ids):
            words = tokenizer(" " + st["init"], add_special_tokens=False)["input_ids"]
            if not words:
                raise ValueError(f"stage {st['name']!r}: init words {st['init']!r} give no tokens")
            emb_in[new_id] = emb_in[words].mean(0)
            if emb_out is not None and emb_out.data_ptr() != emb_in.data_ptr():
                emb_out[new_id] = emb_out[words].mean(0)
    return ids


def personified_base(base_dir: str | Path, stages: Sequence[Mapping], dtype=None):
    """The base model and tokenizer with the stage tokens added (in memory): (model, tokenizer, token ids)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype or "auto")
    ids = add_stage_tokens(model, tokenizer, stages)
    return model, tokenizer, ids


def save_personified_base(base_dir: str | Path, stages: Sequence[Mapping], out_dir: str | Path) -> list[int]:
    """Write the personified base (model + tokenizer) to out_dir, the path lib.train loads; its token ids."""
    model, tokenizer, ids = personified_base(base_dir, stages)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return ids


# --------------------------------------------------------------------------------------------- rows and pairs

def prompt(name: str, token: str, text: str, system_template: str) -> list[dict]:
    """The chat every PersLLM model sees: the character in the system prompt, the stage token before the input."""
    return [{"role": "system", "content": system_template.format(name=name)},
            {"role": "user", "content": f"{token} {text}"}]


def sft_rows(items: Sequence[Mapping], stages: Sequence[Mapping], system_template: str) -> list[dict]:
    """Conversational prompt-completion rows, one per item and answered stage (loss on the answer only)."""
    rows = []
    for it in items:
        for st, ans in sorted(it["answers"].items()):
            rows.append({"id": f"{it['id']}@{st}", "character": it["character"], "stage": st, "type": it["type"],
                         "prompt": prompt(it["name"], stage_token(stages, st), it["input"], system_template),
                         "completion": [{"role": "assistant", "content": ans["text"]}]})
    return rows


def dpo_pairs(items: Sequence[Mapping], vecs: np.ndarray, pool: Sequence[Mapping], pool_vecs: np.ndarray,
              stages: Sequence[Mapping], system_template: str, skip_nearest: int = 5,
              stage_pairs: bool = True) -> tuple[list[dict], Counter]:
    """Preference pairs for `items` (their input embeddings `vecs`); rejected answers come from `pool` (pool_vecs).

    Character pairs: rank the pool's items of other characters by cosine to the item's input, skip the first
    `skip_nearest`, take the first whose answer (in the same stage if it has one, else its own stage) differs from
    the chosen one. Stage pairs: the same input's answer in another stage. Returns (pairs, drops by reason); an
    answer without a usable neighbour is a counted drop ("no_neighbour_from_other_character").
    """
    if len(items) != len(vecs) or len(pool) != len(pool_vecs):
        raise ValueError(f"dpo_pairs: {len(items)} items / {len(vecs)} vectors, {len(pool)} pool / {len(pool_vecs)}")
    if skip_nearest < 0:
        raise ValueError(f"skip_nearest must be >= 0, got {skip_nearest}")
    sims = unit_rows(vecs) @ unit_rows(pool_vecs).T if len(items) and len(pool) else np.zeros((len(items), len(pool)))
    pairs, drops = [], Counter()
    for i, it in enumerate(items):
        order = [j for j in np.argsort(-sims[i], kind="stable") if pool[j]["character"] != it["character"]]
        for st, ans in sorted(it["answers"].items()):
            chat = prompt(it["name"], stage_token(stages, st), it["input"], system_template)
            chosen = ans["text"]
            rejected = None
            for j in order[skip_nearest:]:
                other = pool[j]["answers"]
                cand = other.get(st) or other[pool[j]["stage"]]
                if cand["text"] != chosen:
                    rejected = (pool[j], cand)
                    break
            if rejected is None:
                drops["no_neighbour_from_other_character"] += 1
                log.info("dpo_pairs: %s@%s has no neighbour from another character past the %d nearest",
                         it["id"], st, skip_nearest)
            else:
                nb, cand = rejected
                pairs.append({"id": f"{it['id']}@{st}-char", "kind": "character", "character": it["character"],
                              "stage": st, "rejected_from": f"{nb['id']}", "rejected_character": nb["character"],
                              "prompt": chat, "chosen": [{"role": "assistant", "content": chosen}],
                              "rejected": [{"role": "assistant", "content": cand["text"]}]})
            if not stage_pairs:
                continue
            for st2, ans2 in sorted(it["answers"].items()):
                if st2 == st:
                    continue
                if ans2["text"] == chosen:
                    drops["same_answer_in_both_stages"] += 1
                    continue
                pairs.append({"id": f"{it['id']}@{st}-stage-{st2}", "kind": "stage", "character": it["character"],
                              "stage": st, "rejected_from": f"{it['id']}@{st2}", "rejected_character": it["character"],
                              "prompt": chat, "chosen": [{"role": "assistant", "content": chosen}],
                              "rejected": [{"role": "assistant", "content": ans2["text"]}]})
    return pairs, drops


def with_stage(row: Mapping, stage: str, stages: Sequence[Mapping]) -> dict:
    """A row (prompt + completion or pair) with its user turn's stage token replaced by `stage`'s."""
    known = {st["token"] for st in stages}
    user = row["prompt"][-1]["content"]
    head, _, rest = user.partition(" ")
    if head not in known:
        raise ValueError(f"row {row.get('id')}: its user turn does not start with a stage token ({sorted(known)})")
    return {**row, "stage": stage,
            "prompt": [*row["prompt"][:-1], {"role": "user", "content": f"{stage_token(stages, stage)} {rest}"}]}


# --------------------------------------------------------------------------------------------- inference

def personified_model(base_dir: str | Path, stages: Sequence[Mapping], adapters: Sequence[str | Path] = (),
                      merge: bool = False):
    """(model, tokenizer) for inference: the personified base plus adapters trained on it, in order (SFT, then the
    DPO adapter trained on the merged SFT model); every adapter but the last is merged into the weights, the last
    too with `merge` (the SFT model DPO starts from). Left padding for batched generation; on the GPU if there is one."""
    import torch

    model, tokenizer, _ = personified_base(base_dir, stages)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    for k, adapter_dir in enumerate(adapters):
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir} holds no adapter (adapter_config.json): run its stage first")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
        if merge or k < len(adapters) - 1:
            model = model.merge_and_unload()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def answer_nll(model, tokenizer, rows: Sequence[Mapping], batch_size: int = 8) -> list[float]:
    """Per prompt-completion row, the mean negative log-likelihood (nats per token) of its completion given the
    prompt, rendered by the chat template as training renders it."""
    import torch

    from lib.train import render_rows

    rendered = render_rows(list(rows), tokenizer)
    seqs = [(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"],
             tokenizer(r["completion"], add_special_tokens=False)["input_ids"]) for r in rendered]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for lo in range(0, len(seqs), batch_size):
        chunk = seqs[lo:lo + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, (p, a) in enumerate(chunk):
            ids[r, :len(p) + len(a)], mask[r, :len(p) + len(a)] = torch.tensor(p + a), 1
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        for r, (p, a) in enumerate(chunk):
            out.append(-logp[r, len(p) - 1:len(p) - 1 + len(a)].mean().item())
    return out
