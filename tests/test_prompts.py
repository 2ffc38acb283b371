"""lib.prompts: the one check of a prompt template's placeholders."""
import pytest

from lib.prompts import check_template, template_fields


def test_fields_of_a_template():
    assert template_fields("Hi {name}, {name} again; {{literal}} and {n:d}") == {"name", "n"}
    assert template_fields("no fields") == set()
    assert template_fields("{}") == {""}


def test_check_names_unknown_and_allowed_placeholders():
    assert check_template("{a} and {b}", {"a", "b", "c"}) == {"a", "b"}
    with pytest.raises(ValueError, match=r"judge template has unknown placeholders \['mood'\]; allowed: \['a', 'b'\]"):
        check_template("{a} {mood}", {"a", "b"}, what="judge")
    with pytest.raises(ValueError, match=r"unknown placeholders \[''\]"):  # a positional {} is no named field
        check_template("{a} {}", {"a"})


def test_check_names_the_first_missing_required_placeholder_in_order():
    with pytest.raises(ValueError, match=r"assessment template has no \{dialogue\} placeholder"):
        check_template("{trait}", {"trait", "dialogue", "answer_format"}, required=("dialogue", "answer_format"),
                       what="assessment")
    check_template("{dialogue}{answer_format}", {"dialogue", "answer_format"}, required=("dialogue", "answer_format"))


def test_an_unmatched_brace_is_named():
    with pytest.raises(ValueError, match="not a valid format string"):
        check_template("{a", {"a"})
