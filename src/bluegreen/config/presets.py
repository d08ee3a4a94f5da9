"""The commented configs `bluegreen init --preset NAME` writes (files in presets/)."""

from __future__ import annotations

import re
from importlib import resources

NAMES = ["generic", "python", "django", "fastapi", "elixir"]


def app_name_from(text: str) -> str:
    """A valid app name derived from a directory name."""
    name = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    if not name or not name[0].isalpha():
        name = "app" + ("-" + name if name else "")
    return name[:40]


def render(preset: str, app: str) -> str:
    text = resources.files("bluegreen.config").joinpath(f"presets/{preset}.toml").read_text()
    module = "".join(part.capitalize() for part in re.split(r"[-_]", app) if part)
    # PKG: the app's name as a Python package (a dash is not allowed there)
    return text.replace("MODULE", module).replace("PKG", app.replace("-", "_")).replace(
        "APP", app)
