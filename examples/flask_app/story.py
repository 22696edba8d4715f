"""A deterministic stand-in for the AI call that writes a story: same topic, same story."""

from __future__ import annotations

import hashlib
import time

_OPENINGS = (
    "Once upon a time, {topic} changed everything in a quiet little town.",
    "Nobody expected {topic} to arrive on a Tuesday.",
    "The old map had a single word scrawled in the corner: {topic}.",
    "It began, as these things do, with {topic} and a cup of tea.",
)
_MIDDLES = (
    "The baker swore it was a sign, and the mayor called a meeting.",
    "A child noticed first, of course, and told no one but the cat.",
    "By noon the rumour had crossed the river twice.",
    "The librarian found three books on the subject, all of them wrong.",
)
_TURNS = (
    "Then the lights flickered, and the whole square held its breath.",
    "But the storm that night rewrote every plan.",
    "Then a stranger arrived with a suitcase full of questions.",
    "Yet nobody could agree on what it meant.",
)
_ENDINGS = (
    "In the end, {topic} stayed, and the town was never quite the same.",
    "And so {topic} became the story everyone told, each a little differently.",
    "By morning, {topic} was simply part of the place, like the bridge and the bells.",
    "They still talk about {topic}, usually after the second cup of tea.",
)


def write_story(topic: str) -> str:
    """The story for ``topic``: four sentences chosen by a hash of it."""
    digest = hashlib.sha256(topic.encode("utf-8")).digest()
    parts = [
        options[digest[i] % len(options)]
        for i, options in enumerate((_OPENINGS, _MIDDLES, _TURNS, _ENDINGS))
    ]
    return " ".join(parts).format(topic=topic)


def generate_story(topic: str, seconds: float) -> str:
    """Take ``seconds``, like a call to a language model would, and return the story."""
    if seconds > 0:
        time.sleep(seconds)
    return write_story(topic)
