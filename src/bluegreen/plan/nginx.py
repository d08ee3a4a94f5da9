"""Builders for the nginx site files and the atomic switch of the live link."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import jinja2

from bluegreen.config import Colour, Config, render
from bluegreen.errors import ConfigError
from bluegreen.plan.files import Argv, sh, sudo

_BUILTIN = jinja2.Environment(
    loader=jinja2.PackageLoader("bluegreen", "templates"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,
)


def site_name(cfg: Config) -> str:
    return render(cfg.proxy.site, app=cfg.app)


def available(cfg: Config, colour: Colour) -> PurePosixPath:
    return PurePosixPath(render(cfg.proxy.sites_available, app=cfg.app)) / (
        f"{site_name(cfg)}-{colour.value}"
    )


def link(cfg: Config) -> PurePosixPath:
    return PurePosixPath(render(cfg.proxy.sites_enabled, app=cfg.app)) / site_name(cfg)


def render_site(cfg: Config, colour: Colour, addresses: list[str] | None = None) -> str:
    """The site file for ``colour``: the built-in template or ``proxy.template``. Its
    upstream lists ``addresses`` (default: 127.0.0.1) at the colour's port."""
    port = cfg.slots.port(colour)
    context = {
        "servers": [f"{a}:{port}" for a in (addresses or ["127.0.0.1"])],
        "app": cfg.app,
        "app_ident": cfg.app.replace("-", "_"),
        "colour": colour.value,
        "color": colour.value,
        "port": cfg.slots.port(colour),
        "upstream": f"bluegreen_{cfg.app.replace('-', '_')}_{colour.value}",
        "server_name": render(cfg.proxy.server_name, app=cfg.app),
        "listen": cfg.proxy.listen,
        "site": site_name(cfg),
    }
    if cfg.proxy.template:
        path: Path = cfg.local_path(cfg.proxy.template)
        try:
            source = path.read_text()
        except OSError as exc:
            raise ConfigError(f"proxy.template: cannot read {path}: {exc.strerror}") from None
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
        try:
            return env.from_string(source).render(context)
        except jinja2.TemplateError as exc:
            raise ConfigError(f"proxy.template: {path}: {exc}") from None
    return _BUILTIN.get_template("nginx-site.conf.j2").render(context)


def read_link(cfg: Config) -> Argv:
    """Print the live link's target; prints nothing when there is no link."""
    return sh('if [ -L "$1" ]; then readlink "$1"; fi', link(cfg))


def colour_of_target(cfg: Config, target: str) -> Colour | None:
    """Which colour a link target names, or None if it names neither site file."""
    name = PurePosixPath(target.strip()).name
    for colour in Colour:
        if name == f"{site_name(cfg)}-{colour.value}":
            return colour
    return None


def switch(cfg: Config, colour: Colour) -> Argv:
    """Point the live link at ``colour`` atomically: a new link under a dot name, which
    the usual ``sites-enabled/*`` include does not match, renamed over the live one."""
    dest = link(cfg)
    tmp = dest.parent / f".{dest.name}.bluegreen-tmp"
    return sudo(
        sh('ln -sfn "$1" "$2" && mv -Tf "$2" "$3"', available(cfg, colour), tmp, dest),
        cfg.proxy.sudo,
    )


def remove_link(cfg: Config) -> Argv:
    return sudo(["rm", "-f", "--", str(link(cfg))], cfg.proxy.sudo)


def old_workers() -> Argv:
    """The pids of nginx workers still serving a configuration from before a reload
    (nginx retitles them "worker process is shutting down")."""
    return ["pgrep", "-f", "^nginx: worker process is shutting down"]


def test(cfg: Config) -> Argv:
    return sudo(["sh", "-c", render(cfg.proxy.test, app=cfg.app)], cfg.proxy.sudo)


def reload(cfg: Config) -> Argv:
    return sudo(["sh", "-c", render(cfg.proxy.reload, app=cfg.app)], cfg.proxy.sudo)


def write_site(cfg: Config, colour: Colour) -> Argv:
    """Replace the ``colour`` site file with stdin, atomically."""
    path = available(cfg, colour)
    return sudo(
        sh('tmp="$(dirname "$1")/.$(basename "$1").bluegreen-tmp"; '
           'cat > "$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" "$1"', path),
        cfg.proxy.sudo,
    )


def deployment_id_request(cfg: Config) -> tuple[str, str]:
    """The path and Host header that ask the proxy which colour is live."""
    return "/deployment_id", render(cfg.proxy.server_name, app=cfg.app).split()[0]
