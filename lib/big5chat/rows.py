"""BIG5-CHAT's training rows from 07's generations: the experts' prompt-completion rows, and the student's SFT rows
and DPO pairs (the `generated` source of 08/09; the released data's rows are in lib/big5chat/released.py).
"""
from __future__ import annotations

from collections import Counter, defaultdict

from lib.big5chat import check_trait_level, expert_messages, persona_instruction
from lib.traits import LEVELS, NAMES, OPPOSITE


def expert_rows(texts: list[str], trait: str, level: str, max_words: int | None = None) -> list[dict]:
    """Prompt-completion rows for one expert: its instruction, then a human text written at that level."""
    prompt = expert_messages(trait, level)  # the decoding prompt, so the expert is steered from what it learnt
    rows = []
    for text in texts:
        words = str(text).split()
        if max_words is not None:
            words = words[:max_words]
        if words:
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": " ".join(words)}]})
    if not rows:
        raise ValueError(f"no non-empty texts for the {NAMES[trait]} - {level} expert")
    return rows


def _user_content(generation: dict) -> str:
    """The dialogue prompt of a generated reply: the last user message of its base chat."""
    users = [m["content"] for m in generation["messages"] if m["role"] == "user"]
    if not users:
        raise ValueError(f"generation {generation.get('unit_id')!r} has no user message")
    return users[-1]


def sft_rows(generations: list[dict]) -> tuple[list[dict], int]:
    """(rows, skipped): the persona instruction + dialogue prompt -> the reply steered to that trait and level."""
    rows, skipped = [], 0
    for g in generations:
        reply = (g.get("reply") or "").strip()
        if not reply:
            skipped += 1
            continue
        prompt = [{"role": "system", "content": persona_instruction(g["trait"], g["level"])},
                  {"role": "user", "content": _user_content(g)}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": reply}]})
    return rows, skipped


def dpo_pairs(generations: list[dict]) -> tuple[list[dict], dict]:
    """(pairs, stats): per unit and trait, the target level's reply is chosen and the opposite level's rejected.

    Both levels serve as the target, so a complete group gives two pairs: mirrored twins (the same two replies), which
    a policy blind to the level in the instruction gets exactly half right. Each pair carries its unit_id, trait and
    target (the trainers keep only prompt, chosen and rejected), so that held-out results can be grouped. Replies are
    grouped by unit id (one scenario and turn), so a pair never mixes scenarios or turns; a unit id seen with two
    scenario ids is an error.
    """
    groups: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    scenario_of: dict[str, str] = {}
    for g in generations:
        check_trait_level(g["trait"], g["level"])
        seen = scenario_of.setdefault(g["unit_id"], g["scenario_id"])
        if seen != g["scenario_id"]:
            raise ValueError(f"unit {g['unit_id']!r} appears under scenarios {seen!r} and {g['scenario_id']!r}")
        slot = groups[(g["unit_id"], g["trait"])]
        if g["level"] in slot:
            raise ValueError(f"unit {g['unit_id']!r}, trait {g['trait']}: two replies at level {g['level']!r}")
        slot[g["level"]] = g
    pairs, stats = [], Counter()
    for (unit_id, trait), slot in groups.items():
        if set(slot) != set(LEVELS):
            stats["missing_level"] += 1
            continue
        replies = {lvl: (slot[lvl].get("reply") or "").strip() for lvl in LEVELS}
        if not all(replies.values()):
            stats["empty_reply"] += 1
            continue
        if replies["high"] == replies["low"]:
            stats["identical"] += 1
            continue
        for target in LEVELS:
            prompt = [{"role": "system", "content": persona_instruction(trait, target)},
                      {"role": "user", "content": _user_content(slot[target])}]
            pairs.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": replies[target]}],
                          "rejected": [{"role": "assistant", "content": replies[OPPOSITE[target]]}],
                          "unit_id": unit_id, "trait": trait, "target": target})
        stats["groups_used"] += 1
    return pairs, dict(stats)
