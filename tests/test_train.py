"""Tests for lib.train: LoRA SFT and DPO on conversational rows, metrics, and resuming from checkpoints."""
import json
import logging
import math

import pytest
import torch

from lib import models
from lib.train import _TorchLogProbHead, bounded_checkpoints, dpo, sft

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
ARGS = {"per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1, "save_steps": 2,
        "lr_scheduler_type": "constant", "seed": 0, "gradient_checkpointing": False}


def _rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": [{"role": "user", "content": f"How are you, friend {i}?"}],
             "completion": [{"role": "assistant", "content": "I feel calm and a bit tired, but happy."}]}
            for i in range(n)]


@pytest.fixture(autouse=True)
def _no_unsloth(monkeypatch):
    monkeypatch.setattr(models, "unsloth_available", lambda: False)  # same backend on CPU and GPU test boxes


def test_no_training_rows(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="no training rows"):
        sft(tiny_llama_dir, [], None, tmp_path, LORA, ARGS)


def test_bad_row_names_its_id(tmp_path, tiny_llama_dir):
    rows = _rows(2)
    rows[1]["completion"] = [{"role": "user", "content": "oops"}]
    with pytest.raises(ValueError, match="train row r1: 'completion'"):
        sft(tiny_llama_dir, rows, None, tmp_path, LORA, ARGS)


def test_reserved_args_rejected(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="'max_length'.*max_seq_length"):
        sft(tiny_llama_dir, _rows(2), None, tmp_path, LORA, {**ARGS, "max_length": 64})


def test_sft_writes_adapter_and_metrics(tmp_path, tiny_llama_dir):
    metrics = sft(tiny_llama_dir, _rows(8), _rows(2), tmp_path, LORA, {**ARGS, "max_steps": 4, "save_steps": 1},
                  max_seq_length=64)
    assert metrics["steps"] == 4 and metrics["resumed_from_step"] == 0 and metrics["backend"] == "transformers"
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["eval_loss"])
    # random-init model over a vocabulary of ~500 tokens: loss near ln(V) before training
    assert 3.0 < metrics["train_loss"] < 8.0
    # The held-out rows under the untrained base (adapter off): the same completion, so training lowered its loss.
    assert metrics["eval_loss"] < metrics["base_eval_loss"]
    assert metrics["peak_memory_mb"] > 0 and metrics["train_runtime_s"] > 0 and metrics["samples_per_s"] > 0
    assert json.loads((tmp_path / "train_metrics.json").read_text()) == metrics
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "adapter" / "tokenizer_config.json").is_file()
    # saved at every step, but only the newest two are kept (bounded disk: they exist only to resume)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-4"]


def test_checkpoints_are_bounded_unless_params_say_otherwise():
    assert bounded_checkpoints({"save_steps": 5}) == {"save_steps": 5, "save_total_limit": 2}
    assert bounded_checkpoints({"save_total_limit": 5})["save_total_limit"] == 5
    for bad in (None, 0):
        with pytest.raises(ValueError, match="save_total_limit must be a positive number"):
            bounded_checkpoints({"save_total_limit": bad})


def test_sft_resumes_from_latest_checkpoint(tmp_path, tiny_llama_dir, caplog):
    from safetensors.torch import load_file, save_file

    first = sft(tiny_llama_dir, _rows(8), None, tmp_path, LORA, {**ARGS, "max_steps": 2}, max_seq_length=64)
    assert first["steps"] == 2 and (tmp_path / "checkpoints" / "checkpoint-2").is_dir()
    # Mark the checkpoint: a resumed run continues from these lora_B values, a fresh one starts from lora_B = 0.
    ckpt = tmp_path / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors"
    weights = {k: (torch.full_like(v, 0.5) if "lora_B" in k else v) for k, v in load_file(ckpt).items()}
    save_file(weights, ckpt)

    with caplog.at_level(logging.INFO, logger="lib.train"):
        second = sft(tiny_llama_dir, _rows(8), None, tmp_path, LORA, {**ARGS, "max_steps": 4}, max_seq_length=64)
    assert second["steps"] == 4 and second["resumed_from_step"] == 2
    assert "resuming from" in caplog.text and "checkpoint-2 (step 2)" in caplog.text
    assert (tmp_path / "checkpoints" / "checkpoint-4").is_dir()
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    final_b = [v for k, v in load_file(tmp_path / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
    # Adam moves each weight by about lr (1e-3) per step: 2 steps from 0.5 stay within 0.01; a fresh start is ~0.
    assert len(final_b) == 4 and all(torch.allclose(b, torch.full_like(b, 0.5), atol=0.01) for b in final_b)

    # Already at max_steps: nothing left to run, and the loss is reported as unknown rather than a fake number.
    third = sft(tiny_llama_dir, _rows(8), None, tmp_path, LORA, {**ARGS, "max_steps": 4}, max_seq_length=64)
    assert third["steps"] == 4 and third["resumed_from_step"] == 4 and third["train_loss"] is None


def test_torch_logprob_head_matches_reference():
    torch.manual_seed(0)
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(11, 8)
    targets = torch.tensor([0, 3, 10, 7, 3])
    logp, entropy, log_sum_sq, mean_logits, is_top1 = _TorchLogProbHead.apply(
        hidden, weight, None, targets, 2.0, 4096, None, 1.0, ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1"))
    logits = hidden @ weight.T / 2.0
    ref_logp = torch.log_softmax(logits, -1)
    assert torch.allclose(logp, -torch.nn.functional.cross_entropy(logits, targets, reduction="none"), atol=1e-5)
    assert torch.allclose(entropy, -(ref_logp.exp() * ref_logp).sum(-1), atol=1e-5)
    assert torch.allclose(log_sum_sq, torch.log((ref_logp.exp() ** 2).sum(-1)), atol=1e-5)
    assert torch.allclose(mean_logits, logits.mean(-1), atol=1e-5)
    assert torch.equal(is_top1, logits.argmax(-1) == targets)
    (-logp.sum()).backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    only = _TorchLogProbHead.apply(hidden, weight, None, targets, 1.0, 4096, None, 1.0, ())
    assert only[1:] == (None, None, None, None)


DPO_ARGS = {**ARGS, "learning_rate": 1e-2, "beta": 0.1}


def _pairs(n: int) -> list[dict]:
    return [{"id": f"p{i}", "prompt": [{"role": "system", "content": "You are calm."},
                                       {"role": "user", "content": f"How are you, friend {i}?"}],
             "chosen": [{"role": "assistant", "content": "I feel calm and happy."}],
             "rejected": [{"role": "assistant", "content": "We talked about work."}]} for i in range(n)]


def _logged(out_dir, step: int) -> list[dict]:
    state = json.loads((out_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").read_text())
    return [e for e in state["log_history"] if "loss" in e]


def test_dpo_trains_from_the_base_as_reference_and_saves_an_adapter(tmp_path, tiny_llama_dir):
    metrics = dpo(tiny_llama_dir, _pairs(8), _pairs(2), tmp_path, LORA, {**DPO_ARGS, "max_steps": 3},
                  max_seq_length=64)
    assert metrics["steps"] == 3 and metrics["resumed_from_step"] == 0 and metrics["train_pairs_kept"] == 8
    assert metrics["beta"] == 0.1 and metrics["backend"] == "transformers"
    # The policy starts equal to its reference, so the first step's loss is exactly -log sigmoid(0) = ln 2 ...
    first = _logged(tmp_path, 3)[0]
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    # ... and training then separates chosen from rejected on every pair.
    assert math.isfinite(metrics["train_loss"]) and metrics["train_loss"] < math.log(2)
    assert metrics["reward_accuracy"] == 1.0 and metrics["reward_margin"] > 0
    assert metrics["eval_loss"] < math.log(2) and metrics["eval_rewards/accuracies"] == 1.0
    # Adapter off, the policy is its reference: no preference at all (loss ln 2, margin 0).
    assert metrics["base_eval_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert metrics["base_eval_rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    assert json.loads((tmp_path / "train_metrics.json").read_text()) == metrics
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "adapter" / "ref").exists()  # one adapter only: the reference is the base

    base, tok = models.load_for_inference(tiny_llama_dir)
    tuned, _ = models.load_for_inference(tiny_llama_dir, tmp_path / "adapter")
    batch = tok(["I feel calm and happy."], return_tensors="pt")
    with torch.no_grad():
        delta = (tuned(**batch).logits - base(**batch).logits).abs().max().item()
    assert delta > 1e-3


def test_preference_rewards_per_pair_agree_with_trls_eval_metrics(tmp_path, tiny_llama_dir):
    from lib.train import preference_rewards

    evals = _pairs(3)
    # pair 0 mirrored: the same prompt and answers, chosen and rejected swapped (a pair the policy must get wrong)
    evals[1] = {"prompt": evals[0]["prompt"], "chosen": evals[0]["rejected"], "rejected": evals[0]["chosen"]}
    evals[2]["rejected"] = [{"role": "assistant", "content": "Work was long today."}]
    metrics = dpo(tiny_llama_dir, _pairs(8), evals, tmp_path, LORA, {**DPO_ARGS, "max_steps": 3}, max_seq_length=64)
    tuned, tok = models.load_for_inference(tiny_llama_dir, tmp_path / "adapter")
    rewards = preference_rewards(tuned, tok, evals, beta=0.1, batch_size=2)
    assert rewards[0]["correct"] and not rewards[1]["correct"]
    margins = [r["margin"] for r in rewards]
    assert sum(margins) / 3 == pytest.approx(metrics["eval_rewards/margins"], rel=1e-3, abs=1e-4)
    assert sum(r["correct"] for r in rewards) / 3 == pytest.approx(metrics["eval_rewards/accuracies"])
    assert rewards[0]["margin"] == pytest.approx(-rewards[1]["margin"], rel=1e-4)  # the same two answers, swapped


def test_dpo_resumes_the_trained_policy(tmp_path, tiny_llama_dir):
    from safetensors.torch import load_file

    first = dpo(tiny_llama_dir, _pairs(8), None, tmp_path, LORA, {**DPO_ARGS, "max_steps": 2}, max_seq_length=64)
    assert first["steps"] == 2 and "eval_loss" not in first
    second = dpo(tiny_llama_dir, _pairs(8), None, tmp_path, LORA, {**DPO_ARGS, "max_steps": 3}, max_seq_length=64)
    assert second["steps"] == 3 and second["resumed_from_step"] == 2
    logged = _logged(tmp_path, 3)
    assert [e["step"] for e in logged] == [1, 2, 3]
    # Step 3 runs on the checkpoint's adapter: a policy restarted from scratch would score ln 2 and zero margin again.
    assert logged[2]["loss"] < logged[1]["loss"] < math.log(2) and logged[2]["rewards/margins"] > 0

    # A rerun of the finished run (max_steps mid-epoch) trains nothing more and re-saves the checkpoint's adapter.
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    third = dpo(tiny_llama_dir, _pairs(8), None, tmp_path, LORA, {**DPO_ARGS, "max_steps": 3}, max_seq_length=64)
    assert third["steps"] == 3 and third["resumed_from_step"] == 3 and third["train_loss"] is None
    assert third["reward_margin"] == second["reward_margin"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    saved, final = (load_file(d / "adapter_model.safetensors") for d in (tmp_path / "checkpoints" / "checkpoint-3",
                                                                        tmp_path / "adapter"))
    assert saved.keys() == final.keys() and all(torch.equal(saved[k], final[k]) for k in saved)


def _bad(pairs: list[dict], key: str, value) -> list[dict]:
    pairs[1][key] = value
    return pairs


@pytest.mark.parametrize("train, evals, message", [
    ([], None, "no training pairs"),
    (_bad(_pairs(2), "chosen", [{"role": "user", "content": "x"}]), None, "train pair p1: 'chosen'"),
    (_bad(_pairs(2), "rejected", []), None, "train pair p1: 'rejected'"),
    (_bad(_pairs(2), "prompt", "How are you?"), None, "train pair p1: 'prompt'"),
    (_bad(_pairs(2), "chosen", "I feel calm."), None, "train pair p1: 'chosen'"),
    (_pairs(2), [{"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "a"}]}],
     "eval pair #0: 'rejected'"),
])
def test_dpo_rejects_bad_pairs(tmp_path, tiny_llama_dir, train, evals, message):
    with pytest.raises(ValueError, match=message):
        dpo(tiny_llama_dir, train, evals, tmp_path, LORA, DPO_ARGS)


def test_dpo_refuses_an_initial_adapter_that_changes_the_model(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match="init_lora_weights.*'pissa'"):
        dpo(tiny_llama_dir, _pairs(2), None, tmp_path, {**LORA, "init_lora_weights": "pissa"}, DPO_ARGS)


def test_half_precision_without_a_gpu_falls_back_to_float32(monkeypatch):
    import torch

    from lib.train import default_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # use_cpu: several launched processes then form one CPU-distributed run (tests/test_distributed.py)
    assert default_precision({"bf16": True, "lr": 1}) == {"bf16": False, "fp16": False, "lr": 1, "use_cpu": True}
    assert default_precision({"lr": 1}) == {"lr": 1, "bf16": False, "fp16": False, "use_cpu": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_precision({"bf16": True}) == {"bf16": True}  # a GPU run keeps what params ask for


def test_rows_whose_prompt_fills_max_seq_length_are_an_error_not_an_empty_run(tmp_path, tiny_llama_dir):
    with pytest.raises(ValueError, match=r"all 2 training rows were dropped: .*max_seq_length=4"):
        sft(tiny_llama_dir, _rows(2), None, tmp_path, LORA, {**ARGS, "max_steps": 1}, max_seq_length=4)


def test_render_rows_splits_the_chat_template_at_the_assistant_header(tiny_llama_dir):
    """The string form Unsloth's trainers get: prompt + completion re-join to the template's whole conversation."""
    from transformers import AutoTokenizer

    from lib.train import render_rows

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    row = _rows(1)[0]
    out = render_rows([row | {"chosen": row["completion"], "rejected": [{"role": "assistant", "content": "no"}]}], tok)
    whole = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    assert out[0]["prompt"] + out[0]["completion"] == whole and out[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert out[0]["completion"] == out[0]["chosen"] and out[0]["rejected"].startswith("no")
