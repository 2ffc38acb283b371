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


def _train_byte_bpe(vocab_size: int = 400, first: tuple[str, ...] = (), last: tuple[str, ...] = ()
                    ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a GPT-2 style byte-level BPE trained on TEXTS: the `first` special tokens take the lowest
    ids, the trained vocabulary follows, and the `last` ones come after it (RoBERTa-family vocabularies put <mask>
    or [MASK] at the very end, id 50264 in the real files)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS * 4, vocab_size=vocab_size, special_tokens=list(first), show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in last:
        vocab[token] = len(vocab)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return vocab, merges


def build_deberta(out: Path, seed: int = 0) -> Path:
    """microsoft/deberta-large in miniature: 24 layers (so layer choices like BERTScore's stay valid), 16 wide, and
    the real repo's quirks, which a kinder stand-in would hide:

    - The tokenizer files are only vocab.json, merges.txt and a two-key tokenizer_config.json
      ({"do_lower_case": false, "vocab_type": "gpt2"}): no tokenizer.json, no special_tokens_map.json and no
      model_max_length, so AutoTokenizer reports transformers' "no limit" (int(1e30)) and `truncation=True` alone
      truncates nothing. Whoever tokenizes for it must pass max_length (the config's max_position_embeddings, 512).
    - Positions are relative only (relative_attention, position_biased_input false, pos_att_type c2p|p2c), so a
      text past 512 tokens does not crash the model the way BERT's absolute embeddings would: it is silently encoded
      with clipped relative positions.
    - [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3 first and [MASK] last, as in the real vocabulary.
    """
    import torch
    from transformers import DebertaConfig, DebertaModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    vocab, merges = _train_byte_bpe(first=("[PAD]", "[CLS]", "[SEP]", "[UNK]"), last=("[MASK]",))
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False, "vocab_type": "gpt2"}),
                                               encoding="utf-8")
    torch.manual_seed(seed)
    config = DebertaConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=24, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=512, relative_attention=True,
                           position_biased_input=False, pos_att_type="c2p|p2c", max_relative_positions=-1,
                           layer_norm_eps=1e-7, type_vocab_size=0, pad_token_id=vocab["[PAD]"])
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


# facebook/bart-base's config.json (transformers 4.12 era) carries these generation settings itself and the repo has
# no generation_config.json; transformers 5 pops them from the model config and builds model.generation_config from
# config.json instead (GenerationMixin.adjust_generation_fn), so generate() does 4-beam search with 3-gram blocking
# unless the caller says otherwise.
BART_BASE_GENERATION = {
    "early_stopping": True, "no_repeat_ngram_size": 3, "num_beams": 4, "forced_bos_token_id": 0,
    "forced_eos_token_id": 2,
    "task_specific_params": {
        "summarization": {"length_penalty": 1.0, "max_length": 128, "min_length": 12, "num_beams": 4},
        "summarization_cnn": {"length_penalty": 2.0, "max_length": 142, "min_length": 56, "num_beams": 4},
        "summarization_xsum": {"length_penalty": 1.0, "max_length": 62, "min_length": 11, "num_beams": 6},
    },
}


def build_bart(out: Path, seed: int = 0) -> Path:
    """facebook/bart-base in miniature (1+1 layers, 32 wide) with its quirks:

    - <s> 0, <pad> 1, </s> 2, <unk> 3 first and <mask> last, as in the real vocabulary;
    - the legacy generation keys in config.json (BART_BASE_GENERATION: num_beams 4, no_repeat_ngram_size 3,
      early_stopping, forced_bos_token_id 0, forced_eos_token_id 2, task_specific_params) and NO
      generation_config.json, so a caller that wants greedy decoding has to ask for num_beams=1 itself.
    """
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizerFast

    out = Path(out)
    vocab, merges = _train_byte_bpe(first=("<s>", "<pad>", "</s>", "<unk>"), last=("<mask>",))
    tok = BartTokenizerFast(vocab=vocab, merges=merges, model_max_length=1024)  # transformers 5 names
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    config = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=1024, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.eos_token_id)
    BartForConditionalGeneration(config).save_pretrained(out)  # refuses generation keys in the config: added below
    (out / "generation_config.json").unlink()
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    (out / "config.json").write_text(json.dumps(saved | BART_BASE_GENERATION, indent=2), encoding="utf-8")
    return out


# Meta-Llama-3's 256 special tokens in their real order (ids 128000-128255 there; here right after the small
# trained vocabulary, same relative order).
LLAMA3_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(4)]
                   + ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
                   + [f"<|reserved_special_token_{i}|>" for i in range(5, 251)])
# Meta-Llama-3-8B-Instruct's tokenizer_config.json chat template, verbatim.
LLAMA3_CHAT_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
                        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
                        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
                        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
                        "{% endif %}")
# The tiktoken-style pre-tokenizer split of Llama 3's tokenizer.json.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def build_llama(out: Path, seed: int = 0) -> Path:
    """meta-llama/Meta-Llama-3-8B-Instruct in miniature (2 layers, 32 wide, grouped-query attention) with the real
    repo's quirks, which the ChatML micro model of the tiny profile (lib.models.build_tiny_llama) does not have:

    - a byte-level BPE over TEXTS followed by Llama 3's 256 special tokens in their real order (LLAMA3_SPECIALS);
    - the tokenizer.json post-processor prepends <|begin_of_text|>, so tok(text) starts with BOS and a chat prompt
      rendered by the template (which writes bos_token itself) gets a second BOS unless tokenized with
      add_special_tokens=False;
    - bos <|begin_of_text|>, eos <|eot_id|>, NO pad token (pad_token is None: padding needs one set by the caller),
      and tokenizer_config.json's model_max_length is transformers' "no limit" (int(1e30)) as in the real file;
    - the real chat template (LLAMA3_CHAT_TEMPLATE): header tokens, "\n\n", trimmed content, <|eot_id|>;
    - generation_config.json as the real one: eos [<|end_of_text|>, <|eot_id|>], do_sample with temperature 0.6
      and top_p 0.9, max_length 4096, no pad_token_id; so generate() samples unless told do_sample=False.

    Its output embedding is untied from its input one, as Meta-Llama-3-8B-Instruct has it (tie_word_embeddings
    false). Tied, a random micro Llama greedily repeats the last prompt token, the "\n" after "assistant", so every
    greedy reply (11_generate_jic) strips to "" and JIC's overlap metrics, BERTScore included, would score no pair."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 4, trainers.BpeTrainer(vocab_size=400, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(LLAMA3_SPECIALS)
    ids = {t: tok.token_to_id(t) for t in LLAMA3_SPECIALS}
    bos, eot, end = ids["<|begin_of_text|>"], ids["<|eot_id|>"], ids["<|end_of_text|>"]
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    tok.save(str(out / "tokenizer.json"))
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "added_tokens_decoder": added, "bos_token": "<|begin_of_text|>", "chat_template": LLAMA3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True, "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2), encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                             "eos_token": "<|eot_id|>"}), encoding="utf-8")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         rope_theta=500000.0, rms_norm_eps=1e-5, bos_token_id=bos, eos_token_id=eot,
                         pad_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[end, eot], do_sample=True,
                                               temperature=0.6, top_p=0.9, max_length=4096)
    model.save_pretrained(out)
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    saved.pop("pad_token_id", None)  # the real config.json has no such key (transformers writes it as null)
    (out / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")
    return out


def copy_minilm(out: Path) -> Path:
    """The real all-MiniLM-L6-v2 (offline, from its PyPI package) under its Hub id."""
    from lib.models import minilm_path

    shutil.copytree(minilm_path(), out)
    return out


GTR_WIDTH = 16  # d_model of the gtr-t5-base stand-in (768 in the real one)
GTR_EXTRA_IDS = 100  # T5's <extra_id_0..99> sentinels, after the SentencePiece vocabulary


def _train_t5_spiece(vocab_size: int = 200) -> bytes:
    """A SentencePiece unigram model over TEXTS with T5's specials: <pad> 0, </s> 1, <unk> 2 and no BOS."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 4), model_writer=buf, model_type="unigram",
                                   vocab_size=vocab_size, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", minloglevel=2)
    return buf.getvalue()


def build_gtr_t5(out: Path, seed: int = 0) -> Path:
    """sentence-transformers/gtr-t5-base in miniature (2 layers, 16 wide) in the real repo's layout and quirks:

    - a sentence-transformers pipeline (modules.json): 0 Transformer at the root, 1_Pooling (mean, in the legacy
      pooling_mode_* keys), 2_Dense (square, no bias, torch.nn.modules.linear.Identity activation), 3 Normalize
      (no folder in the repo), sentence_bert_config.json {"max_seq_length": 512, "do_lower_case": false};
    - config.json of a T5EncoderModel (architectures ["T5EncoderModel"], model_type t5, is_encoder_decoder true,
      the legacy "n_positions": 512): relative positions and NO max_position_embeddings, so nothing in the config
      tells the input limit; only the tokenizer's model_max_length (512) and the pipeline's max_seq_length do, and
      a longer text does not crash the model: it is encoded at relative positions it never saw;
    - a SentencePiece unigram tokenizer (spiece.model, tokenizer.json) with <pad> 0, </s> 1, <unk> 2, no BOS, </s>
      appended to every text, the 100 <extra_id_*> sentinels after the pieces, and the legacy tokenizer_config.json
      (tokenizer_class T5Tokenizer, extra_ids 100, model_max_length 512);
    - an embedding table larger than the tokenizer (32128 rows for 32100 tokens in the real one).
    """
    import sentencepiece as spm
    import torch
    from safetensors.torch import save_file
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    proto = _train_t5_spiece()
    (out / "spiece.model").write_bytes(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    tok = T5Tokenizer(vocab=[(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())],
                      extra_ids=GTR_EXTRA_IDS, model_max_length=512)
    tok.save_pretrained(out)  # tokenizer.json; the config files are replaced by the repo's legacy ones below
    extra = [f"<extra_id_{i}>" for i in range(GTR_EXTRA_IDS)]
    specials = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (out / "tokenizer_config.json").write_text(json.dumps(specials | {
        "extra_ids": GTR_EXTRA_IDS, "additional_special_tokens": extra, "model_max_length": 512,
        "special_tokens_map_file": None, "name_or_path": "t5-base", "tokenizer_class": "T5Tokenizer"}),
        encoding="utf-8")
    (out / "special_tokens_map.json").write_text(json.dumps(specials | {"additional_special_tokens": extra}),
                                                 encoding="utf-8")
    torch.manual_seed(seed)
    vocab_size = -(-len(tok) // 64) * 64  # padded past the tokenizer, as 32128 > 32100
    config = T5Config(vocab_size=vocab_size, d_model=GTR_WIDTH, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2,
                      num_heads=2, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    T5EncoderModel(config).save_pretrained(out)
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    saved.pop("max_position_embeddings", None)
    saved |= {"architectures": ["T5EncoderModel"], "is_encoder_decoder": True, "n_positions": 512, "use_cache": True,
              "output_past": True}
    (out / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2),
        encoding="utf-8")
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}),
                                                   encoding="utf-8")
    (out / "config_sentence_transformers.json").write_text(json.dumps({"__version__": {
        "sentence_transformers": "2.2.0", "transformers": "4.7.0", "pytorch": "1.9.0+cu102"}}, indent=2),
        encoding="utf-8")
    write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": GTR_WIDTH, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False})
    write_json(out / "2_Dense" / "config.json", {"in_features": GTR_WIDTH, "out_features": GTR_WIDTH, "bias": False,
                                                 "activation_function": "torch.nn.modules.linear.Identity"})
    dense = torch.nn.Linear(GTR_WIDTH, GTR_WIDTH, bias=False)
    save_file({"linear.weight": dense.weight.detach().contiguous()}, str(out / "2_Dense" / "model.safetensors"))
    return out


BUILDERS = {"causal": build_llama, "encoder": build_deberta, "bert": build_bert, "seq2seq": build_bart,
            "sentence": copy_minilm, "sentence_t5": build_gtr_t5}


def build_models(cache: Path, work: Path, ids: dict[str, str]) -> None:
    """Build each {hub id: kind} once and install it under its id."""
    for repo_id, kind in ids.items():
        src = BUILDERS[kind](work / repo_id.replace("/", "--"))
        put_model(cache, repo_id, src)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path
