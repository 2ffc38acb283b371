"""DPG (arXiv 2404.07084, "Dynamic Generation of Personalities with Large Language Models").

The paper released no code; this package is the reference implementation, one module per pipeline step:

- `data` (01_scrape@dpg): the character windows of the Harry Potter film scripts and the FriendsPersona scenes,
  the selection per character, the held-out characters, and a window's turns as "Speaker: text" lines.
- `label` (05_label@dpg): the personality assessment of each window by the teacher "psychologist" (trait and facet
  knowledge, scores in [-5, 5]), its reliability, the outlier filter, the teacher factory, and P.S.D.C.; 12_eval
  reuses the assessment machine and P.S.D.C. on the students' dialogue.
- `rows` (08_sft@dpg, 10_hypernet@dpg): the personality prompt and the SFT rows both students train on.
- `hypernet` (10_hypernet@dpg, 11_generate@dpg): the hypernetwork from personality prompt to LoRA weights.
- `evaluate` (11_generate@dpg, 12_eval@dpg): the generation units, the students' replies read back as samples,
  the judges' ratings and the trait classifier's agreement.

Callers import the module they use (e.g. lib.dpg.label), not this package; this file holds nothing else. Everything but
`hypernet` and the log-likelihood reading in `label` is plain data handling, tested without a model. Paths are
arguments; nothing points at /work.
"""
