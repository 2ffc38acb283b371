"""Two processes train one model: lib.train's entry (`python -m lib.train {sft,dpo} REQUEST.json`) under
`accelerate launch --num_processes 2` on this CPU machine (torchrun underneath, gloo backend). Nothing of
torch.distributed is mocked.

What it proves, through lib.train.launch (what a stage calls with an accelerate config): the launch starts two ranks
that shard the data and step together (half the single-process steps per epoch), the loss is logged once per step,
rank 0 writes one adapter and one metrics file, and the adapter loads and has moved from its initialisation. What only a GPU node can show: NCCL, FSDP's sharding of a model that does not fit one GPU, QLoRA
under FSDP, speed (README: Beyond one GPU).
"""
import json
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
ARGS = {"per_device_train_batch_size": 2, "learning_rate": 1e-2, "logging_steps": 1, "num_train_epochs": 1,
        "lr_scheduler_type": "constant", "seed": 0, "gradient_checkpointing": False, "save_steps": 2}
ROWS = 8  # global batch 2 ranks x 2 rows: 2 steps per epoch (one process alone: 4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_config(tmp_path: Path) -> Path:
    """An accelerate config of two processes on this machine. Its MULTI_GPU type selects accelerate's torchrun
    launcher, which also runs on CPU (`use_cpu: true` there would start one process only); lib.train's use_cpu
    makes the two one gloo run."""
    path = tmp_path / "two_cpu_processes.yaml"
    path.write_text(f"""compute_environment: LOCAL_MACHINE
distributed_type: MULTI_GPU
num_machines: 1
num_processes: 2
machine_rank: 0
main_process_port: {_free_port()}
mixed_precision: 'no'
dynamo_config: {{dynamo_backend: 'NO'}}
rdzv_backend: static
same_network: true
""")
    return path


def _launch(tmp_path: Path, task: str, request: dict, monkeypatch) -> dict:
    from lib.train import launch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return launch(task, request, accelerate_config=_cpu_config(tmp_path))


def _check_one_shared_model(out_dir: Path, metrics: dict) -> None:
    from safetensors.torch import load_file

    assert metrics == json.loads((out_dir / "train_metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["distributed"] == "DistributedType.MULTI_CPU", metrics
    assert metrics["steps"] == ROWS // (2 * ARGS["per_device_train_batch_size"]), metrics  # sharded, not copied
    state = json.loads((out_dir / "checkpoints" / f"checkpoint-{metrics['steps']}" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == list(range(1, metrics["steps"] + 1))
    weights = load_file(out_dir / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in weights.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA's B starts at zero: training moved it


@pytest.fixture(scope="module")
def model_dir(tiny_llama_dir):
    return tiny_llama_dir


def test_two_processes_train_one_sft_adapter(tmp_path, model_dir, monkeypatch):
    rows = [{"prompt": [{"role": "user", "content": f"How are you, friend {i}?"}],
             "completion": [{"role": "assistant", "content": "I feel calm and a bit tired, but happy."}]}
            for i in range(ROWS)]
    out = tmp_path / "sft"
    from lib.train import sft

    # as a stage calls it, its params naming an accelerate config (sft.<paper>.accelerate_config)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    metrics = sft(model_dir, rows, None, out, LORA, ARGS, max_seq_length=64, accelerate_config=_cpu_config(tmp_path))
    _check_one_shared_model(out, metrics)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out / "adapter")  # it loads


def test_two_processes_train_one_dpo_adapter(tmp_path, model_dir, monkeypatch):
    pairs = [{"prompt": [{"role": "system", "content": "You are calm."},
                         {"role": "user", "content": f"How are you, friend {i}?"}],
              "chosen": [{"role": "assistant", "content": "I feel calm and happy."}],
              "rejected": [{"role": "assistant", "content": "We talked about work."}]} for i in range(ROWS)]
    out = tmp_path / "dpo"
    metrics = _launch(tmp_path, "dpo", {"model_path": str(model_dir), "train_pairs": pairs, "eval_pairs": None,
                                        "out_dir": str(out), "lora": LORA, "args": {**ARGS, "beta": 0.1},
                                        "max_seq_length": 64}, monkeypatch)
    _check_one_shared_model(out, metrics)
    assert metrics["beta"] == 0.1


def test_the_committed_accelerate_configs_are_what_the_readme_says():
    from accelerate.commands.config.config_args import load_config_from_file

    fsdp = load_config_from_file(str(ROOT / "configs/accelerate/fsdp_qlora.yaml"))
    assert str(fsdp.distributed_type) == "DistributedType.FSDP"
    assert fsdp.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
    assert fsdp.fsdp_config["fsdp_cpu_ram_efficient_loading"] and fsdp.fsdp_config["fsdp_sync_module_states"]
    zero = load_config_from_file(str(ROOT / "configs/accelerate/deepspeed_zero3.yaml"))
    assert str(zero.distributed_type) == "DistributedType.DEEPSPEED" and zero.deepspeed_config["zero_stage"] == 3


def test_a_missing_accelerate_config_is_named(tmp_path):
    from lib.train import launch

    with pytest.raises(FileNotFoundError, match="accelerate config .*nope.yaml not found"):
        launch("sft", {"model_path": "x", "out_dir": str(tmp_path / "o")}, accelerate_config=tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="task must be 'sft' or 'dpo'"):
        launch("ppo", {"model_path": "x", "out_dir": str(tmp_path / "o")})


def test_a_sharded_launch_stores_4bit_weights_as_bfloat16_and_leaves_placement_to_the_wrapper(monkeypatch):
    """What FSDP-QLoRA needs from the loader, read from the environment accelerate sets (a GPU run uses it; here the
    arguments are checked, not a load)."""
    import torch

    from lib import models

    for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    alone = models.nf4_kwargs()
    assert alone["device_map"] == {"": 0} and alone["quantization_config"].bnb_4bit_quant_storage == torch.uint8
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert models.nf4_kwargs()["device_map"] == {"": 1}  # DDP: each rank's whole copy on its own GPU
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    sharded = models.nf4_kwargs()
    assert "device_map" not in sharded and sharded["quantization_config"].bnb_4bit_quant_storage == torch.bfloat16
    # Unsloth stays the single-GPU path: several launched processes train through transformers
    monkeypatch.setattr(models, "unsloth_available", lambda: True)
    assert models.import_unsloth_first() == "transformers"
