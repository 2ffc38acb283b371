"""The training path under the Unsloth stand-in (tests/standins/gpu), whose side effects are the pinned release's:
the Hub-id remapping, the process-wide replacement of peft's forward, forced gradient checkpointing. And the rows trl
trains on, tokenized as trl 1.15 tokenizes them, on the Llama 3 stand-in (its tokenizer prepends a BOS).

Each test here failed on the code before the fixes it names (LOG.md, 2026-12-07)."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.standins import hub_cache

ROOT = Path(__file__).resolve().parents[1]
HUB_ID = "meta-llama/Meta-Llama-3-8B-Instruct"
ROWS = [{"prompt": [{"role": "system", "content": "You are warm."}, {"role": "user", "content": f"Tell me {t}."}],
         "completion": [{"role": "assistant", "content": f"I love {t} and new ideas."}]}
        for t in ("music", "the river", "my friends", "the weekend", "art", "work plans")]
PAIRS = [{"prompt": r["prompt"], "chosen": r["completion"],
          "rejected": [{"role": "assistant", "content": "I worry a lot at night."}]} for r in ROWS]
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
ARGS = {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 0.05, "logging_steps": 1,
        "save_steps": 100, "seed": 0, "gradient_checkpointing": False}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hub cache holding the Llama 3 stand-in under its real id, and the environment of the paper run's GPU
    stand-in (unsloth and 4-bit counted as available; the recording unsloth on PYTHONPATH)."""
    base = tmp_path_factory.mktemp("unsloth_hub")
    hub_cache.put_model(base / "hf" / "hub", HUB_ID, hub_cache.build_llama(base / "built"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHONPATH"))}
    env |= {"HF_HOME": str(base / "hf"), "HF_HUB_OFFLINE": "1", "GPU_STANDIN_LOG": str(base / "calls.jsonl"),
            "PYTHONPATH": str(ROOT / "tests" / "standins" / "gpu")}
    return base, env


def _run(script: str, env: dict, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


PREAMBLE = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
ROWS, PAIRS, LORA, ARGS = {ROWS!r}, {PAIRS!r}, {LORA!r}, {ARGS!r}
"""

# The flow of 07_dexperts_big5chat since the fix: experts train apart, the kernel decodes.
APART = PREAMBLE + """
from lib import models
from lib.train import sft_apart
base = models.prepare_model("meta-llama/Meta-Llama-3-8B-Instruct", "models/base")
out = {"backend": models.training_backend()}
a = sft_apart(base, ROWS, None, "experts/a", lora=LORA, args=ARGS, max_seq_length=128)
b = sft_apart(base, ROWS[::-1], None, "experts/b", lora=LORA, args=ARGS | {"gradient_checkpointing": True, "seed": 1},
              max_seq_length=128)
out["metrics"] = [a, b]
import peft
out["peft_forward"] = peft.PeftModelForCausalLM.forward.__module__
from lib.big5chat import dexperts
model, tok = dexperts.load_experts(base, {"a": "experts/a/adapter", "b": "experts/b/adapter"})
chats = [r["prompt"] for r in ROWS[:3]]
for mode in ("batched", "separate"):
    _, stats = dexperts.dexperts_generate(model, tok, chats, chats, ["a", "b", "a"], alpha=2.0, max_new_tokens=6,
                                          join_after=0, mode=mode, return_stats=True)
    out[mode] = stats.token_ids
print(json.dumps(out))
"""

# The flow before the fix: train with Unsloth in the kernel, then decode there.
SAME_PROCESS = PREAMBLE + """
from lib import models
models.import_unsloth_first()
from lib.train import dpo, sft
base = models.prepare_model("meta-llama/Meta-Llama-3-8B-Instruct", "models/base")
out = {"sft": sft(base, ROWS, None, "same/c", lora=LORA, args=ARGS, max_seq_length=128),
       "dpo": dpo(base, PAIRS, None, "same/dpo", lora=LORA | {"lora_dropout": 0.0}, args=ARGS | {"beta": 0.1},
                  max_seq_length=128)}
import peft
out["peft_forward"] = peft.PeftModelForCausalLM.forward.__module__
from lib.big5chat import dexperts
model, tok = dexperts.load_experts(base, {"a": "experts/a/adapter", "b": "experts/b/adapter"})
chats = [r["prompt"] for r in ROWS[:3]]
try:
    for mode in ("batched", "separate"):
        _, stats = dexperts.dexperts_generate(model, tok, chats, chats, ["a", "b", "a"], alpha=2.0, max_new_tokens=6,
                                              join_after=0, mode=mode, return_stats=True)
        out[mode] = stats.token_ids
except dexperts.AdapterCollapse as err:
    out["collapse"] = str(err)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(hub):
    base, env = hub
    apart = _run(APART, env, base)
    same = _run(SAME_PROCESS, env, base)
    calls = [json.loads(line) for line in (base / "calls.jsonl").read_text().splitlines()]
    return apart, same, calls


def test_unsloth_loads_the_named_repo_not_its_mirror(runs):
    """Defect: Unsloth swapped meta-llama/Meta-Llama-3-8B-Instruct for unsloth/llama-3-8b-Instruct, absent offline."""
    _, _, calls = runs
    loads = [c["kwargs"] for c in calls if c["api"] == "FastLanguageModel.from_pretrained"]
    assert len(loads) == 4 and all(k["use_exact_model_name"] == "True" for k in loads)
    assert all(k["model_name"] == repr(HUB_ID) for k in loads)


def test_gradient_checkpointing_follows_the_trainer_args(runs):
    """Defect: get_peft_model was always asked for Unsloth's checkpointing, whatever the params said."""
    _, _, calls = runs
    asked = [c["kwargs"]["use_gradient_checkpointing"] for c in calls if c["api"] == "FastLanguageModel.get_peft_model"]
    assert asked == ["False", "'unsloth'", "False", "False"]


def test_experts_trained_apart_leave_peft_alone_and_dexperts_batches_route(runs):
    apart, _, _ = runs
    assert apart["backend"] == "unsloth" and all(m["backend"] == "unsloth" for m in apart["metrics"])
    assert apart["peft_forward"] == "peft.peft_model"
    assert apart["batched"] == apart["separate"]
    assert apart["batched"][0] != apart["batched"][1]  # the two experts steer differently


def test_dexperts_after_an_unsloth_load_in_the_same_process_fails_loudly(runs):
    """Defect: after Unsloth's load, a mixed batch silently decoded every row with the first adapter."""
    _, same, _ = runs
    assert same["peft_forward"] != "peft.peft_model"  # the stand-in replaced it, as Unsloth does
    assert "collapse" in same or same["batched"] == same["separate"], same
    assert "identical logits" in same.get("collapse", "identical logits")


def test_unsloth_path_trains_rows_with_one_bos(runs):
    _, same, _ = runs
    assert same["sft"]["leading_bos"] == 1 and same["dpo"]["leading_bos"] == 1


def test_rendered_rows_tokenized_as_trl_does_hold_one_bos(tmp_path):
    """Defect: render_rows kept the template's <|begin_of_text|> and trl 1.15 tokenizes string rows with special
    tokens, so every prompt began [bos, bos, ...]. trl itself tokenizes here, on the Llama 3 stand-in."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from lib.train import render_rows

    model_dir = hub_cache.build_llama(tmp_path / "llama3")
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    bos = tok.bos_token_id
    common = {"output_dir": str(tmp_path / "out"), "report_to": [], "max_length": 128, "bf16": False}
    sft = SFTTrainer(model=model, args=SFTConfig(**common), processing_class=tok,
                     train_dataset=Dataset.from_list(render_rows(ROWS, tok)))
    dpo = DPOTrainer(model=model, args=DPOConfig(**common), processing_class=tok,
                     train_dataset=Dataset.from_list(render_rows(PAIRS, tok)))
    for ids in [*sft.train_dataset["input_ids"], *dpo.train_dataset["prompt_ids"]]:
        assert ids[0] == bos and ids[1] != bos


def test_a_row_without_its_bos_fails_too(tmp_path):
    """Had a trainer tokenized the stripped prompts without special tokens, rows would start with no BOS at all."""
    from transformers import AutoTokenizer

    from lib.train import check_one_bos

    tok = AutoTokenizer.from_pretrained(hub_cache.build_llama(tmp_path / "llama3"))
    bos, text = tok.bos_token_id, tok("I wrote", add_special_tokens=False)["input_ids"]
    assert check_one_bos({"input_ids": [[bos, *text]]}, tok, "input_ids") == 1
    for rows in ([[bos, bos, *text]], [text]):
        with pytest.raises(ValueError, match="not one"):
            check_one_bos({"input_ids": rows}, tok, "input_ids")
