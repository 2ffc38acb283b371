"""PersLLM's personified tuning and automatic DPO: stage tokens, training rows, preference pairs.

Stage tokens. The paper marks the temporal stage with special tokens (`<TIME-I>`, `<TIME-II>`) before the input.
Its code adds them to the tokenizer but never resizes the embedding matrix; here they are added, the matrix is
resized, and each new row starts as the mean embedding of words that name its stage (`init` in the stage's params,
e.g. "early years"), so the stages differ from the first step. The rows stay as initialised (trl's SFT reads
`lm_head.weight` directly, which peft's trainable-token wrapper on a tied head cannot pass through); the LoRA learns
to read them.

One model serves all characters: the system prompt names the character, the user turn starts with the stage token.

The training mix. PersLLM's documentation (persLLM_documentation.pdf, "Hyper-parameter Settings") repeats the
personified data 5 times and mixes it with general instruction-tuning data for one epoch. `mix_general` builds that
mix from the personified rows, `repeat` and the general rows' share of the result; `general_rows` turns a general
dataset's conversations (UltraChat's `messages` layout) into prompt-completion rows. The paper's code fine-tunes
every weight; `check_tuning` stops `full` with the reason this repository cannot (one GPU, LoRA-only trainer).

Automatic DPO. For each training answer the chosen side is the character's own answer; the rejected side is another
character's answer to a similar input: the inputs are embedded, the `skip_nearest` most similar inputs of other
characters are skipped (near-paraphrases whose answers may be as good) and the next one whose answer text differs is
taken. Where an input was answered in both stages, the other stage's answer to the same input is a second, stage
pair. Both aim at the paper's contrast: between characters and between stages.
"""
from __future__ import annotations

import json
import logging
import math
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lib.persllm.label import unit_rows

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


# --------------------------------------------------------------------------------------------- the training mix

TUNINGS = ("lora", "full")
# bf16 weights (2) and gradients (2), fp32 master weights (4) and AdamW's two moments (8): bytes per parameter of a
# mixed-precision full fine-tune, before activations. 8.0e9 parameters (Llama-3-8B) x 16 = 128 GB.
FULL_FT_BYTES_PER_PARAM = 16


def check_tuning(tuning: str, n_params: float = 8.0e9) -> str:
    """`sft.persllm.tuning`: "lora" passes; "full" (the paper code's full fine-tuning) is an error that says
    why it does not run here; anything else is an error naming the choices."""
    if tuning == "lora":
        return tuning
    if tuning == "full":
        need = n_params * FULL_FT_BYTES_PER_PARAM / 1e9
        raise NotImplementedError(
            f"sft.persllm.tuning: full — PersLLM's code fine-tunes every weight, but lib.train.sft trains "
            f"LoRA adapters only (lib.models.load_for_training wraps every model in peft, and 09_dpo/11_generate load "
            f"the SFT result as an adapter). A full fine-tune of {n_params / 1e9:.1f}B parameters needs "
            f"~{FULL_FT_BYTES_PER_PARAM} bytes per parameter (bf16 weights and gradients, fp32 master weights and "
            f"AdamW moments), ~{need:.0f} GB before activations: more than one 80 GB GPU. It needs a multi-GPU path "
            f"(DeepSpeed ZeRO-3 or FSDP, with optimizer offload), which this repository does not have; set "
            f"sft.persllm.tuning: lora")
    raise ValueError(f"sft.persllm.tuning = {tuning!r}; expected one of {TUNINGS}")


def general_source(general: Mapping) -> tuple[str, str]:
    """Which general instruction data `sft.persllm.general` names: ("dataset", a data-path: a Hub dataset file or a
    file under data.root) or ("standin", a file in this repository, the offline profiles' few pairs). Exactly one
    of the two keys is set."""
    given = [(key, general.get(key)) for key in ("dataset", "standin") if general.get(key)]
    if len(given) != 1:
        raise ValueError("sft.persllm.general: set exactly one of dataset (a Hub dataset file, paper) and standin (a "
                         f"file in this repository, cpu/tiny); got {dict(given) or 'neither'}")
    return given[0]


def read_conversations(path: str | Path) -> list:
    """The `messages` of every record of a general instruction dataset: a parquet file (UltraChat-200k's layout:
    prompt, prompt_id, messages) or JSON lines / a JSON list of {"messages": [{"role", "content"}, ...]}."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path, columns=["messages"])
        return [[dict(m) for m in msgs] for msgs in frame["messages"]]
    text = path.read_text(encoding="utf-8")
    records = json.loads(text) if path.suffix == ".json" else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    missing = [i for i, r in enumerate(records) if not isinstance(r, Mapping) or "messages" not in r]
    if missing:
        raise ValueError(f"{path}: records {missing[:5]} have no 'messages' list")
    return [list(r["messages"]) for r in records]


def general_rows(conversations: Sequence[Sequence[Mapping]], max_turns: int | None = 1) -> tuple[list[dict], Counter]:
    """Prompt-completion rows from general conversations: the first `max_turns` user turns with their replies
    (None: the whole conversation); the last kept reply is the completion (the loss), the turns before it the
    prompt. No system prompt: these rows are the model as itself. Returns (rows, drops by reason): a conversation
    that does not alternate user/assistant from a user turn, or has an empty turn, or no reply, is a counted drop."""
    if max_turns is not None and max_turns < 1:
        raise ValueError(f"sft.persllm.general.max_turns must be >= 1 or null, got {max_turns}")
    rows, drops = [], Counter()
    for i, conv in enumerate(conversations):
        msgs = [{"role": m.get("role"), "content": m.get("content")} for m in conv if m.get("role") != "system"]
        if max_turns is not None:
            msgs = msgs[:2 * max_turns]
        if len(msgs) % 2:
            msgs = msgs[:-1]  # a last user turn without its reply
        if not msgs:
            drops["no_reply"] += 1
            continue
        if any(m["role"] != ("user", "assistant")[k % 2] for k, m in enumerate(msgs)):
            drops["not_alternating"] += 1
            continue
        if any(not isinstance(m["content"], str) or not m["content"].strip() for m in msgs):
            drops["empty_turn"] += 1
            continue
        rows.append({"id": f"general-{i}", "kind": "general", "prompt": msgs[:-1], "completion": msgs[-1:]})
    return rows, drops


def mix_general(personified: Sequence[Mapping], general: Sequence[Mapping], repeat: int = 1, share: float = 0.0,
                seed: int = 0) -> tuple[list[dict], dict]:
    """The training rows: the personified rows `repeat` times, mixed with general rows that make up `share` of
    the result (n_general = round(share / (1 - share) * repeat * len(personified)), at least one when share > 0),
    drawn from `general` in a seeded order without replacement, and cycled (each pass reshuffled) when the
    dataset holds fewer than that. The mix is shuffled (seeded). Returns (rows, report); the report says how many
    general rows were mixed in and how many of them are distinct."""
    if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
        raise ValueError(f"sft.persllm.repeat must be an integer >= 1, got {repeat!r}")
    if not 0 <= share < 1:
        raise ValueError(f"sft.persllm.general.share must be in [0, 1), got {share!r}")
    rows = [{**r, "repeat": k} for k in range(repeat) for r in personified]
    n_general = round(share / (1 - share) * len(rows)) if rows else 0
    if share > 0 and rows:
        n_general = max(n_general, 1)
    if n_general and not general:
        raise ValueError(f"sft.persllm.general.share = {share} asks for {n_general} general rows, but the general "
                         "dataset gave none")
    rng = random.Random(f"{seed}-general")
    picked: list[Mapping] = []
    while len(picked) < n_general:
        order = list(range(len(general)))
        rng.shuffle(order)
        picked += [general[j] for j in order[:n_general - len(picked)]]
    passes = math.ceil(n_general / len(general)) if general else 0
    if passes > 1:
        log.warning("mix_general: %d general rows asked for, the dataset holds %d: each is used up to %d times",
                    n_general, len(general), passes)
    mixed = rows + [dict(g) for g in picked]
    random.Random(f"{seed}-mix").shuffle(mixed)
    report = {"personified_rows": len(personified), "repeat": repeat, "personified_rows_repeated": len(rows),
              "general_rows": n_general, "general_unique_rows": len({g["id"] for g in picked}),
              "general_available": len(general), "general_share": n_general / len(mixed) if mixed else 0.0}
    return mixed, report


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
