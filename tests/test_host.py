"""`normalize_host` gives the host posthog-python's ``determine_server_host`` gives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from posthog.request import determine_server_host

from analytics_queue._host import DEFAULT_HOST, normalize_host

CASES = [
    None,
    "",
    "   ",
    "\t\n",
    "https://us.posthog.com",
    "https://us.posthog.com/",
    "https://us.posthog.com//",
    "https://app.posthog.com",
    "https://app.posthog.com/",
    " https://app.posthog.com/ ",
    "https://eu.posthog.com",
    "https://eu.posthog.com/",
    "https://EU.posthog.com",
    "http://eu.posthog.com",
    "https://us.i.posthog.com",
    "https://eu.i.posthog.com/",
    "https://posthog.example.com",
    "https://posthog.example.com/",
    "https://posthog.example.com/prefix/",
    "http://127.0.0.1:8000",
    "  http://localhost:8000/  ",
]


@pytest.mark.parametrize("url", CASES)
def test_matches_posthog(url: str | None) -> None:
    assert normalize_host(url) == determine_server_host(url)


def test_app_hosts_become_ingestion_hosts() -> None:
    assert normalize_host("https://eu.posthog.com/") == "https://eu.i.posthog.com"
    assert normalize_host("https://app.posthog.com") == "https://us.i.posthog.com"
    assert normalize_host("") == DEFAULT_HOST


_hosts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(CASES[4:]).flatmap(
        lambda base: st.tuples(
            st.sampled_from(["", " ", "\t"]), st.sampled_from(["", "/", "//", " "])
        ).map(lambda pad: pad[0] + base + pad[1])
    ),
)


@given(_hosts)
def test_matches_posthog_on_generated_values(url: str) -> None:
    assert normalize_host(url) == determine_server_host(url)
