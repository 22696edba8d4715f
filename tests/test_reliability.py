"""The committed reliability page is exactly what its data renders to."""

from __future__ import annotations

import reliability


def test_the_page_is_rendered_from_the_committed_rows() -> None:
    rows = reliability.load()
    assert rows, "docs/reliability.json holds no row"
    assert reliability.PAGE.read_text(encoding="utf-8") == reliability.render(rows.values()), (
        "docs/reliability.md differs from docs/reliability.json: run python tests/reliability.py"
    )


def test_the_readme_summary_is_rendered_from_the_committed_rows() -> None:
    text = reliability.README.read_text(encoding="utf-8")
    assert reliability.SUMMARY_BEGIN in text and reliability.SUMMARY_END in text
    assert text == reliability.readme_with_summary(text, reliability.load().values()), (
        "README.md's reliability summary differs: run python tests/reliability.py"
    )


def test_every_row_names_a_known_way_of_ending() -> None:
    for runtime, ending in reliability.load():
        assert ending in reliability.ENDINGS, (runtime, ending)
