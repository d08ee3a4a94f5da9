"""The guides (docs/*.md), for `bluegreen docs GUIDE`: read from the checkout when bluegreen
runs from one, else from where the wheel installed them (``<prefix>/share/bluegreen/docs``,
`[tool.setuptools.data-files]` in pyproject.toml), so a pip user has them too."""

from __future__ import annotations

import sys
from pathlib import Path

INSTALLED = Path("share") / "bluegreen" / "docs"


def directories(prefixes: list[Path] | None = None) -> list[Path]:
    """Where the guides may be, in order: the checkout's docs/, then each prefix's."""
    checkout = Path(__file__).resolve().parents[3] / "docs"  # src/bluegreen/cli/guides.py
    roots = prefixes if prefixes is not None else [Path(sys.prefix), Path(sys.base_prefix)]
    return [checkout, *(p / INSTALLED for p in roots)]


def names(prefixes: list[Path] | None = None) -> list[str]:
    """The guides found, by name (`python` for python.md)."""
    for directory in directories(prefixes):
        found = sorted(p.stem for p in directory.glob("*.md"))
        if found:
            return found
    return []


def read(name: str, prefixes: list[Path] | None = None) -> str | None:
    """A guide's text, or None when it is not there."""
    for directory in directories(prefixes):
        path = directory / f"{name}.md"
        if path.is_file():
            return path.read_text()
    return None
