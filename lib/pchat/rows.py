"""Training rows for the response generators (08_sft): the responder's control text (persona facts, and trait levels
where a dialogue has them), the chat for one target turn, and the prompt-completion rows of the P, PT and P+PT sets.

    train_rows, skipped = rows.training_rows("P+PT", p_dialogues, pt_dialogues)   # -> lib.train.sft
    messages, reference = rows.chat_for_turn(dialogue, turn)                       # 11_generate's contexts too
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from lib.pchat.synthesize import persona_block, traits_text
from lib.prompts import check_template

# Fields: {persona} (bulleted facts) and {personality} (the traits line, or "" when the row has no traits).
DEFAULT_SFT_SYSTEM = "You are chatting with a new acquaintance.\nYour persona:\n{persona}\n{personality}"
TRAINING_SETS = ("P", "PT", "P+PT")


def control_text(facts: Sequence[str], levels: Mapping[str, str] | None,
                 template: str = DEFAULT_SFT_SYSTEM) -> str:
    """The responder's control text: persona facts, then "Your personality: ..." when trait levels are given."""
    check_template(template, {"persona", "personality"}, what="control")
    personality = f"Your personality: {traits_text(levels)}" if levels else ""
    return template.format(persona=persona_block(facts), personality=personality).strip()


def chat_for_turn(dialogue: Mapping, target: int, template: str = DEFAULT_SFT_SYSTEM, use_traits: bool = True,
                  max_history: int | None = None, levels: Mapping[str, str] | None = None):
    """(messages, target text): the control text as system message, then the history from the target speaker's side.

    `levels` overrides the speaker's trait levels (the trait-control probes of 12_eval); `max_history` keeps only
    the last turns before the target.
    """
    turns = dialogue["turns"]
    if not 0 < target < len(turns):
        raise ValueError(f"dialogue {dialogue['id']}: target turn {target} outside 1..{len(turns) - 1}")
    me = turns[target]["speaker"]
    facts = dialogue["personas"].get(me) or []
    if not facts:
        raise ValueError(f"dialogue {dialogue['id']}: speaker {me} of turn {target} has no persona facts")
    if levels is None and use_traits:
        levels = (dialogue.get("traits") or {}).get(me)
    history = turns[:target] if max_history is None else turns[max(0, target - max_history):target]
    messages = [{"role": "system", "content": control_text(facts, levels if use_traits else None, template)}]
    messages += [{"role": "assistant" if t["speaker"] == me else "user", "content": t["text"]} for t in history]
    return messages, turns[target]["text"]


def sft_rows(dialogues: Sequence[Mapping], template: str = DEFAULT_SFT_SYSTEM, use_traits: bool = True,
             max_history: int | None = None) -> tuple[list[dict], dict]:
    """(rows, skipped): prompt-completion rows for every turn after the first whose speaker has persona facts.

    Rows have the conversational shape of lib/jic and lib/big5chat, so lib.train.sft trains on them. The
    control text carries the speaker's trait levels when the dialogue has "traits" (PT) and `use_traits` is set.
    """
    rows, skipped = [], Counter()
    for d in dialogues:
        for t in range(len(d["turns"])):
            if t == 0:
                skipped["first_turn"] += 1
                continue
            if not d["personas"].get(d["turns"][t]["speaker"]):
                skipped["no_persona"] += 1
                continue
            prompt, target = chat_for_turn(d, t, template, use_traits, max_history)
            rows.append({"id": f"{d['id']}-t{t}", "prompt": prompt,
                         "completion": [{"role": "assistant", "content": target}]})
    return rows, dict(skipped)


def training_rows(name: str, p_dialogues: Sequence[Mapping], pt_dialogues: Sequence[Mapping],
                  **kwargs) -> tuple[list[dict], dict]:
    """The rows of one training set: "P" (PersonaChat), "PT" (synthesized) or "P+PT" (both)."""
    if name not in TRAINING_SETS:
        raise ValueError(f"unknown training set {name!r}; expected one of {TRAINING_SETS}")
    parts = {"P": [p_dialogues], "PT": [pt_dialogues], "P+PT": [p_dialogues, pt_dialogues]}[name]
    rows, skipped = [], Counter()
    for dialogues in parts:
        r, s = sft_rows(dialogues, **kwargs)
        rows += r
        skipped.update(s)
    if not rows:
        raise ValueError(f"training set {name!r} has no rows (skipped: {dict(skipped)})")
    return rows, dict(skipped)
