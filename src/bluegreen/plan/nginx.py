"""Builders for the nginx site files and the atomic switch of the live link."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, NginxSettings, parse_listen, render
from bluegreen.plan.files import Argv, Steps, reading, remove_config, replace_config, sh
from bluegreen.plan.template import render_proxy_config


def settings(cfg: Config) -> NginxSettings:
    return cfg.proxy_of(NginxSettings)


def site_name(cfg: Config) -> str:
    return render(settings(cfg).site, app=cfg.app)


def available(cfg: Config, colour: Colour) -> PurePosixPath:
    return PurePosixPath(render(settings(cfg).sites_available, app=cfg.app)) / (
        f"{site_name(cfg)}-{colour.value}"
    )


def link(cfg: Config) -> PurePosixPath:
    return PurePosixPath(render(settings(cfg).sites_enabled, app=cfg.app)) / site_name(cfg)


def render_site(cfg: Config, colour: Colour, addresses: list[str] | None = None,
                maintenance_page: PurePosixPath | None = None) -> str:
    """The site file for ``colour``: the built-in template or ``proxy.template``. Its
    upstream lists ``addresses`` (default: 127.0.0.1) at the colour's port; while the file
    ``maintenance_page`` (the proxy host's, `Layout.maintenance_page`) exists, every
    request but /deployment_id gets it with a 503."""
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
        "tls": tls_context(cfg),
        "maintenance_page": str(maintenance_page) if maintenance_page and
        supports_maintenance(maintenance_page) else None,
    }
    return render_proxy_config(cfg, "nginx-site.conf.j2", context)


def supports_maintenance(page: PurePosixPath) -> bool:
    """Whether the page's path can be written into a site file as it is (nginx would
    read `;`, quotes, `$` or spaces as syntax): else the site has no maintenance mode."""
    return re.fullmatch(r"[A-Za-z0-9_./@+-]+", str(page)) is not None


def tls_context(cfg: Config, bind: Callable[[str], str] | None = None
                ) -> dict[str, object] | None:
    """``[proxy.tls]`` for the templates, paths rendered; None without TLS. ``bind``:
    HAProxy's form of a listen value (``tls.bind``)."""
    tls = cfg.proxy.tls
    if tls is None:
        return None
    certificate = render(tls.certificate, app=cfg.app)
    _, port = parse_listen(tls.listen)
    return {
        "listen": tls.listen,
        "bind": bind(tls.listen) if bind else tls.listen,
        "certificate": certificate,
        "certificate_key": render(tls.certificate_key, app=cfg.app) if tls.certificate_key
        else certificate,
        "redirect_http": tls.redirect_http,
        "acme_root": render(tls.acme_root, app=cfg.app) if tls.acme_root else None,
        "hsts": tls.hsts,
        "port": port,
        # what a redirect to https adds after the host: nothing on the default port
        "port_suffix": "" if port == 443 else f":{port}",
    }


@reading
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


def switch(cfg: Config, colour: Colour, use_sudo: bool) -> Steps:
    """Point the live link at ``colour`` atomically: a new link under a dot name, which
    the usual ``sites-enabled/*`` include does not match, renamed over the live one."""
    dest = link(cfg)
    tmp = dest.parent / f".{dest.name}.bluegreen-tmp"
    if use_sudo:
        return [["sudo", "-n", "ln", "-sfn", str(available(cfg, colour)), str(tmp)],
                ["sudo", "-n", "mv", "-Tf", str(tmp), str(dest)]]
    return [sh('ln -sfn "$1" "$2" && mv -Tf "$2" "$3"', available(cfg, colour), tmp, dest)]


# Exit statuses of `trial` and `switch_and_reload` (the failing step's output is theirs).
LINK_FAILED, TEST_FAILED, RELOAD_FAILED, LINK_BACK_FAILED = 90, 92, 93, 91


def _chain(steps: Steps) -> str:
    return " && ".join(shlex.join(step) for step in steps)


def trial(cfg: Config, target: Colour, live: Colour, use_sudo: bool, test: Argv) -> Argv:
    """One round trip: point the link at ``target``, run ``test``, point the link back at
    ``live`` (nginx reads the link only on reload, so traffic never sees the trial).
    Exit 0, or TEST_FAILED with the test's output, or LINK_(BACK_)FAILED. Under sudo each
    step is still its own fixed argv (`plan.sudoers`)."""
    return sh(f"{_chain(switch(cfg, target, use_sudo))} || exit {LINK_FAILED}\n"
              f"{shlex.join(test)}; rc=$?\n"
              f"{_chain(switch(cfg, live, use_sudo))} || exit {LINK_BACK_FAILED}\n"
              f'[ "$rc" = 0 ] || exit {TEST_FAILED}\n')


def switch_and_reload(cfg: Config, target: Colour, previous: Colour | None, use_sudo: bool,
                      test: Argv, reload: Argv) -> Argv:
    """One round trip: point the link at ``target``, test, reload; if the test or the
    reload fails, the link goes back to ``previous`` (removed when None) and the exit
    status says which (TEST_FAILED, RELOAD_FAILED)."""
    back = (_chain(switch(cfg, previous, use_sudo)) if previous is not None
            else shlex.join(remove_link(cfg, use_sudo)))
    return sh(f"{_chain(switch(cfg, target, use_sudo))} || exit {LINK_FAILED}\n"
              f"if ! {shlex.join(test)}; then {back} || exit {LINK_BACK_FAILED}; "
              f"exit {TEST_FAILED}; fi\n"
              f"if ! {shlex.join(reload)}; then {back} || exit {LINK_BACK_FAILED}; "
              f"exit {RELOAD_FAILED}; fi\n")


def remove_link(cfg: Config, use_sudo: bool) -> Argv:
    return remove_config(link(cfg), use_sudo)


@reading
def old_workers(cfg: Config) -> Argv:
    """The pids of this nginx's workers still serving a configuration from before a reload
    (nginx retitles them "worker process is shutting down"). This nginx: the master of the
    processes listening on ``proxy.listen``'s port, so another nginx on the machine that
    reloads does not stretch a drain. When the SSH user cannot see those processes (not
    root), every nginx's are counted."""
    _, port = parse_listen(cfg.proxy.listen)
    return sh(
        'masters=""\n'
        'for p in $(ss -Htlnp "sport = :$1" | grep -o "pid=[0-9]*" | cut -d= -f2 | sort -u); do\n'
        '  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = nginx ] || continue\n'
        '  pp=$(ps -o ppid= -p "$p" | tr -d " ")\n'
        '  if [ "$(cat "/proc/$pp/comm" 2>/dev/null)" = nginx ]; then masters="$masters $pp"; '
        'else masters="$masters $p"; fi\n'
        "done\n"
        'if [ -z "$masters" ]; then pgrep -f "^nginx: worker process is shutting down"; exit 0; fi\n'
        'for m in $(echo $masters | tr " " "\\n" | sort -u); do\n'
        '  pgrep -P "$m" -f "^nginx: worker process is shutting down"\n'
        "done\n"
        "exit 0\n", str(port))


KEEPALIVE_MIN_TIMEOUT_SINCE = (1, 27, 4)

# A row of `bluegreen check`: (item, ok, detail); ok is None for advice (a note that
# never fails the check).
Finding = tuple[str, bool | None, str]


@reading
def inspect(cfg: Config) -> Argv:
    """Print nginx's version, then the lines of its full config (``test`` with ``-T``)
    that set the directives `advice` looks at (as the SSH user: without root, only the
    version may show)."""
    test = render(cfg.proxy.test, app=cfg.app)
    binary = next((w for w in shlex.split(test) if w.rsplit("/", 1)[-1] == "nginx"), "nginx")
    return sh('"$1" -v 2>&1; sh -c "$2 -T" 2>/dev/null | grep -E '
              '"^[[:space:]]*(worker_shutdown_timeout|keepalive_min_timeout)[[:space:]]"',
              binary, test)


def advice(output: str) -> list[Finding]:
    """What the nginx version and config printed by `inspect` mean for zero downtime:
    rows for `bluegreen check`: ok (True) or a note (None), never a failure."""
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", output)
    directives = {line.split()[0]: line.split()[1].rstrip(";") for line in output.splitlines()
                  if len(line.split()) >= 2 and not line.startswith("nginx")}
    rows: list[Finding] = []
    if match:
        version = tuple(int(x) for x in match.groups())
        text = ".".join(match.groups())
        if version < KEEPALIVE_MIN_TIMEOUT_SINCE:
            detail = (f"{text}: each reload closes idle keep-alive connections, and a request a "
                      "client sends at that instant is reset (~1 per switch under load; browsers "
                      "retry, many API clients do not). nginx >= 1.27.4 has "
                      "keepalive_min_timeout for it; proxy.kind = \"haproxy\" switches without "
                      "a reload (`bluegreen docs zero-downtime`)")
        elif "keepalive_min_timeout" in directives:
            detail = f"{text}, keepalive_min_timeout {directives['keepalive_min_timeout']}"
        else:
            detail = (f"{text}: set keepalive_min_timeout (e.g. 1s) in http {{}} so a reload "
                      "does not close a keep-alive connection a request is racing on")
        rows.append(("nginx version", True if "keepalive_min_timeout" in directives else None,
                     detail))
    if "worker_shutdown_timeout" in directives:
        rows.append(("nginx worker_shutdown_timeout", True,
                     f"{directives['worker_shutdown_timeout']}: websockets still on the previous "
                     "colour are closed that long after a switch"))
    else:
        rows.append(("nginx worker_shutdown_timeout", None,
                     "not set: after a switch, websockets stay on the previous colour until they "
                     "close (a deploy needing that slot waits run.drain_timeout, then cuts them); "
                     "set it (e.g. 10m) in the main context to bound that"))
    return rows


def write_site(cfg: Config, colour: Colour, use_sudo: bool) -> Steps:
    """Replace the ``colour`` site file with stdin, atomically."""
    return replace_config(available(cfg, colour), use_sudo)


def deployment_id_request(cfg: Config) -> tuple[str, str]:
    """The path and Host header that ask the proxy which colour is live."""
    return "/deployment_id", render(cfg.proxy.server_name, app=cfg.app).split()[0]
