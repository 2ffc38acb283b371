"""LoRA fine-tuning of the student model over trl, resumable from checkpoints.

Usage (from a notebook or DVC stage):
    metrics = sft(model_dir, train_rows, eval_rows, out_dir, lora=params["lora"], args=params["sft"])
    metrics = dpo(model_dir, train_pairs, eval_pairs, out_dir, lora=params["lora"], args=params["args"])
`lora` keys are peft.LoraConfig argument names and `args` keys are trl.SFTConfig / trl.DPOConfig argument names, so
params files map one-to-one onto the libraries (tests/test_api_drift.py fails loudly if a library renames one). Outputs:
out_dir/checkpoints/checkpoint-N (resume points), out_dir/adapter (final adapter + tokenizer) and
out_dir/train_metrics.json. Rerunning after a kill resumes from the latest checkpoint.

trl/transformers are imported inside the functions, after lib.models.load_for_training, so that on a GPU box with
unsloth installed, unsloth is imported first. Both trainers share validation, resuming, saving and metrics.
"""
from __future__ import annotations

import json
import logging
import math
import resource
from collections.abc import Callable
from pathlib import Path

from lib.models import launched_processes, load_for_training

log = logging.getLogger(__name__)

# Arguments that sft sets itself; accepting them from params would silently fight with the function's own choices.
_RESERVED_ARGS = {"output_dir": "out_dir", "report_to": "(always [] here)", "max_length": "max_seq_length"}


def check_args(args: dict) -> None:
    """Reject trainer arguments that this module controls, naming the parameter to use instead."""
    for key, instead in _RESERVED_ARGS.items():
        if key in args:
            raise ValueError(f"trainer args must not set {key!r}; use {instead} instead")


def check_inputs(train_rows: list[dict], eval_rows: list[dict] | None, args: dict,
                 check: Callable[[list[dict], str], list[dict]]) -> tuple[list[dict], list[dict]]:
    """What every trainer here checks first: some training rows, accepted args, and each split's rows by `check`."""
    if not train_rows:
        raise ValueError("no training rows")
    check_args(args)
    return check(train_rows, "train"), check(eval_rows or [], "eval")


def check_rows(rows: list[dict], split: str) -> list[dict]:
    """Validate conversational prompt-completion rows and keep only the columns the trainer consumes."""
    clean = []
    for i, row in enumerate(rows):
        rid = row.get("id", f"#{i}") if isinstance(row, dict) else f"#{i}"
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), list) or not row["prompt"]:
            raise ValueError(f"{split} row {rid}: 'prompt' must be a non-empty list of chat messages")
        completion = row.get("completion")
        if not isinstance(completion, list) or not completion or any(
                not isinstance(m, dict) or m.get("role") != "assistant" for m in completion):
            raise ValueError(f"{split} row {rid}: 'completion' must be a non-empty list of assistant messages")
        clean.append({"prompt": row["prompt"], "completion": completion})
    return clean


def default_precision(args: dict) -> dict:
    """trl defaults to bf16=True even on CPU (slow autocast there); default it to what the GPU supports instead.

    Half precision asked for where there is no GPU (the paper's bf16 on a CPU machine) is dropped with a warning:
    transformers refuses it there, and float32 computes the same training, only slower.
    """
    import torch

    if not torch.cuda.is_available():
        # use_cpu also makes a launch of several processes (accelerate launch, torchrun) one CPU-distributed run
        # (gloo) that shards the data; without it transformers sets up no distributed state on a CPU machine and
        # every process trains a whole copy of its own.
        args = {**args, "use_cpu": True}
        if args.get("bf16") or args.get("fp16"):
            log.warning("bf16/fp16 asked for but there is no GPU: training in float32")
            return {**args, "bf16": False, "fp16": False}
    if "bf16" in args or "fp16" in args:
        return args
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {**args, "bf16": bf16, "fp16": torch.cuda.is_available() and not bf16}


# Checkpoints here exist only to resume a killed run: the newest two are kept (the newest may be half-written when the
# kill lands), and lib.report.mark_complete deletes them once the stage has finished. Params may set another limit.
CHECKPOINTS_KEPT = 2


def bounded_checkpoints(args: dict) -> dict:
    """`args` with transformers' `save_total_limit` defaulted to CHECKPOINTS_KEPT, so no run fills a disk."""
    limit = args.get("save_total_limit", CHECKPOINTS_KEPT)
    if limit is None or limit < 1:
        raise ValueError(f"save_total_limit must be a positive number of checkpoints, got {limit!r}: an unbounded "
                         "run saves a checkpoint every save_steps until the disk is full")
    return {**args, "save_total_limit": limit}


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """Latest checkpoint-N directory under checkpoint_dir, or None when training starts fresh."""
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None


def peak_memory_mb() -> float:
    """Peak GPU memory allocated by torch, or on CPU the process's peak resident set size (process lifetime)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class _TorchLogProbHead:
    """Plain-torch stand-in for trl's Triton `ChunkedLogProbFunction` (same arguments and outputs).

    trl 1.15's SFTTrainer always computes the loss through a fused LM head whose kernel needs Triton and a GPU; on a
    CPU-only torch the kernel is None and training crashes. This materializes the logits of the supervised tokens
    only (the caller already masked out the prompt), which costs memory but is exact, and autograd gives the backward.
    """

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
        import torch

        logits = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
        if final_logit_softcapping is not None:
            logits = final_logit_softcapping * torch.tanh(logits / final_logit_softcapping)
        logits = logits / temperature
        logp = torch.log_softmax(logits, dim=-1)
        log_probs = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1) if "entropy" in outputs else None
        log_sum_sq = torch.logsumexp(2 * logp, dim=-1).detach() if "log_sum_sq_probs" in outputs else None
        mean_logits = logits.mean(-1).detach() if "mean_logits" in outputs else None
        # argmax returns the first maximum, matching the kernel's tie rule (target strictly above earlier logits)
        is_top1 = (logits.argmax(-1) == targets) if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1


def _ensure_logprob_head() -> None:
    """Install the plain-torch LM-head loss when trl's Triton kernel is unavailable (CPU-only torch)."""
    import trl.trainer.utils as trl_utils

    if not hasattr(trl_utils, "_ChunkedLogProbFunction"):
        raise RuntimeError("trl.trainer.utils._ChunkedLogProbFunction is gone (trl upgraded?); revisit "
                           "lib.train._ensure_logprob_head, which CPU training relies on")
    if trl_utils._ChunkedLogProbFunction is None:
        log.info("trl's Triton LM-head kernel is unavailable; using the plain-torch fallback")
        trl_utils._ChunkedLogProbFunction = _TorchLogProbHead


def write_train_metrics(out_dir: Path, name: str, metrics: dict) -> None:
    """Write metrics as pretty JSON (small, diffable, read by DVC `metrics`)."""
    (out_dir / name).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def added_prefix_ids(tokenizer) -> list[int]:
    """The ids the tokenizer itself puts before any text when special tokens are on (Llama 3's post-processor
    prepends <|begin_of_text|>; ChatML tokenizers put nothing)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return list(full[:k])
    raise ValueError(f"tokenizer {tokenizer.name_or_path!r} changes a text's own tokens when it adds special tokens")


def render_rows(rows: list[dict], tokenizer) -> list[dict]:
    """Conversational rows (prompt + completion, or prompt + chosen/rejected) as plain strings, through the chat
    template: the prompt with the assistant header, each answer as the text the template appends after it.

    trl renders conversational rows the same way internally; the string form is what Unsloth's trainers accept.
    trl 1.15 tokenizes string rows WITH special tokens, so whatever the tokenizer adds itself (Llama 3's BOS) is
    taken off the front of the rendered prompt here: each row then holds the template's BOS exactly once.
    """
    prefix = tokenizer.decode(added_prefix_ids(tokenizer))
    out = []
    for i, row in enumerate(rows):
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        rendered = {"prompt": prompt}
        for key in ("completion", "chosen", "rejected"):
            if key not in row:
                continue
            full = tokenizer.apply_chat_template(row["prompt"] + row[key], tokenize=False)
            if not full.startswith(prompt):
                raise ValueError(f"row {i}: the chat template does not render the prompt as a prefix of the whole "
                                 f"conversation, so its {key} cannot be separated from it")
            rendered[key] = full[len(prompt):]
        if prefix and prompt.startswith(prefix):
            rendered["prompt"] = prompt[len(prefix):]
        out.append(rendered)
    return out


def leading_bos(ids: list[int], bos_id: int | None) -> int:
    """How many BOS ids a token row starts with."""
    n = 0
    while bos_id is not None and n < len(ids) and ids[n] == bos_id:
        n += 1
    return n


def check_one_bos(dataset, tokenizer, column: str) -> int:
    """Fail unless every tokenized training row starts with one BOS where the chat template writes one (Llama 3):
    two when the tokenizer's own BOS was kept as well, none when a trainer dropped special tokens and the template's
    was stripped (render_rows). Returns the first row's count, written to the metrics."""
    from lib import decoding

    bos, want = tokenizer.bos_token_id, decoding.template_bos_id(tokenizer)
    counts = [leading_bos(ids[:4], bos) for ids in dataset[column]]
    bad = [i for i, n in enumerate(counts) if n > 1 or (want is not None and n != 1)]
    if bad:
        raise ValueError(f"{len(bad)} of {len(counts)} training rows start with {counts[bad[0]]} BOS tokens "
                         f"({tokenizer.bos_token!r}; first: row {bad[0]}), not one: the chat template's BOS and the "
                         "tokenizer's own were both kept, or neither")
    return counts[0] if counts else 0


def _check_pairs(pairs: list[dict], split: str) -> list[dict]:
    """Validate conversational preference rows (prompt, chosen, rejected) and keep only those three columns."""
    clean = []
    for i, row in enumerate(pairs):
        rid = row.get("id", f"#{i}") if isinstance(row, dict) else f"#{i}"
        if not isinstance(row, dict) or not _is_chat(row.get("prompt")):
            raise ValueError(f"{split} pair {rid}: 'prompt' must be a non-empty list of chat messages")
        for side in ("chosen", "rejected"):
            if not _is_chat(row.get(side)) or any(m["role"] != "assistant" for m in row[side]):
                raise ValueError(f"{split} pair {rid}: {side!r} must be a non-empty list of assistant messages")
        clean.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
    return clean


def _is_chat(messages) -> bool:
    """A non-empty list of {"role": str, "content": str} messages (trl's conversational format)."""
    return isinstance(messages, list) and bool(messages) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages)


# Evaluation results kept in the metrics (trl's DPO names; SFT reports only the loss).
_EVAL_METRICS = ("eval_loss", "eval_rewards/accuracies", "eval_rewards/margins")


def _planned_steps(trainer) -> int:
    """The optimizer steps the trainer's arguments ask for in all (max_steps, or epochs x steps per epoch)."""
    return trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]


def _restore_finished(trainer, checkpoint: str) -> None:
    """Load a finished run's adapter weights and trainer state from its last checkpoint, without training.

    transformers 5.17 resumed at max_steps in the middle of an epoch still takes one more step before it checks the
    limit, so a rerun of a finished run must not call train() at all.
    """
    from transformers import TrainerState

    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    trainer.model.load_adapter(checkpoint, adapter_name=trainer.model.active_adapter)


def _train_and_save(trainer, tokenizer, out_dir: Path, backend: str, evaluate: bool) -> dict:
    """Train (resuming from the latest checkpoint), save adapter + tokenizer to out_dir/adapter; the common metrics.

    Shared by sft and dpo: the trainer's output_dir is the checkpoint directory. A run whose checkpoint already
    holds every planned step is not trained again; its train_loss is then None.
    """
    resume = last_checkpoint(Path(trainer.args.output_dir))
    start_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
    train_loss, runtime, samples_per_s = None, 0.0, None
    if resume and start_step >= _planned_steps(trainer):
        log.info("%s already holds all planned steps (%d); not training", resume, start_step)
        _restore_finished(trainer, resume)
    else:
        if resume:
            log.info("resuming from %s (step %d)", resume, start_step)
        result = trainer.train(resume_from_checkpoint=resume)
        # transformers divides this run's summed loss by the total global step, which under-reports after a resume;
        # rescale to the mean over the steps actually run in this call.
        train_loss = result.training_loss * trainer.state.global_step / (trainer.state.global_step - start_step)
        runtime, samples_per_s = result.metrics["train_runtime"], result.metrics["train_samples_per_second"]
        if not math.isfinite(train_loss):
            log.warning("train loss is not finite: %s", train_loss)

    adapter_dir = out_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # a PeftModel saves only the adapter weights + adapter_config.json
    if trainer.is_world_process_zero():  # one writer when several processes train one model
        tokenizer.save_pretrained(str(adapter_dir))
    metrics = {
        "train_loss": train_loss,
        "steps": trainer.state.global_step,
        "resumed_from_step": start_step,
        "train_runtime_s": runtime,
        "samples_per_s": samples_per_s,
        "backend": backend,
        "peak_memory_mb": peak_memory_mb(),
    }
    if evaluate:
        metrics |= {k: v for k, v in trainer.evaluate().items() if k in _EVAL_METRICS}
        # The same held-out rows under the untrained base (adapter off): did training learn anything that generalises?
        with trainer.model.disable_adapter():
            metrics |= {f"base_{k}": v for k, v in trainer.evaluate().items() if k in _EVAL_METRICS}
    return metrics


def sft(model_path: str | Path, train_rows: list[dict], eval_rows: list[dict] | None, out_dir: str | Path,
        lora: dict, args: dict, max_seq_length: int = 512, load_in_4bit: bool = False,
        accelerate_config: str | Path | None = None) -> dict:
    """LoRA-SFT on conversational prompt-completion rows (loss on the completion only); resumes after a kill.

    With `accelerate_config` (a file under configs/accelerate/), the processes it names train the model together
    (`launch`); the metrics are rank 0's."""
    if accelerate_config is not None and launched_processes() == 1:
        return launch("sft", {"model_path": model_path, "train_rows": train_rows, "eval_rows": eval_rows,
                              "out_dir": out_dir, "lora": lora, "args": args, "max_seq_length": max_seq_length,
                              "load_in_4bit": load_in_4bit}, accelerate_config)
    train, evals = check_inputs(train_rows, eval_rows, args, check_rows)
    out_dir = Path(out_dir)

    # Model first: on a GPU box this imports unsloth, which must precede trl/transformers.
    seed = args.get("seed", 42)  # trl's default seed, so unset seeds still reproduce
    model, tokenizer, backend = load_for_training(model_path, lora, max_seq_length, load_in_4bit, seed=seed,
                                                  gradient_checkpointing=bool(args.get("gradient_checkpointing")))
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _ensure_logprob_head()
    if backend == "unsloth":
        # Unsloth's patched SFTTrainer rejects conversational prompt-completion rows without a formatting_func; it
        # accepts them rendered to strings, which is what trl does with them itself, so the loss stays the same.
        train, evals = render_rows(train, tokenizer), render_rows(evals, tokenizer)

    # Loss on the completion only (trl's default for prompt-completion rows too; explicit so it cannot drift).
    config = SFTConfig(output_dir=str(out_dir / "checkpoints"), report_to=[], max_length=max_seq_length,
                       **{"completion_only_loss": True, **default_precision(bounded_checkpoints(args))})
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(evals) if evals else None, processing_class=tokenizer)
    if len(trainer.train_dataset) == 0:  # trl drops a row whose completion truncation cut off entirely
        raise ValueError(f"all {len(train)} training rows were dropped: their prompts fill max_seq_length="
                         f"{max_seq_length} tokens, leaving no completion to learn; raise max_seq_length")
    bos = check_one_bos(trainer.train_dataset, tokenizer, "input_ids")
    metrics = _train_and_save(trainer, tokenizer, out_dir, backend, evaluate=bool(evals)) | {"leading_bos": bos}
    if trainer.is_world_process_zero():
        write_train_metrics(out_dir, "train_metrics.json", metrics | _world(trainer))
    return metrics


def _last_logged(log_history: list[dict], key: str) -> float | None:
    """The last value of `key` in a trainer's log history (None when never logged)."""
    values = [entry[key] for entry in log_history if key in entry]
    return values[-1] if values else None


# LoRA initialisations whose fresh adapter is a no-op (B = 0): the adapter-disabled model is then the starting policy.
_NO_OP_LORA_INITS = (True, "gaussian")


def _use_base_as_reference(model) -> None:
    """Drop trl's "ref" adapter so that DPO scores the reference with the adapter disabled (the base model).

    trl 1.15 copies the adapter of a PeftModel into a frozen "ref" adapter. Checkpoints then hold two adapters, and
    transformers' resume loads only the sub-folder ones ("ref"), silently restarting the policy from its initial
    weights. For a no-op initial adapter (checked in dpo) the base model is the same reference.
    """
    if "ref" in model.peft_config:
        model.delete_adapter("ref")


def preference_rewards(model, tokenizer, pairs: list[dict], beta: float, batch_size: int = 8) -> list[dict]:
    """Per pair, DPO's implicit rewards beta * (log pi(y|x) - log pi_ref(y|x)) of its chosen and rejected answers.

    `model` is a PeftModel holding the trained adapter; the reference is the same model with the adapter disabled,
    as in `dpo`. Pairs are rendered by the chat template exactly as `render_rows` does (the answer is what the
    template appends after the prompt with its assistant header, end-of-turn tokens included) and log-probabilities
    are summed over the answer's tokens, so the mean accuracy and margin equal trl's eval metrics. Per pair, so that
    held-out preference accuracy and margin can carry an interval over pairs.
    """
    import torch

    rendered = render_rows(_check_pairs(pairs, "scored"), tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    seqs = []  # (pair index, side, prompt ids, answer ids)
    for i, row in enumerate(rendered):
        prompt_ids = tokenizer(row["prompt"])["input_ids"]  # as trl tokenizes a rendered prompt (render_rows)
        for side in ("chosen", "rejected"):
            answer_ids = tokenizer(row[side], add_special_tokens=False)["input_ids"]
            if not answer_ids:
                raise ValueError(f"pair #{i}: the {side} answer renders to no tokens")
            seqs.append((i, side, prompt_ids, answer_ids))

    def logps(adapter_on: bool) -> list[float]:
        out = []
        for lo in range(0, len(seqs), batch_size):
            chunk = seqs[lo:lo + batch_size]
            rows = [p + a for _, _, p, a in chunk]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), pad, dtype=torch.long)  # right padding: positions start at 0
            mask = torch.zeros_like(ids)
            for r, row in enumerate(rows):
                ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
            ids, mask = ids.to(model.device), mask.to(model.device)
            with torch.inference_mode():
                if adapter_on:
                    logits = model(input_ids=ids, attention_mask=mask).logits
                else:
                    with model.disable_adapter():
                        logits = model(input_ids=ids, attention_mask=mask).logits
            token_logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            for r, (_, _, p, a) in enumerate(chunk):
                out.append(token_logp[r, len(p) - 1:len(p) - 1 + len(a)].sum().item())
        return out

    was_training = model.training
    model.eval()
    try:
        policy, reference = logps(True), logps(False)
    finally:
        model.train(was_training)
    rewards = [{} for _ in rendered]
    for (i, side, _, _), lp, ref in zip(seqs, policy, reference):
        rewards[i][f"{side}_reward"] = beta * (lp - ref)
    for r in rewards:
        r["margin"] = r["chosen_reward"] - r["rejected_reward"]
        r["correct"] = r["margin"] > 0
    return rewards


def dpo(model_path: str | Path, train_pairs: list[dict], eval_pairs: list[dict] | None, out_dir: str | Path,
        lora: dict, args: dict, max_seq_length: int = 512, load_in_4bit: bool = False,
        accelerate_config: str | Path | None = None) -> dict:
    """LoRA-DPO on conversational preference pairs (prompt, chosen, rejected); resumes after a kill.

    `args` are trl.DPOConfig names (`beta` among them; the paper uses 0.1). No second model is loaded: the reference
    is the policy's base with the adapter disabled, which equals the starting policy because a fresh LoRA is a no-op.
    `accelerate_config` as in `sft`.
    """
    if accelerate_config is not None and launched_processes() == 1:
        return launch("dpo", {"model_path": model_path, "train_pairs": train_pairs, "eval_pairs": eval_pairs,
                              "out_dir": out_dir, "lora": lora, "args": args, "max_seq_length": max_seq_length,
                              "load_in_4bit": load_in_4bit}, accelerate_config)
    if not train_pairs:
        raise ValueError("no training pairs")
    check_args(args)
    if lora.get("init_lora_weights", True) not in _NO_OP_LORA_INITS:
        raise ValueError(f"dpo needs a no-op initial adapter (init_lora_weights in {_NO_OP_LORA_INITS}), got "
                         f"{lora['init_lora_weights']!r}: the adapter-disabled reference would not be the start model")
    train = _check_pairs(train_pairs, "train")
    evals = _check_pairs(eval_pairs or [], "eval")
    out_dir = Path(out_dir)

    seed = args.get("seed", 42)
    model, tokenizer, backend = load_for_training(model_path, lora, max_seq_length, load_in_4bit, seed=seed,
                                                  gradient_checkpointing=bool(args.get("gradient_checkpointing")))
    if backend == "unsloth":
        from unsloth import PatchDPOTrainer

        PatchDPOTrainer()  # as Unsloth documents: before DPOTrainer is imported
        train, evals = render_rows(train, tokenizer), render_rows(evals, tokenizer)
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    _ensure_logprob_head()  # DPO scores sequences through the same fused LM head as SFT

    config = DPOConfig(output_dir=str(out_dir / "checkpoints"), report_to=[], max_length=max_seq_length,
                       **default_precision(bounded_checkpoints(args)))
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=Dataset.from_list(train),
                         eval_dataset=Dataset.from_list(evals) if evals else None, processing_class=tokenizer)
    _use_base_as_reference(trainer.model)
    kept = len(trainer.train_dataset)  # trl drops pairs whose prompt alone fills max_length
    if kept == 0:
        raise ValueError(f"all {len(train)} training pairs were dropped: their prompts fill max_seq_length="
                         f"{max_seq_length} tokens; raise max_seq_length")
    if kept < len(train):
        log.warning("%d of %d training pairs dropped: prompt longer than max_seq_length=%d",
                    len(train) - kept, len(train), max_seq_length)
    bos = check_one_bos(trainer.train_dataset, tokenizer, "prompt_ids")
    metrics = _train_and_save(trainer, tokenizer, out_dir, backend, evaluate=bool(evals))
    history = trainer.state.log_history
    metrics |= {"train_pairs_kept": kept, "beta": config.beta, "leading_bos": bos,
                "reward_accuracy": _last_logged(history, "rewards/accuracies"),
                "reward_margin": _last_logged(history, "rewards/margins")}
    if trainer.is_world_process_zero():
        write_train_metrics(out_dir, "train_metrics.json", metrics | _world(trainer))
    return metrics


def _world(trainer) -> dict:
    """How many processes trained the model together, recorded only when more than one did (a launch through
    accelerate or torchrun), so a single-process run's metrics file is as before."""
    n = trainer.args.world_size
    return {"processes": n, "distributed": str(trainer.accelerator.distributed_type)} if n > 1 else {}


# ---------------------------------------------------------------------------------------------------------------
# Training in a process of its own

def sft_apart(model_path: str | Path, train_rows: list[dict], eval_rows: list[dict] | None, out_dir: str | Path,
              lora: dict, args: dict, max_seq_length: int = 512, load_in_4bit: bool = False,
              accelerate_config: str | Path | None = None) -> dict:
    """`sft` in a fresh Python process; its metrics.

    Loading a model through Unsloth patches transformers and peft for the rest of the process (peft's
    PeftModelForCausalLM.forward among them, which then drops a mixed batch's adapter names). A stage that trains and
    then decodes with several adapters in one kernel (07's DExperts) trains here, so its kernel never loads Unsloth.
    With `accelerate_config`, in the processes that config names.
    """
    return launch("sft", {"model_path": model_path, "train_rows": train_rows, "eval_rows": eval_rows,
                          "out_dir": out_dir, "lora": lora, "args": args, "max_seq_length": max_seq_length,
                          "load_in_4bit": load_in_4bit}, accelerate_config)


def launch(task: str, request: dict, accelerate_config: str | Path | None = None) -> dict:
    """`sft` or `dpo` (`task`) with `request` as its arguments, in processes of their own; the metrics it wrote.

    Without `accelerate_config`, one fresh Python process (`python -m lib.train TASK REQUEST.json`). With one (e.g.
    configs/accelerate/fsdp_qlora.yaml), `accelerate launch --config_file …`: the processes it names train one model
    together and rank 0 writes the adapter and the metrics. The request's rows travel in a JSON file beside out_dir.
    """
    import os
    import subprocess
    import sys
    import tempfile

    if task not in ("sft", "dpo"):
        raise ValueError(f"task must be 'sft' or 'dpo', got {task!r}")
    out_dir = Path(request["out_dir"]).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    model_path = request["model_path"]
    request = {**request, "out_dir": str(out_dir),  # else a Hub id
               "model_path": str(Path(model_path).resolve() if Path(model_path).exists() else model_path)}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=out_dir.parent, delete=False,
                                     encoding="utf-8") as f:
        json.dump(request, f)
    entry = ["-m", "lib.train", task, f.name]
    if accelerate_config is None:
        cmd = [sys.executable, *entry]
    else:
        if not Path(accelerate_config).is_file():
            raise FileNotFoundError(f"accelerate config {accelerate_config} not found (configs/accelerate/ holds the "
                                    "repository's)")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config), *entry]
    try:
        root = str(Path(__file__).resolve().parents[1])  # where `lib` is importable from
        env = os.environ | {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    finally:
        Path(f.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training {out_dir} in its own process(es) failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}")
    return json.loads((out_dir / "train_metrics.json").read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m lib.train {sft,dpo} REQUEST.json`, the request holding the function's arguments (sft's rows are
    `train_rows`/`eval_rows`, dpo's pairs `train_pairs`/`eval_pairs`).

    What sft_apart runs in a fresh process, and what several processes run under a launcher that trains one model
    across them (`accelerate launch --config_file configs/accelerate/<name>.yaml -m lib.train sft REQUEST.json`; README:
    Beyond one GPU)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lib.train", description=main.__doc__.splitlines()[0])
    parser.add_argument("task", choices=["sft", "dpo"])
    parser.add_argument("request", type=Path, help="JSON with the function's arguments")
    ns = parser.parse_args(argv)
    from lib.models import import_unsloth_first

    import_unsloth_first()  # before anything imports transformers/trl/peft, where Unsloth can be used
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    request = json.loads(ns.request.read_text(encoding="utf-8"))
    (sft if ns.task == "sft" else dpo)(**request)


if __name__ == "__main__":
    main()
