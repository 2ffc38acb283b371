"""PersLLM (arXiv 2407.12393): character material in temporal stages, chain-of-thought annotation, personified tuning
with stage tokens and automatic DPO, one module per pipeline step:

- `data` (01_scrape_persllm, 05_label_persllm): the stages as checked, each character's film dialogue by stage cut
  into five-turn segments (the sources) and its own lines (the speeches), biography paragraphs as more sources; the
  seeded 4/5-1/5 split by input and the items (each kept input with its answers by stage and its split).
- `label` (05_label_persllm): what the annotation teacher writes and how it is read: inputs of three types
  (question, thought, error), the retrieved material of an answer prompt within its word budgets, the
  chain-of-thought answer prompts and the `[Analysis] ... [Response] ...` parsing (`evaluate` reads the
  students' answers with it too), and the dedup of inputs by cosine.
- `personify` (08_sft_persllm, 09_dpo_persllm, 11_generate_persllm): personified tuning: stage tokens, SFT rows, the
  general-data mix, automatic DPO pairs, and the personified model with its adapters for inference.
- `evaluate` (11_generate_persllm, 12_eval_persllm): who answers what, distinction BLEU, the judge's readings, and
  the paper's distinction numbers.
- `serve` (11_generate_persllm with `backend: vllm`): the personified base and the stacked SFT + DPO adapter behind
  one `vllm serve`.

Callers import the module they use (e.g. lib.persllm.label), not this package; this file holds nothing else.
`data`, `label` and `evaluate` are plain data handling, tested without a model.
"""
