"""Render a file from a built-in Jinja2 template or the user's own (``proxy.template``,
``run.unit_template``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

from bluegreen.config import Config
from bluegreen.errors import ConfigError

_BUILTIN = jinja2.Environment(
    loader=jinja2.PackageLoader("bluegreen", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


def no_release(colour: str) -> str:
    """What the proxy answers on / (503) while the live colour's slot has never run a
    release (after `setup`, before the first deploy), instead of a bare 502 or 503."""
    return f"no release deployed yet: `bluegreen deploy` starts one on {colour}"


def compile_builtin() -> None:
    """Compile the package's templates now (~30 ms each the first time): for the warm
    process, so that no command it forks does it again."""
    for name in _BUILTIN.list_templates():
        _BUILTIN.get_template(name)


def render_proxy_config(cfg: Config, builtin: str, context: dict[str, Any]) -> str:
    """``proxy.template`` if set (a missing variable is an error, exit 2), else the
    package's template ``builtin``."""
    return render_file(cfg, "proxy.template", cfg.proxy.template, builtin, context)


def render_file(cfg: Config, key: str, user_template: str | None, builtin: str,
                context: dict[str, Any]) -> str:
    """The user's template at ``user_template`` (config key ``key``) if set, else the
    package's ``builtin``."""
    if user_template:
        path: Path = cfg.local_path(user_template)
        try:
            source = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            return env.from_string(source).render(context)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{key}: {path}: {exc}") from None
    return _BUILTIN.get_template(builtin).render(context)
