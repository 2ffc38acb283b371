"""Encoder-decoder (BART, T5) response generation: LoRA fine-tuning and generation.

PersonalityChat (arXiv 2401.07363) fine-tunes BART and T5 on PersonaChat and on its distilled dialogues. The
`paper` profile does the same through this module; the `cpu` profile has no offline seq2seq weights and fine-tunes
a decoder-only model through lib.train instead, so this path is exercised by the tests on a tiny random-init T5.

A row is {"source": str, "target": str}: `chat_to_seq2seq` flattens the conversational rows the decoder-only path
trains on (system control text, then the dialogue) into one source string, so both paths learn from the same data.

    metrics = seq2seq_sft(model_dir, train_rows, eval_rows, out_dir, lora={...}, args={...})
    model, tok = load_seq2seq(model_dir, out_dir / "adapter")
    replies = seq2seq_generate(model, tok, [row["source"] for row in eval_rows])

Perplexity of references is in lib/pchat/perplexity.py, for this architecture and the decoder-only one.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from lib.models import resolve_model
from lib.train import (
    bounded_checkpoints,
    check_inputs,
    default_precision,
    last_checkpoint,
    peak_memory_mb,
    write_train_metrics,
)

log = logging.getLogger(__name__)

ROLE_PREFIX = {"system": "", "user": "partner: ", "assistant": "you: "}


def chat_source(messages: list[dict]) -> str:
    """A chat prompt as one source string: the system control text, then "partner: ..." / "you: ..." turns."""
    lines = []
    for message in messages:
        if message.get("role") not in ROLE_PREFIX:
            raise ValueError(f"unknown role {message.get('role')!r} in a chat prompt")
        lines.append(ROLE_PREFIX[message["role"]] + message["content"].strip())
    return "\n".join(lines)


def chat_to_seq2seq(row: dict) -> dict:
    """A conversational prompt-completion row as {"source", "target"} (see chat_source)."""
    prompt, completion = row.get("prompt"), row.get("completion")
    if not isinstance(prompt, list) or not prompt or not isinstance(completion, list) or not completion:
        raise ValueError(f"row {row.get('id', '?')!r}: needs non-empty 'prompt' and 'completion' message lists")
    return {"source": chat_source(prompt), "target": " ".join(m["content"].strip() for m in completion)}


def build_tiny_t5(out_dir: str | Path, tokenizer_dir: str | Path) -> Path:
    """A random-init micro T5 that shares a tokenizer from `tokenizer_dir` (for tests and the tiny profile)."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration, set_seed

    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                      num_heads=4, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def check_seq2seq_rows(rows: list[dict], split: str) -> list[dict]:
    """Keep {"source", "target"}; both must be non-empty strings."""
    clean = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(row.get(k), str) and row[k].strip()
                                                for k in ("source", "target")):
            raise ValueError(f"{split} row #{i}: needs non-empty string 'source' and 'target'")
        clean.append({"source": row["source"], "target": row["target"]})
    return clean


def target_ids(tokenizer, text: str, max_length: int) -> list[int]:
    """Label ids of one target: the tokenizer's own special tokens around the text (BART: <s> ... </s>, T5:
    ... </s>), truncated to `max_length`, ending in exactly one EOS (appended only by tokenizers that add none)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; a seq2seq target must end in one")
    ids = tokenizer(text_target=text, truncation=True, max_length=max_length)["input_ids"]
    if not ids or ids[-1] != eos:
        ids = ids[:max_length - 1] + [eos]
    return ids


def tokenize_seq2seq(tokenizer, rows: list[dict], max_source_length: int, max_target_length: int) -> list[dict]:
    """input_ids/attention_mask of the source and labels of the target (see target_ids), each truncated."""
    out = []
    for row in rows:
        source = tokenizer(row["source"], truncation=True, max_length=max_source_length)
        out.append({**source, "labels": target_ids(tokenizer, row["target"], max_target_length)})
    return out


def seq2seq_sft(model_path: str | Path, train_rows: list[dict], eval_rows: list[dict] | None, out_dir: str | Path,
                lora: dict, args: dict, max_source_length: int = 512, max_target_length: int = 64) -> dict:
    """LoRA fine-tuning of an encoder-decoder on {"source", "target"} rows; resumes after a kill.

    `lora` holds peft.LoraConfig names, `args` transformers.Seq2SeqTrainingArguments names. Writes
    out_dir/checkpoints, out_dir/adapter and out_dir/train_metrics.json, like lib.train.sft. With eval rows, the
    metrics hold the held-out loss of the trained model ("eval_loss") and of the base with the adapter switched off
    ("base_eval_loss").
    """
    train, evals = check_inputs(train_rows, eval_rows, args, check_seq2seq_rows)
    out_dir = Path(out_dir)

    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        set_seed,
    )

    name = resolve_model(model_path)
    tokenizer = AutoTokenizer.from_pretrained(name)
    model = AutoModelForSeq2SeqLM.from_pretrained(name)
    set_seed(args.get("seed", 42))
    model = get_peft_model(model, LoraConfig(**lora, task_type="SEQ_2_SEQ_LM"))
    config = Seq2SeqTrainingArguments(output_dir=str(out_dir / "checkpoints"), report_to=[],
                                      **default_precision(bounded_checkpoints(args)))
    trainer = Seq2SeqTrainer(
        model=model, args=config, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        train_dataset=Dataset.from_list(tokenize_seq2seq(tokenizer, train, max_source_length, max_target_length)),
        eval_dataset=Dataset.from_list(tokenize_seq2seq(tokenizer, evals, max_source_length, max_target_length))
        if evals else None)
    resume = last_checkpoint(Path(config.output_dir))
    start_step = json.loads((Path(resume) / "trainer_state.json").read_text())["global_step"] if resume else 0
    result = trainer.train(resume_from_checkpoint=resume)
    steps = trainer.state.global_step
    train_loss = result.training_loss * steps / (steps - start_step) if steps > start_step else None
    trainer.save_model(str(out_dir / "adapter"))
    tokenizer.save_pretrained(str(out_dir / "adapter"))
    metrics = {"train_loss": train_loss, "steps": steps, "resumed_from_step": start_step,
               "train_runtime_s": result.metrics["train_runtime"], "backend": "transformers-seq2seq",
               "peak_memory_mb": peak_memory_mb()}
    if evals:
        metrics["eval_loss"] = trainer.evaluate()["eval_loss"]
        with model.disable_adapter():  # the untrained base on the same held-out rows, for comparison
            metrics["base_eval_loss"] = trainer.evaluate(metric_key_prefix="base_eval")["base_eval_loss"]
    if train_loss is not None and not math.isfinite(train_loss):
        log.warning("train loss is not finite: %s", train_loss)
    write_train_metrics(out_dir, "train_metrics.json", metrics)
    return metrics


def load_seq2seq(model_path: str | Path, adapter_dir: str | Path | None = None) -> tuple:
    """(model in eval mode, tokenizer): the base encoder-decoder, with a trained LoRA adapter if given, on the GPU
    when there is one."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    name = resolve_model(model_path)
    has_tok = adapter_dir is not None and (Path(adapter_dir) / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir) if has_tok else name)
    model = AutoModelForSeq2SeqLM.from_pretrained(name)
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json; is it an adapter saved by seq2seq_sft?")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if torch.cuda.is_available():
        model = model.to("cuda")  # the trainer moves training to the GPU itself; inference is ours to place
    model.eval()
    return model, tokenizer


def seq2seq_generate(model, tokenizer, sources: list[str], max_new_tokens: int = 40, batch_size: int = 8,
                     max_source_length: int = 512, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int = 0) -> list[str]:
    """Replies, one per source, in order: greedy at temperature 0, else sampled (nucleus `top_p`); lib.decoding's
    explicit settings, so facebook/bart-base's config (4 beams, trigram blocking) does not turn greedy into beam
    search, and its seeding per batch, as for the decoder-only models."""
    from lib import decoding

    sampling = decoding.Sampling(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)

    def encode(chunk):
        return tokenizer(list(chunk), return_tensors="pt", padding=True, truncation=True, max_length=max_source_length)

    out = decoding.generate_ids(model, tokenizer, sources, sampling, batch_size=batch_size, encode=encode)
    return decoding.decode(tokenizer, out.ids)
