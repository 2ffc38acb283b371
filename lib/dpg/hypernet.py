"""DPG's hypernetwork: a personality prompt in, LoRA weights for every attention projection out.

DPG (arXiv 2404.07084) replaces "one LoRA per personality" with a network that writes the LoRA: the personality
prompt (Big-Five scores + character information) is encoded, and a hypernetwork maps that encoding, with a learned
embedding of each layer, to the low-rank factors A and B of the chosen projections of every layer. The base model
stays frozen; only the hypernetwork trains, end to end, with the language-model loss on the character's replies.
The paper gives no architecture, so this one is a choice (a parameter each, stated in the README):

    cond   = mean-pooled last hidden state of the frozen base over the personality prompt   (encode_prompts)
    z      = MLP(LayerNorm((cond - mu) / sigma))                            shared trunk, width `hidden`; mu, sigma
                                                                            over the training prompts with
                                                                            `normalize_cond` (else 0 and 1)
    A[l,m] = Linear_m^A([z ; e_l]) reshaped to r x in_m                    one head per module kind m
    B[l,m] = Linear_m^B([z ; e_l]) reshaped to out_m x r                   weights start at 0: the base, unchanged
    y      = W x + (lora_alpha / r) * B (A x)                              peft's scaling, per sample

Samples in one batch carry different generated LoRAs, so the update is applied per sample inside the batch by
batched matrix products (`PerSampleLoRA`), not by switching peft adapters. Usage:

    model, tok = load_for_inference(base_dir)
    hyper = HyperLoRA.for_model(model, ["q_proj", "v_proj"], cond_dim=model.config.hidden_size, r=8)
    attach(model, hyper.targets)                                  # wraps the projections once
    cond = encode_prompts(model, tok, persona_texts)              # [batch, hidden]
    with lora_weights(model, hyper(cond), hyper.scale):           # per-sample A, B for this batch
        logits = model(input_ids=ids, attention_mask=mask).logits

`train_hypernet` trains it on conversational rows (lib.dpg.rows `reply_rows`, personality prompt as the system turn),
resuming from its last checkpoint after a kill; `generate` decodes a batch with one generated LoRA per sample.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from lib import decoding

log = logging.getLogger(__name__)

_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
HYPER_FILE, CONFIG_FILE = "hypernet.pt", "hypernet_config.json"


# ---------------------------------------------------------------------------------------------------------------
# Applying per-sample LoRA weights inside a batch


class PerSampleLoRA(nn.Module):
    """A frozen nn.Linear plus, when weights are set, a different low-rank update for each sample of the batch."""

    def __init__(self, base: nn.Linear, key: tuple[int, str]):
        super().__init__()
        self.base, self.key = base, key
        self.A: torch.Tensor | None = None  # [batch, r, in]
        self.B: torch.Tensor | None = None  # [batch, out, r]
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.A is None:
            return y
        if x.shape[0] != self.A.shape[0]:
            raise ValueError(f"{self.key}: a batch of {x.shape[0]} rows but LoRA weights for {self.A.shape[0]} samples "
                             f"(one generated LoRA per row: repeat the weights for several samples per prompt)")
        low = torch.einsum("bti,bri->btr", x, self.A.to(x.dtype))
        return y + self.scale * torch.einsum("btr,bor->bto", low, self.B.to(x.dtype))


def target_shapes(model, target_modules: Sequence[str]) -> dict[tuple[int, str], tuple[int, int]]:
    """{(layer, module): (in_features, out_features)} for every target projection of the decoder layers."""
    shapes = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        layer = _LAYER_RE.search(name)
        if leaf in target_modules and layer and isinstance(module, (nn.Linear, PerSampleLoRA)):
            base = module.base if isinstance(module, PerSampleLoRA) else module
            shapes[(int(layer.group(1)), leaf)] = (base.in_features, base.out_features)
    missing = set(target_modules) - {m for _, m in shapes}
    if missing:
        raise ValueError(f"no decoder-layer linear named {sorted(missing)} in {type(model).__name__} "
                         f"(target_modules {list(target_modules)})")
    return dict(sorted(shapes.items()))


def attach(model, targets: Sequence[tuple[int, str]]) -> dict[tuple[int, str], PerSampleLoRA]:
    """Wrap each target projection in a PerSampleLoRA (idempotent); freeze the model. Returns the wrappers by key."""
    wanted = set(targets)
    wrappers = {}
    for name, module in list(model.named_modules()):
        leaf = name.rsplit(".", 1)[-1]
        layer = _LAYER_RE.search(name)
        if not layer or (int(layer.group(1)), leaf) not in wanted:
            continue
        key = (int(layer.group(1)), leaf)
        if isinstance(module, PerSampleLoRA):
            wrappers[key] = module
        elif isinstance(module, nn.Linear):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            wrappers[key] = PerSampleLoRA(module, key)
            setattr(parent, leaf, wrappers[key])
    if set(wrappers) != wanted:
        raise ValueError(f"targets not found in the model: {sorted(wanted - set(wrappers))}")
    for p in model.parameters():
        p.requires_grad_(False)
    model._dpg_wrappers = wrappers
    return wrappers


def _wrappers(model) -> dict[tuple[int, str], PerSampleLoRA]:
    wrappers = getattr(model, "_dpg_wrappers", None)
    if not wrappers:
        raise ValueError("the model has no per-sample LoRA wrappers: call lib.dpg.hypernet.attach(model, targets) first")
    return wrappers


@contextlib.contextmanager
def lora_weights(model, weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]], scale: float) -> Iterator:
    """Within the block every wrapped projection adds scale * B_i (A_i x) for sample i; outside, the base alone.

    `weights` maps (layer, module) to (A [batch, r, in], B [batch, out, r]); every wrapper must get weights.
    """
    wrappers = _wrappers(model)
    if set(weights) != set(wrappers):
        raise ValueError(f"weights for {len(weights)} projections, the model wraps {len(wrappers)}: "
                         f"missing {sorted(set(wrappers) - set(weights))[:4]}, unknown {sorted(set(weights) - set(wrappers))[:4]}")
    try:
        for key, (a, b) in weights.items():
            w = wrappers[key]
            if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[2]:
                raise ValueError(f"{key}: A {tuple(a.shape)} and B {tuple(b.shape)} are not [batch, r, in] and "
                                 f"[batch, out, r]")
            if a.shape[2] != w.base.in_features or b.shape[1] != w.base.out_features:
                raise ValueError(f"{key}: A {tuple(a.shape)}, B {tuple(b.shape)} do not fit a "
                                 f"{w.base.in_features} -> {w.base.out_features} projection")
            w.A, w.B, w.scale = a, b, scale
        yield
    finally:
        for w in wrappers.values():
            w.A = w.B = None


# ---------------------------------------------------------------------------------------------------------------
# The hypernetwork


class HyperLoRA(nn.Module):
    """Conditioning vectors [batch, cond_dim] -> {(layer, module): (A [batch, r, in], B [batch, out, r])}."""

    def __init__(self, shapes: dict[tuple[int, str], tuple[int, int]], cond_dim: int, r: int = 8,
                 lora_alpha: float = 16, hidden: int = 128, layer_dim: int = 32, dropout: float = 0.0,
                 normalize_cond: bool = False):
        super().__init__()
        if r < 1 or hidden < 1 or layer_dim < 1 or cond_dim < 1:
            raise ValueError(f"r, hidden, layer_dim and cond_dim must be >= 1 (got {r}, {hidden}, {layer_dim}, "
                             f"{cond_dim})")
        self.shapes = dict(sorted(shapes.items()))
        self.layers = sorted({layer for layer, _ in self.shapes})
        self.modules_ = sorted({m for _, m in self.shapes})
        for m in self.modules_:
            kinds = {self.shapes[k] for k in self.shapes if k[1] == m}
            if len(kinds) != 1:
                raise ValueError(f"{m}: layers differ in shape {sorted(kinds)}; one head per module kind needs one")
            if {layer for layer, mm in self.shapes if mm == m} != set(self.layers):
                raise ValueError(f"{m} is not a target in every layer")
        self.config = {"shapes": [[layer, m, *io] for (layer, m), io in self.shapes.items()], "cond_dim": cond_dim,
                       "r": r, "lora_alpha": lora_alpha, "hidden": hidden, "layer_dim": layer_dim, "dropout": dropout,
                       "normalize_cond": normalize_cond}
        self.r, self.scale, self.normalize_cond = r, lora_alpha / r, normalize_cond
        # Standardisation of the conditioning (fit_conditioning): identity until fitted, saved with the weights.
        self.register_buffer("cond_mean", torch.zeros(cond_dim))
        self.register_buffer("cond_scale", torch.ones(cond_dim))
        self.trunk = nn.Sequential(nn.LayerNorm(cond_dim), nn.Linear(cond_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                   nn.Linear(hidden, hidden), nn.GELU())
        self.layer_emb = nn.Embedding(len(self.layers), layer_dim)
        self.head_a = nn.ModuleDict()
        self.head_b = nn.ModuleDict()
        for m in self.modules_:
            n_in, n_out = next(io for (_, mm), io in self.shapes.items() if mm == m)
            self.head_a[m] = nn.Linear(hidden + layer_dim, r * n_in)
            self.head_b[m] = nn.Linear(hidden + layer_dim, n_out * r)
            # A as peft initialises it (Kaiming-uniform rows of scale 1/sqrt(in)); B at exactly zero, so the generated
            # LoRA starts as a no-op and training starts from the base model, as a fresh LoRA does.
            nn.init.uniform_(self.head_a[m].weight, -1 / math.sqrt(n_in * (hidden + layer_dim)),
                             1 / math.sqrt(n_in * (hidden + layer_dim)))
            nn.init.uniform_(self.head_a[m].bias, -1 / math.sqrt(n_in), 1 / math.sqrt(n_in))
            nn.init.zeros_(self.head_b[m].weight)
            nn.init.zeros_(self.head_b[m].bias)

    @classmethod
    def for_model(cls, model, target_modules: Sequence[str], **kwargs) -> HyperLoRA:
        return cls(target_shapes(model, target_modules), **kwargs)

    @property
    def targets(self) -> list[tuple[int, str]]:
        return list(self.shapes)

    @torch.no_grad()
    def fit_conditioning(self, cond: torch.Tensor, floor: float = 0.1) -> None:
        """With `normalize_cond`, standardise each conditioning feature by its mean and spread over the training
        prompts (`cond`: [n_prompts, cond_dim]); a no-op otherwise.

        Pooled hidden states of personality prompts that differ in a few digits are dominated by what all prompts
        share: centring removes that, so the trunk sees the differences. A feature's scale is floored at `floor` x
        the mean spread, so features that barely vary over the training prompts are not blown up for a new one.
        """
        if not self.normalize_cond:
            return
        if cond.dim() != 2 or cond.shape[1] != self.config["cond_dim"] or len(cond) < 2:
            raise ValueError(f"fit_conditioning needs [n >= 2, {self.config['cond_dim']}] conditioning vectors, got "
                             f"{tuple(cond.shape)}")
        cond = cond.float()
        std = cond.std(dim=0)
        self.cond_mean.copy_(cond.mean(dim=0))
        self.cond_scale.copy_(std.clamp(min=floor * float(std.mean()) + 1e-12))

    def forward(self, cond: torch.Tensor) -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
        if cond.dim() != 2 or cond.shape[1] != self.config["cond_dim"]:
            raise ValueError(f"conditioning must be [batch, {self.config['cond_dim']}], got {tuple(cond.shape)}")
        z = self.trunk((cond.float() - self.cond_mean) / self.cond_scale)       # [b, hidden]
        e = self.layer_emb.weight                                               # [L, layer_dim]
        h = torch.cat([z[:, None].expand(-1, len(self.layers), -1), e[None].expand(len(z), -1, -1)], -1)
        out = {}
        for m in self.modules_:
            n_in, n_out = next(io for (_, mm), io in self.shapes.items() if mm == m)
            a = self.head_a[m](h).view(len(z), len(self.layers), self.r, n_in)
            b = self.head_b[m](h).view(len(z), len(self.layers), n_out, self.r)
            for i, layer in enumerate(self.layers):
                out[(layer, m)] = (a[:, i], b[:, i])
        return out

    def save(self, out_dir: str | Path) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), out_dir / HYPER_FILE)
        (out_dir / CONFIG_FILE).write_text(json.dumps(self.config, indent=1))
        return out_dir

    @classmethod
    def load(cls, in_dir: str | Path) -> HyperLoRA:
        in_dir = Path(in_dir)
        if not (in_dir / CONFIG_FILE).exists():
            raise FileNotFoundError(f"no trained hypernetwork in {in_dir} (expected {CONFIG_FILE} and {HYPER_FILE})")
        cfg = json.loads((in_dir / CONFIG_FILE).read_text())
        shapes = {(layer, m): (n_in, n_out) for layer, m, n_in, n_out in cfg.pop("shapes")}
        hyper = cls(shapes, **cfg)
        hyper.load_state_dict(torch.load(in_dir / HYPER_FILE, map_location="cpu", weights_only=True))
        return hyper.eval()


# ---------------------------------------------------------------------------------------------------------------
# Conditioning: the frozen base reads the personality prompt


@torch.no_grad()
def encode_prompts(model, tokenizer, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    """Mean-pooled last hidden state of the frozen base (no LoRA) over each personality prompt: [n, hidden]."""
    if not texts:
        raise ValueError("no personality prompts to encode")
    out = []
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for lo in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[lo:lo + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"][..., None].float()
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return torch.cat(out).cpu()


# ---------------------------------------------------------------------------------------------------------------
# Rows -> tensors


def split_persona(row: dict, persona_in_context: bool) -> tuple[str, list[dict], list[dict]]:
    """(personality prompt, the chat the model reads, the completion) of a conversational row whose first message is
    the system turn holding the personality prompt. Without `persona_in_context` the model never reads the prompt:
    the personality reaches it only through the generated weights."""
    prompt = row.get("prompt")
    if not prompt or prompt[0].get("role") != "system" or not str(prompt[0].get("content", "")).strip():
        raise ValueError(f"row {row.get('sample_id', '?')}: the first prompt message must be the system turn holding "
                         f"the personality prompt")
    chat = prompt if persona_in_context else prompt[1:]
    if not chat:
        raise ValueError(f"row {row.get('sample_id', '?')}: nothing but the personality prompt to read")
    return prompt[0]["content"], chat, row.get("completion", [])


def tokenize_rows(rows: Sequence[dict], tokenizer, max_seq_length: int, persona_in_context: bool) -> list[dict]:
    """Per row: personality prompt text, input ids of the chat + completion, and labels on the completion only.

    Long rows lose their oldest context first, after the BOS the chat template starts them with (the completion is
    kept whole up to max_seq_length)."""
    out = []
    bos = decoding.template_bos_id(tokenizer)
    for i, row in enumerate(rows):
        persona, chat, completion = split_persona(row, persona_in_context)
        if not completion:
            raise ValueError(f"row {i}: no completion to learn")
        prompt_ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        full_ids = tokenizer.apply_chat_template(chat + completion, tokenize=True)
        if hasattr(prompt_ids, "input_ids") or isinstance(prompt_ids, dict):  # newer tokenizers return a BatchEncoding
            prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
        if full_ids[:len(prompt_ids)] != prompt_ids:
            raise ValueError(f"row {i}: the chat template does not render the prompt as a prefix of the conversation")
        answer = full_ids[len(prompt_ids):]
        # The template's leading BOS (Llama 3) stays when old context is cut: the model never sees a row without it.
        head = prompt_ids[:1] if bos is not None and prompt_ids[:1] == [bos] else []
        body = prompt_ids[len(head):]
        keep = max(0, max_seq_length - len(answer) - len(head))
        prompt_ids = head + (body[max(0, len(body) - keep):] if keep else [])
        answer = answer[:max_seq_length - len(head)]
        out.append({"persona": persona, "input_ids": prompt_ids + answer,
                    "labels": [-100] * len(prompt_ids) + answer})
    return out


def collate(batch: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # right padding: positions start at 0
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, r in enumerate(batch):
        n = len(r["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and their count."""
    shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:]
    loss = nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                                       ignore_index=-100, reduction="sum")
    return loss, int((shift_labels != -100).sum())


# ---------------------------------------------------------------------------------------------------------------
# Training


# As lib.train's trainers: keep the newest two checkpoints (the newest may be cut short by a kill).
CHECKPOINTS_KEPT = 2
_ARGS = {"learning_rate", "max_steps", "per_device_train_batch_size", "warmup_steps", "weight_decay", "logging_steps",
         "save_steps", "save_total_limit", "seed", "max_grad_norm", "lr_scheduler_type"}


def _check_train_args(args: dict) -> dict:
    unknown = set(args) - _ARGS
    if unknown:
        raise ValueError(f"unknown hypernetwork training arguments {sorted(unknown)} (accepted: {sorted(_ARGS)})")
    for key in ("learning_rate", "max_steps", "per_device_train_batch_size"):
        if key not in args:
            raise ValueError(f"hypernetwork training needs {key}")
    if args["max_steps"] < 1 or args["per_device_train_batch_size"] < 1:
        raise ValueError("max_steps and per_device_train_batch_size must be >= 1")
    if args.get("lr_scheduler_type", "cosine") not in ("cosine", "linear", "constant"):
        raise ValueError(f"lr_scheduler_type {args['lr_scheduler_type']!r}: cosine, linear or constant")
    if args.get("save_total_limit", CHECKPOINTS_KEPT) is None or args.get("save_total_limit", CHECKPOINTS_KEPT) < 1:
        raise ValueError(f"save_total_limit must be a positive number of checkpoints, got {args['save_total_limit']!r}:"
                         " the network and its optimizer state are saved every save_steps")
    return {"warmup_steps": 0, "weight_decay": 0.0, "logging_steps": 10, "save_steps": 50, "seed": 0,
            "save_total_limit": CHECKPOINTS_KEPT, "max_grad_norm": 1.0, "lr_scheduler_type": "cosine", **args}


def _lr_factor(step: int, args: dict) -> float:
    warm, total = args["warmup_steps"], args["max_steps"]
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    kind = args["lr_scheduler_type"]
    return 1.0 if kind == "constant" else (1 - progress) if kind == "linear" else 0.5 * (1 + math.cos(math.pi * progress))


def _batch_order(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Row indices of a step's batch: a seeded shuffle per epoch, so a resumed run sees the same batches."""
    per_epoch = max(1, math.ceil(n / batch_size))
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
    return perm[k * batch_size:(k + 1) * batch_size]


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    found = _checkpoints(ckpt_dir)
    return found[-1] if found else None


def _save_checkpoint(state: dict, ckpt_dir: Path, keep: int) -> None:
    """Write step-N.pt whole or not at all (a temporary file renamed into place), then delete all but the newest
    `keep`: each holds the network and its AdamW state, which on the paper profile is most of a gigabyte."""
    final = ckpt_dir / f"step-{state['step']}.pt"
    partial = final.with_name(final.name + ".partial")
    torch.save(state, partial)
    os.replace(partial, final)
    for old in _checkpoints(ckpt_dir)[:-keep]:
        old.unlink()


def _conditioning(model, tokenizer, personas: Sequence[str]) -> dict[str, torch.Tensor]:
    unique = sorted(set(personas))
    return dict(zip(unique, encode_prompts(model, tokenizer, unique)))


def evaluate_loss(model, tokenizer, hyper: HyperLoRA | None, rows: list[dict], batch_size: int = 8,
                  cond: dict[str, torch.Tensor] | None = None) -> float:
    """Mean per-token loss on tokenized rows, with each row's generated LoRA (`hyper`) or the base alone (None)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    cond = cond or (_conditioning(model, tokenizer, [r["persona"] for r in rows]) if hyper is not None else {})
    total, count = 0.0, 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(rows), batch_size):
            chunk = rows[lo:lo + batch_size]
            batch = {k: v.to(model.device) for k, v in collate(chunk, pad).items()}
            if hyper is None:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            else:
                weights = hyper(torch.stack([cond[r["persona"]] for r in chunk]).to(model.device))
                with lora_weights(model, weights, hyper.scale):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, n = lm_loss(logits, batch["labels"])
            total, count = total + loss.item(), count + n
    model.train(was)
    return total / max(count, 1)


def train_hypernet(model, tokenizer, train_rows: list[dict], eval_rows: list[dict] | None, out_dir: str | Path,
                   hyper_cfg: dict, args: dict, max_seq_length: int = 256, persona_in_context: bool = False,
                   stop_after: int | None = None) -> dict:
    """Train a HyperLoRA on conversational rows with the base frozen; resume from out_dir/checkpoints after a kill.

    `hyper_cfg`: target_modules plus HyperLoRA's keyword arguments (r, lora_alpha, hidden, layer_dim, dropout).
    `args`: learning_rate, max_steps, per_device_train_batch_size, warmup_steps, weight_decay, logging_steps,
    save_steps, save_total_limit, seed, max_grad_norm, lr_scheduler_type (the names of transformers'
    TrainingArguments; at most save_total_limit checkpoints are kept, 2 unless set).
    `stop_after` ends the run after that many steps as a kill would (tests): the checkpoint saved at that step is
    where the next call resumes. Writes out_dir/hypernet (the trained network) and train_metrics.json.
    """
    if not train_rows:
        raise ValueError("no training rows for the hypernetwork")
    args = _check_train_args(args)
    hyper_cfg = dict(hyper_cfg)
    target_modules = hyper_cfg.pop("target_modules")
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args["seed"])
    hyper = HyperLoRA.for_model(model, target_modules, cond_dim=model.config.hidden_size, **hyper_cfg)
    attach(model, hyper.targets)
    train = tokenize_rows(train_rows, tokenizer, max_seq_length, persona_in_context)
    evals = tokenize_rows(eval_rows or [], tokenizer, max_seq_length, persona_in_context)
    cond = _conditioning(model, tokenizer, [r["persona"] for r in train + evals])
    opt = torch.optim.AdamW(hyper.parameters(), lr=args["learning_rate"], weight_decay=args["weight_decay"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    step, history, elapsed = 0, [], 0.0
    prompts = sorted({r["persona"] for r in train})
    if hyper.normalize_cond and len(prompts) < 2:
        log.warning("one personality prompt in the training rows: its conditioning is left unnormalised")
    elif hyper.normalize_cond:  # from the training prompts only; a resumed run gets the same from its checkpoint
        hyper.fit_conditioning(torch.stack([cond[p] for p in prompts]))
    ckpt = _latest_checkpoint(ckpt_dir)
    if ckpt is not None:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        hyper.load_state_dict(state["hyper"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step, history, elapsed = state["step"], state["history"], state["elapsed"]
        log.info("resumed the hypernetwork from %s (step %d)", ckpt.name, step)
    hyper.to(model.device).train()
    model.eval()  # the base is frozen; its dropout stays off
    start = time.perf_counter()
    while step < args["max_steps"]:
        if stop_after is not None and step >= stop_after:
            return {"stopped_at": step}
        chunk = [train[i] for i in _batch_order(len(train), args["per_device_train_batch_size"], step, args["seed"])]
        batch = {k: v.to(model.device) for k, v in collate(chunk, pad).items()}
        for group in opt.param_groups:
            group["lr"] = args["learning_rate"] * _lr_factor(step, args)
        weights = hyper(torch.stack([cond[r["persona"]] for r in chunk]).to(model.device))
        with lora_weights(model, weights, hyper.scale):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, n = lm_loss(logits, batch["labels"])
        loss = loss / max(n, 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(hyper.parameters(), args["max_grad_norm"]).item()
        opt.step()
        step += 1
        history.append({"step": step, "loss": loss.item(), "grad_norm": grad_norm})
        if step % args["logging_steps"] == 0:
            log.info("step %d: loss %.4f", step, loss.item())
        if step % args["save_steps"] == 0 or step == args["max_steps"]:
            _save_checkpoint({"hyper": hyper.state_dict(), "optimizer": opt.state_dict(),
                              "rng": torch.get_rng_state(), "step": step, "history": history,
                              "elapsed": elapsed + time.perf_counter() - start}, ckpt_dir, args["save_total_limit"])
    runtime = elapsed + time.perf_counter() - start
    hyper.eval()
    hyper.save(out_dir / "hypernet")
    tail = history[-max(1, len(history) // 5):]  # mean over the last fifth of the steps: a less noisy end point
    metrics = {"steps": step, "train_loss": sum(h["loss"] for h in tail) / len(tail),
               "first_loss": history[0]["loss"], "train_runtime_s": runtime, "rows": len(train),
               "personas": len({r["persona"] for r in train}),
               "hypernet_parameters": sum(p.numel() for p in hyper.parameters()),
               "log_history": history}
    if evals:
        metrics["eval_loss"] = evaluate_loss(model, tokenizer, hyper, evals, cond=cond)
        metrics["base_eval_loss"] = evaluate_loss(model, tokenizer, None, evals)
    (out_dir / "train_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


# ---------------------------------------------------------------------------------------------------------------
# Generation


@torch.no_grad()
def generate(model, tokenizer, hyper: HyperLoRA | None, chats: list[list[dict]], personas: Sequence[str] | None,
             max_new_tokens: int = 40, batch_size: int = 8, temperature: float = 0.0, top_p: float = 1.0,
             seed: int = 0) -> list[str]:
    """Replies to `chats`, sample i decoded with the LoRA generated from personas[i] (or the base when hyper is None).

    Greedy at temperature 0; otherwise sampled. Stop ids, seeding per batch and the explicit settings are
    lib.decoding's, as for every other generation routine here.
    """
    if hyper is not None and (personas is None or len(personas) != len(chats)):
        raise ValueError(f"{len(chats)} chats need as many personality prompts (got "
                         f"{None if personas is None else len(personas)})")
    sampling = decoding.Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    cond = _conditioning(model, tokenizer, personas) if hyper is not None else {}

    def with_generated_lora(lo: int, hi: int):
        if hyper is None:
            return contextlib.nullcontext()
        return lora_weights(model, hyper(torch.stack([cond[p] for p in personas[lo:hi]]).to(model.device)), hyper.scale)

    out = decoding.generate_ids(model, tokenizer, decoding.chat_prompt_ids(tokenizer, chats), sampling,
                                batch_size=batch_size, batch_context=with_generated_lora)
    return decoding.decode(tokenizer, out.ids)
