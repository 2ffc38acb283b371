"""Prompt templates, the text files under params/prompts/: the one check of their placeholders.

Every stage that fills a template checks it first, so a typo in a prompt file stops the stage with the file's
unknown placeholders named, before any teacher call or model load:

    check_template(Path("params/prompts/dpg_judge.txt").read_text(), {"character", "reply"}, required={"reply"},
                   what="judge")
"""
from __future__ import annotations

import string
from collections.abc import Collection


def template_fields(template: str) -> set[str]:
    """The placeholder names in a str.format template ("{name}" -> "name"; a bare "{}" is "")."""
    try:
        return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as err:  # an unmatched brace
        raise ValueError(f"prompt template is not a valid format string: {err}") from None


def check_template(template: str, allowed: Collection[str], required: Collection[str] = (),
                   what: str = "prompt") -> set[str]:
    """The template's placeholders, after checking that each is `allowed` and each of `required` is there.

    Raises ValueError naming the unknown placeholders and the allowed ones, or the first missing required one;
    `what` names the template in the message ("judge template has no {reply} placeholder").
    """
    fields = template_fields(template)
    unknown = fields - set(allowed)
    if unknown:
        raise ValueError(f"{what} template has unknown placeholders {sorted(unknown)}; allowed: {sorted(allowed)}")
    for name in required:
        if name not in fields:
            raise ValueError(f"{what} template has no {{{name}}} placeholder")
    return fields
