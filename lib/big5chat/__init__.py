"""BIG5-CHAT (arXiv 2410.16491): the paper's instructions and prompts, shared by its rooms.

The pipeline: SODA scenarios -> one agent's replies regenerated with DExperts at each trait x level
(`07_dexperts_big5chat`: data, experts, dexperts) -> SFT and DPO of the student on the paper's released replies or on
07's (`08_sft_big5chat`, `09_dpo_big5chat`: released, rows) -> questionnaires, replies and reasoning
(`11_generate_big5chat`, `12_eval_big5chat`, `12_reasoning_big5chat`: released, reasoning, lib/psychometrics.py).

The rooms: data (SODA, expert texts, 07's released source), released (the paper's released replies, their splits,
rows and reply-level evaluation), experts (training and checking the DExperts experts, steering), dexperts (the
decoding), rows (rows from 07's generations), reasoning (lm-evaluation-harness). Here: the trait instructions (the
expert's, the persona's), the dialogue and expert prompts, the demo baseline, published numbers.
"""
from __future__ import annotations

from lib.prompts import check_template
from lib.traits import LEVELS, NAMES, TRAITS

# BIG5-CHAT Table 2 (BFI, LLaMA-3-8B-Instruct): target-trait score when induced (high, low). The paper reports the
# untrained model at about 3.0 on every trait.
PUBLISHED_BFI_8B = {
    "dpo": {"O": (5.0, 1.6), "C": (5.0, 1.6), "E": (4.8, 2.5), "A": (4.8, 1.0), "N": (3.5, 1.1)},
}

# Descriptions for the "demo" prompting baseline, from the standard Big-Five adjective markers.
TRAIT_DESCRIPTIONS = {
    "O": {"high": "curious, imaginative, open to new ideas, art and unusual experiences",
          "low": "conventional, practical, prefers the familiar and concrete over the abstract or new"},
    "C": {"high": "organised, dependable, careful, plans ahead and follows through",
          "low": "spontaneous, careless about order and plans, easily distracted from duties"},
    "E": {"high": "outgoing, talkative, energetic, enjoys company and excitement",
          "low": "reserved, quiet, prefers solitude and calm, speaks little"},
    "A": {"high": "warm, kind, cooperative, trusting and considerate of others",
          "low": "blunt, critical, competitive, sceptical of others' intentions"},
    "N": {"high": "anxious, easily worried or upset, moody, sensitive to stress",
          "low": "calm, emotionally stable, relaxed, rarely upset"},
}

# The base model's dialogue prompt lives in params/prompts/big5chat_dialogue.txt (the paper's begins "Imagine you are
# {agent} ..." and asks for at most 50 words); these are the placeholders it may use.
TEMPLATE_FIELDS = {"agent", "partner", "narrative", "history"}


def check_trait_level(trait: str, level: str) -> None:
    """Raise a ValueError naming an unknown trait letter or level."""
    if trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; expected one of {list(TRAITS)}")
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; expected one of {LEVELS}")


def expert_instruction(trait: str, level: str) -> str:
    """The expert's own prompt (the paper's wording)."""
    check_trait_level(trait, level)
    return f"Help me complete the sentence with certain Big Five Personality: {NAMES[trait]} - {level}"


def persona_instruction(trait: str, level: str) -> str:
    """The SFT/DPO instruction, also the instruction-prompt baseline (the paper's wording)."""
    check_trait_level(trait, level)
    return f"You are a helpful assistant with the following Big Five personality traits: {NAMES[trait]} - {level}"


# ---------------------------------------------------------------------------------------------------------------
# Prompts


def dialogue_messages(unit: dict, template: str) -> list[dict]:
    """The base model's chat: the filled dialogue prompt (params/prompts/big5chat_dialogue.txt) as the user message."""
    check_template(template, TEMPLATE_FIELDS, what="dialogue")
    history = "\n".join(f"{t['speaker']}: {t['text']}" for t in unit["history"])
    content = template.format(agent=unit["agent"], partner=unit["partner"], narrative=unit["narrative"],
                              history=history)
    return [{"role": "user", "content": content.strip()}]


def expert_messages(trait: str, level: str) -> list[dict]:
    """The expert's chat: its instruction alone, as the user turn — what it was trained on (`expert_rows`).

    As in the paper's reference code the expert never reads the dialogue: it continues, from its instruction, the
    reply generated so far (every generated token is fed to the expert rows too; see lib.big5chat.dexperts).
    """
    return [{"role": "user", "content": expert_instruction(trait, level)}]


# ---------------------------------------------------------------------------------------------------------------
# Prompting baselines


def demo_messages(trait: str, level: str, descriptions: dict, examples: list[str]) -> list[dict]:
    """The "demo" baseline: the instruction, a description of the level, and texts by people at that level."""
    check_trait_level(trait, level)
    lines = [persona_instruction(trait, level) + ".",
             f"People with {level} {NAMES[trait].lower()} are {descriptions[trait][level]}."]
    if examples:
        lines.append("Here is how such people write:")
        lines += [f"- {ex.strip()}" for ex in examples if ex.strip()]
    return [{"role": "system", "content": "\n".join(lines)}]
