"""JIC (Journal Intensive Conversations), by pipeline step:

- `scrape`: journal entries from PullPush (r/journal) or Essays as journals, cleaned and pseudonymised (01);
- `cluster`, `filtering`: per-author entry clusters (02) and the α/β trait-convergence filter and pairing (04);
- `released`: the paper's released dialogues and their journal entries (06, `synthesize.jic.source: released`);
- `data`: the journals as later stages read them back, and the pair's display names;
- `rows`: SFT rows and generation prompts, plain and RAFt (08, 11); `retrieval`: RAFt's MMR;
- `evaluate`: JIC's overlap metrics as its script computes them, and trait capture (12).

The dialogues themselves are written by the shared two-speaker synthesis, lib/dialogue.py (06).
"""
