"""hpo_embed.markdown: a generated section is rewritten in place and read back; prose stays."""
from __future__ import annotations

import pytest

from hpo_embed.common import UserError
from hpo_embed.markdown import fill_section, read_section


def test_fill_then_read_a_section_keeps_the_prose_around_it():
    text = "# Title\n\nprose before\n<!-- results:start -->\nold\n<!-- results:end -->\nprose after\n"
    filled = fill_section(text, "results", "| a | b |")   # a body without its newline gets one
    assert filled == "# Title\n\nprose before\n<!-- results:start -->\n| a | b |\n<!-- results:end -->\nprose after\n"
    assert read_section(filled, "results") == "| a | b |\n"
    assert read_section(filled, "notes") is None
    # a body with regex replacement characters is written verbatim
    assert read_section(fill_section(filled, "results", r"p \1 \g<0>"), "results") == "p \\1 \\g<0>\n"


def test_a_text_without_the_marks_is_a_user_error_naming_the_file():
    with pytest.raises(UserError, match=r"README.md: no <!-- results:start --> … <!-- results:end --> section"):
        fill_section("# no marks\n", "results", "x", "README.md")
