"""Masking of PostHog API keys in any text that may reach a log, an exception or an endpoint.

Two rules, applied together by :func:`redact`:

- anything that looks like a PostHog key, a ``phc_`` (project) or ``phx_`` (personal) prefix and
  what follows it up to a space or a delimiter, becomes ``phc_***`` / ``phx_***``, whoever's key
  it is and however it was cut;
- any run of :data:`MIN_FRAGMENT` or more characters copied from the configured key becomes
  ``***``, so that a server echoing a truncated key (``…abcdef12…``) shows none of it.

Pure functions: safe to call from any thread.
"""

from __future__ import annotations

import re
from typing import Final

#: The shortest piece of the configured key that is masked wherever it appears.
MIN_FRAGMENT: Final = 8
MASK: Final = "***"

# The prefix, then everything up to whitespace, a quote or a bracket: a key cut by "…" or
# "..." is masked with what follows it, up to the end of the word.
_KEY_LIKE: Final = re.compile(r"(ph[cx]_)[^\s\"'`<>()\[\]{},;]*")


def redact(text: str, api_key: str | None = None) -> str:
    """Return ``text`` with every PostHog-key-like token and every fragment of ``api_key`` masked.

    Args:
        text: any message.
        api_key: the configured key, if any; pieces of it of :data:`MIN_FRAGMENT` characters or
            more are masked too.
    """
    if api_key and len(api_key) >= MIN_FRAGMENT:
        text = _mask_fragments(text, api_key)
    if "ph" in text:
        text = _KEY_LIKE.sub(lambda m: m.group(1) + MASK, text)
    return text


def _mask_fragments(text: str, key: str) -> str:
    """Mask every span of ``text`` covered by a ``MIN_FRAGMENT``-long piece of ``key``."""
    covered: list[tuple[int, int]] = []
    for start in range(len(key) - MIN_FRAGMENT + 1):
        piece = key[start : start + MIN_FRAGMENT]
        found = text.find(piece)
        while found != -1:
            covered.append((found, found + MIN_FRAGMENT))
            found = text.find(piece, found + 1)
    if not covered:
        return text
    covered.sort()
    out: list[str] = []
    position = 0
    end = -1
    for begin, finish in covered:
        if begin > end:  # a new masked span starts: emit the text before it
            if end >= 0:
                out.append(MASK)
            out.append(text[position:begin])
        end = max(end, finish)
        position = end
    out.append(MASK)
    out.append(text[position:])
    return "".join(out)
