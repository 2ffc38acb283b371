"""PersonalityChat (arXiv 2401.07363), one module per pipeline step, plus the response models.

The paper's pipeline: PersonaChat personas -> a teacher labels each persona per Big-Five trait ("No clues", or
"Probably low/high, given <reason>") (`05_label`) -> for each PersonaChat sample, trait levels are sampled for both
speakers and the teacher writes one whole dialogue conditioned on both personas and both speakers' traits
(single-agent generation, `06_synthesize`) -> response generators fine-tuned on PersonaChat (P), the synthesized set
(PT) and both (P+PT), with the responder's persona facts and trait labels as control text (`08_sft`) -> dataset
statistics, response metrics and trait control (`12_eval`). The modules, by step:

- `data` (01_scrape): PersonaChat loaders (XPersona, Synthetic-Persona-Chat, the Hub's ConvAI2), persona keys and the
  unique personas that 05_label labels.
- `label` (05_label): label prompts, parsing and repair of the teacher's answers, whole mode's repair rounds, the
  labels collected per persona, their summary and distribution.
- `synthesize` (06_synthesize): trait sampling, the dialogue prompt, transcript parsing, validation and repair, and
  persona leakage; also the prompt and markup helpers the other modules share.
- `rows` (08_sft): control text and the prompt-completion rows of the P / PT / P+PT sets; `chat_for_turn` also gives
  11_generate its contexts.
- `evaluate` (12_eval): Table 3's dataset statistics, response metrics, trait-control markers and their intervals.
- `seq2seq`, `perplexity`: the BART/T5 response models, and reference perplexity for both architectures.

Callers import the module they use (e.g. lib.pchat.label). Everything but seq2seq and perplexity is
plain data handling, tested without a model.

One dialogue schema for every source:

    {"id", "source", "personas": {"A": [fact, ...], "B": [fact, ...]}, "turns": [{"speaker": "A"|"B", "text"}],
     "traits": {"A": {"O": "high", ...}, "B": {...}}}      # "traits" only on synthesized (or labelled) dialogues

The constants below are shared by several modules.
"""
from __future__ import annotations

LABELS = ("no_clues", "low", "high")
LABELLED = LABELS[1:]  # the levels a label can name, in the label prompt's order ("Probably low/high")
SPEAKERS = ("A", "B")
