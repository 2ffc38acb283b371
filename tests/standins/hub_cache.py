"""A local Hugging Face cache that stands in for the Hub: tiny random-init models and small datasets saved under the
paper profile's own repo ids, in the cache layout huggingface_hub reads (`<cache>/models--owner--name/snapshots/
<commit>/...` with `refs/main`). With HF_HUB_OFFLINE=1 and the cache pointed here, `from_pretrained("<hub id>")` and
`hf_hub_download` resolve exactly as on a workstation that downloaded the real repos.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path


def _put(cache: Path, kind: str, repo_id: str, src: Path) -> Path:
    repo = Path(cache) / f"{kind}--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    shutil.copytree(src, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def put_model(cache: Path, repo_id: str, src: Path) -> Path:
    """Install the files of `src` as model `repo_id` in the hub cache `cache` (HF_HUB_CACHE)."""
    return _put(cache, "models", repo_id, src)


def put_dataset(cache: Path, repo_id: str, src: Path) -> Path:
    """Install the files of `src` (sub-folders kept) as dataset `repo_id` in the hub cache `cache`."""
    return _put(cache, "datasets", repo_id, src)


# --- tiny models of the paper's architectures ------------------------------------------------------------------

TEXTS = ["I wrote in my journal today about the long walk by the river.",
         "How are you feeling? I feel calm and a bit tired, but happy.",
         "We talked about work, friends, music and the weekend plans.",
         "I love parties and meeting new people. I worry a lot at night.",
         "I plan my week carefully and keep lists. Art and new ideas fascinate me."]


def _byte_bpe_tokenizer(out: Path, tokenizer_class, specials: list[str], model_max_length: int,
                        vocab_size: int = 400):
    """A byte-level BPE (GPT-2 style vocab.json + merges.txt, as DeBERTa and BART ship) as `tokenizer_class`,
    saved to `out`; model_max_length as the real checkpoint's (bert_score truncates to it)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 4, vocab_size=vocab_size, special_tokens=specials)
    work = out / "_bpe"
    work.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe.save_model(str(work))
    tok = tokenizer_class(vocab=vocab, merges=merges, model_max_length=model_max_length)  # transformers 5 names
    shutil.rmtree(work)
    tok.save_pretrained(out)
    return tok


def build_deberta(out: Path, seed: int = 0) -> Path:
    """A 24-layer, 16-wide DebertaModel with a byte-level BPE tokenizer (microsoft/deberta-large's architecture)."""
    import torch
    from transformers import DebertaConfig, DebertaModel, DebertaTokenizerFast

    tok = _byte_bpe_tokenizer(out, DebertaTokenizerFast, ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], 512)
    torch.manual_seed(seed)
    # deberta-large has 24 layers; so does this one (16 wide), so layer choices like BERTScore's 17 stay valid
    config = DebertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=24, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    DebertaModel(config).save_pretrained(out)
    return out


def build_bert(out: Path, seed: int = 0) -> Path:
    """A 12-layer, 16-wide BertModel with a lowercasing WordPiece tokenizer (google-bert/bert-base-uncased's
    architecture, JIC's BERTScore encoder)."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(TEXTS * 4, vocab_size=400, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]",
                                                                             "[MASK]"])
    # transformers 5: `vocab` (a dict here), not `vocab_file`; model_max_length as the real checkpoint's (512)
    tok = BertTokenizerFast(vocab=wordpiece.get_vocab(), do_lower_case=True, model_max_length=512)
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    # bert-base-uncased has 12 layers; so does this one, so BERTScore's layer 9 (bertscore_layers) stays valid:
    # bert_score 0.3.13 asserts num_layers <= the model's layer count and keeps the first num_layers
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=12, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    BertModel(config).save_pretrained(out)
    return out


def build_bart(out: Path, seed: int = 0) -> Path:
    """A 1+1-layer BartForConditionalGeneration with a byte-level BPE tokenizer (facebook/bart-base's architecture)."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    tok = _byte_bpe_tokenizer(out, BartTokenizerFast, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], 1024)
    torch.manual_seed(seed)
    config = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=512, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id,
                        forced_eos_token_id=tok.eos_token_id)
    BartForConditionalGeneration(config).save_pretrained(out)
    return out


def build_llama(out: Path, seed: int = 0) -> Path:
    """The repository's micro Llama (LlamaForCausalLM, chat template) under a Llama/Mistral id, with its output
    embedding untied from its input one, as Meta-Llama-3-8B-Instruct has it (tie_word_embeddings false).

    Tied, a random micro Llama greedily repeats the last prompt token, the "\\n" after "assistant", so every greedy
    reply (11_generate_jic) strips to "" and JIC's overlap metrics, BERTScore included, would score no pair."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lib.models import build_tiny_llama

    build_tiny_llama(out, texts=TEXTS)
    config = LlamaConfig.from_pretrained(out)
    config.tie_word_embeddings = False
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    return out


def copy_minilm(out: Path) -> Path:
    """The real all-MiniLM-L6-v2 (offline, from its PyPI package) under its Hub id."""
    from lib.models import minilm_path

    shutil.copytree(minilm_path(), out)
    return out


BUILDERS = {"causal": build_llama, "encoder": build_deberta, "bert": build_bert, "seq2seq": build_bart,
            "sentence": copy_minilm}


def build_models(cache: Path, work: Path, ids: dict[str, str]) -> None:
    """Build each {hub id: kind} once and install it under its id."""
    for repo_id, kind in ids.items():
        src = BUILDERS[kind](work / repo_id.replace("/", "--"))
        put_model(cache, repo_id, src)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
