"""Rows of the reliability matrix, kept until ``tests/reliability.py`` (the matrix) is present.

Same signature as ``reliability.record``: the rows go to ``build/reliability-rows.json``, one per
(runtime, ending), replaced when measured again. Meant for the pytest process only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

DATA: Final = Path(__file__).resolve().parent.parent / "build" / "reliability-rows.json"


def record(
    runtime: str,
    ending: str,
    tracked: int,
    delivered: int,
    duplicates: int,
    exit_seconds: float,
    hookup: str = "nothing",
) -> None:
    """Keep one measured row (see ``reliability.record``)."""
    rows = json.loads(DATA.read_text(encoding="utf-8")) if DATA.exists() else []
    rows = [r for r in rows if (r["runtime"], r["ending"]) != (runtime, ending)]
    rows.append(
        {
            "runtime": runtime,
            "ending": ending,
            "tracked": tracked,
            "delivered": delivered,
            "duplicates": duplicates,
            "exit_seconds": round(exit_seconds, 2),
            "hookup": hookup,
        }
    )
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
