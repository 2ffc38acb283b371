"""lib/persllm/serve.py: PersLLM's three students behind one vLLM server. SFT then DPO over the merged SFT model is
one stacked LoRA on the personified base: checked here in float32 against the route 11_generate takes on HF."""
import json

import pytest

from lib.persllm import data, personify, serve

STAGES = data.check_stages([
    {"name": "early", "token": "<TIME-I>", "films": [1, 2, 3, 4], "time": "the first films", "init": "early years"},
    {"name": "late", "token": "<TIME-II>", "films": [5, 6, 7, 8], "time": "the last films", "init": "later years"}])


def _random_lora(model, out_dir, r, alpha, targets, seed):
    """A LoRA on `model` with random A and B (a trained one's B is not zero), saved to out_dir."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(str(out_dir))
    return peft_model


@pytest.fixture
def adapters(tiny_llama_dir, tmp_path):
    """An SFT adapter on the personified base and a DPO adapter (other rank, scale and modules) on the merged SFT."""
    base, tok, _ = personify.personified_base(tiny_llama_dir, STAGES)
    base.save_pretrained(tmp_path / "pbase")
    tok.save_pretrained(tmp_path / "pbase")
    sft = _random_lora(base, tmp_path / "sft", r=4, alpha=8, targets=["q_proj", "v_proj"], seed=1)
    merged = sft.merge_and_unload()
    _random_lora(merged, tmp_path / "dpo", r=2, alpha=16, targets=["q_proj", "o_proj"], seed=2)
    return tmp_path / "sft", tmp_path / "dpo"


def _logits(model, tok):
    import torch

    ids = tok(["<TIME-II> how was school today?", "<TIME-I> tell me about your friends"], return_tensors="pt",
              padding=True)
    with torch.no_grad():
        return model(**ids).logits


def test_stacked_adapter_equals_dpo_over_the_merged_sft(tiny_llama_dir, adapters, tmp_path):
    import torch
    from peft import PeftModel

    sft_dir, dpo_dir = adapters
    cfg = serve.stack_adapters([sft_dir, dpo_dir], tmp_path / "stacked", tmp_path / "pbase")
    assert (cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == (6, 6, ["o_proj", "q_proj", "v_proj"])
    route, tok = personify.personified_model(tiny_llama_dir, STAGES, [sft_dir, dpo_dir])  # what 11 does on hf
    base, _, _ = personify.personified_base(tiny_llama_dir, STAGES)
    stacked = PeftModel.from_pretrained(base, str(tmp_path / "stacked")).eval()
    want, got = _logits(route, tok), _logits(stacked, tok)
    sft_only, _ = personify.personified_model(tiny_llama_dir, STAGES, [sft_dir])
    assert not torch.allclose(_logits(sft_only, tok), want, atol=1e-3)  # the DPO adapter does change the model
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_stacking_refuses_what_is_not_a_plain_lora(adapters, tmp_path):
    sft_dir, dpo_dir = adapters
    cfg = json.loads((dpo_dir / "adapter_config.json").read_text())
    (dpo_dir / "adapter_config.json").write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(ValueError, match=r"cannot stack this adapter .*use_dora"):
        serve.stack_adapters([sft_dir, dpo_dir], tmp_path / "stacked", tmp_path / "pbase")
    assert not (tmp_path / "stacked").exists()
    with pytest.raises(FileNotFoundError, match="holds no readable adapter"):
        serve.stack_adapters([sft_dir, tmp_path / "nowhere"], tmp_path / "stacked", tmp_path / "pbase")


def test_trained_embedding_rows_cannot_be_served_as_a_lora(adapters, tmp_path):
    """peft saves the resized embeddings beside the factors (it sees the vocabulary grown): equal to the personified
    base's they are left out; trained, the stacking stops instead of serving a different model."""
    from safetensors.torch import load_file, save_file

    sft_dir, _ = adapters
    weights = load_file(str(sft_dir / "adapter_model.safetensors"))
    embed = [k for k in weights if "embed_tokens" in k]
    assert embed, "peft no longer saves the resized embeddings: this test would check nothing"
    cfg = serve.stack_adapters([sft_dir], tmp_path / "one", tmp_path / "pbase")
    assert cfg["r"] == 4 and all(".lora_" in k for k in load_file(str(tmp_path / "one/adapter_model.safetensors")))
    with pytest.raises(ValueError, match="carries whole weights"):
        serve.stack_adapters([sft_dir], tmp_path / "one", None)
    weights[embed[0]][-1] += 1.0  # a trained stage-token row
    save_file(weights, str(sft_dir / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="trained embedding rows cannot be served"):
        serve.stack_adapters([sft_dir], tmp_path / "one", tmp_path / "pbase")


def test_prepare_writes_the_served_folder_once(tiny_llama_dir, adapters, tmp_path):
    sft_dir, dpo_dir = adapters
    out = tmp_path / "served"
    layout = serve.prepare(tiny_llama_dir, STAGES, sft_dir, dpo_dir, out)
    assert set(layout["adapters"]) == {"persllm-sft", "persllm-dpo"}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(layout["base"])
    assert personify.check_stage_tokens(tok, ["<TIME-I>", "<TIME-II>"]) == [len(tok) - 2, len(tok) - 1]
    assert json.loads((layout["adapters"]["persllm-dpo"] / "adapter_config.json").read_text())["r"] == 6
    stamp = (out / "base" / "config.json").stat().st_mtime_ns
    serve.prepare(tiny_llama_dir, STAGES, sft_dir, dpo_dir, out)  # unchanged inputs: nothing rewritten
    assert (out / "base" / "config.json").stat().st_mtime_ns == stamp
    from safetensors.torch import load_file, save_file

    before = (out / "dpo" / "adapter_model.safetensors").read_bytes()
    weights = load_file(str(dpo_dir / "adapter_model.safetensors"))
    save_file({k: v * 2 if "lora_B" in k else v for k, v in weights.items()}, str(dpo_dir / "adapter_model.safetensors"))
    serve.prepare(tiny_llama_dir, STAGES, sft_dir, dpo_dir, out)  # a retrained DPO adapter: the folder is rebuilt
    assert (out / "dpo" / "adapter_model.safetensors").read_bytes() != before
