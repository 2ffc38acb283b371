"""API drift guards: every argument name the project passes to trl/peft/transformers is still accepted and sticks.

Params files use the libraries' own argument names (lib.train passes them straight through), so a silent rename on
an upgrade would otherwise surface as a TypeError deep inside a pipeline run, or worse, as an ignored setting.
"""
import ast
import inspect
from pathlib import Path

import pytest
import torch

SFT_ARGS = {"learning_rate": 2e-4, "lr_scheduler_type": "cosine", "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 2, "max_steps": 10, "num_train_epochs": 3.0, "warmup_steps": 0.1,
            "logging_steps": 5, "save_steps": 50, "save_total_limit": 2, "seed": 7, "bf16": False, "fp16": False,
            "gradient_checkpointing": False, "max_length": 256, "completion_only_loss": True}
DPO_ARGS = {"beta": 0.1, "learning_rate": 5e-6, "lr_scheduler_type": "linear", "max_length": 512,
            "num_train_epochs": 2.0, "bf16": False}
LORA_ARGS = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def test_sft_config_accepts_project_keys(tmp_path):
    from trl import SFTConfig

    config = SFTConfig(output_dir=str(tmp_path), report_to=[], **SFT_ARGS)
    for key, value in SFT_ARGS.items():
        assert getattr(config, key) == value, key
    assert config.report_to == [] and config.output_dir == str(tmp_path)
    # transformers 5 dropped warmup_ratio: a float warmup_steps below 1 is the ratio now
    assert config.get_warmup_steps(100) == 10


def test_dpo_config_accepts_project_keys(tmp_path):
    from trl import DPOConfig

    config = DPOConfig(output_dir=str(tmp_path), report_to=[], **DPO_ARGS)
    for key, value in DPO_ARGS.items():
        assert getattr(config, key) == value, key


def test_lora_config_accepts_project_keys():
    from peft import LoraConfig

    config = LoraConfig(**LORA_ARGS, task_type="CAUSAL_LM")
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert set(config.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert config.task_type == "CAUSAL_LM"


@pytest.mark.parametrize("trainer", ["SFTTrainer", "DPOTrainer"])
def test_trainers_take_processing_class_and_peft_config(trainer):
    import trl

    params = inspect.signature(getattr(trl, trainer).__init__).parameters
    for name in ("model", "args", "train_dataset", "eval_dataset", "processing_class", "peft_config"):
        assert name in params, f"{trainer}.__init__ lost {name!r}"


def test_bnb_config_keys():
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == (True, "nf4", True)
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_trainer_internals_lib_train_relies_on():
    import trl.trainer.utils as trl_utils
    from transformers.trainer_utils import get_last_checkpoint

    # lib.train swaps in a plain-torch LM-head loss when trl's Triton kernel is missing (CPU-only torch); the hook
    # must still exist and still be what the fused forward calls.
    assert hasattr(trl_utils, "_ChunkedLogProbFunction")
    assert "_ChunkedLogProbFunction.apply(" in inspect.getsource(trl_utils.add_fused_lm_head)
    assert list(inspect.signature(get_last_checkpoint).parameters) == ["folder"]


def test_kernel_signature_matches_fallback():
    # Read the kernel's signature from source: importing it needs Triton, which CPU-only torch lacks.
    import trl

    from lib.train import _TorchLogProbHead

    tree = ast.parse((Path(trl.__file__).parent / "kernels" / "chunked_logprob.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ChunkedLogProbFunction")
    forward = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward")
    kernel_args = [a.arg for a in forward.args.args][1:]  # drop ctx
    assert kernel_args == list(inspect.signature(_TorchLogProbHead.apply).parameters)
