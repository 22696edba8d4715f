"""docs/configuration.md shows exactly the options config.py declares."""

from __future__ import annotations

from options_table import BEGIN, END, PAGE, page_with_table


def test_the_configuration_page_lists_every_option_as_declared() -> None:
    text = PAGE.read_text()
    assert BEGIN in text and END in text
    assert text == page_with_table(text), "run: python tests/options_table.py"
