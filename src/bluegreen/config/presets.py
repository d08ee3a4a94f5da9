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


def check_app(app: str) -> str:
    """``app``, or a ValueError that says what a name may be (the config's `app` rule: `init`
    writes it into the file) and suggests one."""
    from bluegreen.values import APP_RE

    if not re.fullmatch(APP_RE, app):
        raise ValueError(f"{app!r} is not an app name: a lower-case letter, then up to 39 "
                         f"letters, digits, '-' or '_' (e.g. {app_name_from(app)!r})")
    return app


def render(preset: str, app: str) -> str:
    """The preset's file for ``app``: @APP@ is the name, @PKG@ the name as a Python package
    (a dash is not allowed there), @MODULE@ as an Elixir module (CamelCase)."""
    check_app(app)
    text = resources.files("bluegreen.config").joinpath(f"presets/{preset}.toml").read_text()
    module = "".join(part.capitalize() for part in re.split(r"[-_]", app) if part)
    return (text.replace("@MODULE@", module).replace("@PKG@", app.replace("-", "_"))
            .replace("@APP@", app))
