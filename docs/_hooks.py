"""MkDocs hook: a page in docs/ that the nav of mkdocs.yml does not list is added under "More".

So a new page docs/<topic>.md appears in the site without an edit of mkdocs.yml; list it in the
nav where it belongs to give it its place.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any


def _listed(nav: Any) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(_listed(item) for item in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(_listed(value) for value in nav.values())) if nav else set()
    return set()


def _title(path: Path) -> str:
    match = re.search(r"^# (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)
    return match.group(1).strip() if match else path.stem.replace("-", " ").capitalize()


def on_config(config: Any) -> Any:
    nav = config.get("nav")
    if not nav:
        return config
    docs = Path(config["docs_dir"])
    listed = _listed(nav)
    extra = [
        {_title(path): path.relative_to(docs).as_posix()}
        for path in sorted(docs.rglob("*.md"))
        if path.relative_to(docs).as_posix() not in listed
        and not any(part.startswith(("_", ".")) for part in path.relative_to(docs).parts)
        and "assets" not in path.relative_to(docs).parts
    ]
    if extra:
        nav.append({"More": extra})
    return config
