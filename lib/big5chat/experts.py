"""BIG5-CHAT's DExperts experts (§3.2): training one LoRA per trait × level, checking that each learnt its level, and
steering the base model with them.

    metrics = train_experts(student, texts, traits, experts_root, p["expert"])   # resumable, one process per expert
    check = check_scores(score_experts(model, tokenizer, texts, traits))         # per trait: discrimination, gain
    rows = steer(model, tokenizer, units, traits, template, alpha, p, seed)      # replies at every trait × level

`texts` is the expert corpus (columns trait, level, text, heldout), `p` the profile's `dexperts` section.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from lib import stats
from lib.big5chat import dexperts, dialogue_messages, expert_messages
from lib.big5chat.rows import expert_rows
from lib.train import sft_apart
from lib.traits import LEVELS, OPPOSITE


def train_experts(student: str, texts: pd.DataFrame, traits: list[str], experts_root: Path, settings: dict) -> dict:
    """{"<trait>_<level>": train metrics} of one LoRA expert per trait × level, each on its level's texts that are not
    held out, in a process of its own (lib.train.sft_apart: Unsloth's patches must not reach the DExperts batches).
    An expert whose adapter and metrics are already under `experts_root` (a killed run) is kept, not retrained."""
    metrics = {}
    for trait in traits:
        for level in LEVELS:
            name = f"{trait}_{level}"
            expert_dir = experts_root / name
            done = expert_dir / "train_metrics.json"
            if done.exists() and (expert_dir / "adapter" / "adapter_config.json").exists():
                metrics[name] = json.loads(done.read_text())
                continue
            chosen = texts[(texts.trait == trait) & (texts.level == level) & ~texts.heldout].text.tolist()
            rows = expert_rows(chosen, trait, level, max_words=None)
            metrics[name] = sft_apart(student, rows, None, expert_dir, lora=settings["lora"], args=settings["args"],
                                      max_seq_length=settings["max_seq_length"],
                                      accelerate_config=settings["accelerate_config"])
    return metrics


def score_experts(model, tokenizer, texts: pd.DataFrame, traits: list[str], batch_size: int = 16) -> list[dict]:
    """Rows (trait, text_level, text, scorer, nll): every held-out text's mean negative log-likelihood per token under
    the expert of each level and under the base (adapters off), each with its own prompt."""
    scores = []
    for trait in traits:
        for text_level in LEVELS:
            held = texts[(texts.trait == trait) & (texts.level == text_level) & texts.heldout].text.tolist()
            for scorer in (*LEVELS, "base"):
                prompt = expert_messages(trait, text_level if scorer == "base" else scorer)
                adapter = None if scorer == "base" else f"{trait}_{scorer}"
                nll = dexperts.completion_nll(model, tokenizer, prompt, held, adapter, batch_size=batch_size)
                scores += [{"trait": trait, "text_level": text_level, "text": i, "scorer": scorer, "nll": v}
                           for i, v in enumerate(nll)]
    return scores


def check_scores(scores: list[dict]) -> dict:
    """Per trait: the own-level, opposite-level and base losses, and two paired effects over held-out texts with their
    intervals (lib.stats): discrimination (opposite − own: the expert learnt its level beyond the style both levels
    share) and gain over base (base − own)."""
    check = {}
    if not scores:
        return check
    wide = pd.DataFrame(scores).pivot_table(index=["trait", "text_level", "text"], columns="scorer", values="nll")
    wide = wide.reset_index()
    wide["own"] = np.where(wide.text_level == "high", wide["high"], wide["low"])
    wide["opposite"] = np.where(wide.text_level == "high", wide["low"], wide["high"])
    for trait, g in wide.groupby("trait", sort=False):
        disc, gain = stats.mean_ci(g.opposite - g.own), stats.mean_ci(g.base - g.own)
        check[trait] = {"own_expert_nll": float(g.own.mean()), "opposite_expert_nll": float(g.opposite.mean()),
                        "base_nll": float(g.base.mean()), "discrimination": disc, "gain_over_base": gain,
                        "discriminates": stats.direction(disc["lo"], disc["hi"]),
                        "learnt_over_base": stats.direction(gain["lo"], gain["hi"])}
    return check


def steer(model, tokenizer, units: list[dict], traits: list[str], template: str, alpha: float, settings: dict,
          seed: int) -> list[dict]:
    """The agent's reply to every unit × trait × level at this alpha (DExperts, with the opposite level's expert as
    anti-expert where `settings["antiexpert"]`), as rows with the chat the base read; sampled batches seeded from
    `seed`."""
    jobs = [(u, t, lvl) for u in units for t in traits for lvl in LEVELS]
    replies = dexperts.dexperts_generate(
        model, tokenizer,
        base_chats=[dialogue_messages(u, template) for u, _, _ in jobs],
        expert_chats=[expert_messages(t, lvl) for _, t, lvl in jobs],
        experts=[f"{t}_{lvl}" for _, t, lvl in jobs],
        antiexperts=[f"{t}_{OPPOSITE[lvl]}" for _, t, lvl in jobs] if settings["antiexpert"] else None,
        alpha=alpha, max_new_tokens=settings["max_new_tokens"], join_after=settings["join_after"],
        temperature=settings["temperature"], top_p=settings["top_p"], seed=seed, batch_size=settings["batch_size"])
    return [{"unit_id": u["unit_id"], "scenario_id": u["scenario_id"], "trait": t, "level": lvl, "alpha": alpha,
             "messages": dialogue_messages(u, template), "reply": r}
            for (u, t, lvl), r in zip(jobs, replies)]
