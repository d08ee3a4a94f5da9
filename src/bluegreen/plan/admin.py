"""The files a non-root deploy user may not write (their content runs as root: the systemd
unit, nginx site files, the HAProxy config), as a script an admin runs once as root
(`bluegreen setup --print-root-files`). The deploy user's sudo then only switches between
them (the link, the map file), tests and reloads (`plan.sudoers`)."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, HAProxySettings, HostConfig, render
from bluegreen.plan import haproxy, nginx, systemd
from bluegreen.plan.layout import Layout

EOF_MARK = "BLUEGREEN_EOF"


def proxy_files(cfg: Config, hc: HostConfig | None) -> list[tuple[PurePosixPath, str]]:
    """The proxy's own files: for ``hc``'s own proxy, or (None) a load balancer's."""
    hosts = cfg.hosts if hc is None else [hc]
    servers = [(h.label, cfg.bind_address(h)) for h in hosts]
    if isinstance(cfg.proxy, HAProxySettings):
        shared = [(haproxy.frontend_file(cfg), haproxy.render_frontend(cfg))
                  ] if haproxy.shared(cfg) else []
        return shared + [(haproxy.config_file(cfg), haproxy.render_config(cfg, servers))]
    page = Layout.of(cfg, hc or cfg.load_balancers[0]).maintenance_page
    return [(nginx.available(cfg, c), nginx.render_site(cfg, c, [a for _, a in servers], page))
            for c in Colour]


def script(cfg: Config, hc: HostConfig, unit: str | None) -> str:
    """A shell script that installs every root-owned file bluegreen needs (``unit``: the
    slots' systemd unit, when they run under systemd), then checks it."""
    app_files = [(systemd.unit_path(cfg), unit)] if unit is not None else []
    out = ["#!/bin/sh",
           f"# Written by `bluegreen setup --print-root-files` for {cfg.app}. Run it as root",
           "# once, and again when `bluegreen setup` says a file is out of date.",
           "set -e"]
    if cfg.load_balancers:
        out.append(f"# --- on each app host ({', '.join(h.label for h in cfg.hosts)}) ---")
        out += _installs(app_files)
        out.append("systemctl daemon-reload" if app_files else "true")
        balancers = ", ".join(h.label for h in cfg.load_balancers)
        out.append(f"# --- on each load balancer ({balancers}) ---")
        out += _installs(proxy_files(cfg, None))
    else:
        out += _installs(app_files + proxy_files(cfg, hc))
        if app_files:
            out.append("systemctl daemon-reload")
    out.append(render(cfg.proxy.test, app=cfg.app))
    return "\n".join(out) + "\n"


def _installs(files: list[tuple[PurePosixPath, str]]) -> list[str]:
    lines = []
    for path, text in files:
        assert EOF_MARK not in text
        quoted = shlex.quote(str(path))
        lines += [f"cat > {quoted} <<'{EOF_MARK}'", text.rstrip("\n"), EOF_MARK,
                  f"chmod 0644 {quoted}"]
    return lines
