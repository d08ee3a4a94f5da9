"""Builders for the nginx site files and the atomic switch of the live link."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, NginxSettings, parse_listen, render
from bluegreen.plan.files import Argv, Steps, reading, remove_config, replace_config, sh
from bluegreen.plan.template import no_release, render_proxy_config
from bluegreen.plan.workers import MASTERS, WATCH, watched
from bluegreen.traffic import Sample, Traffic


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


def canary_file(cfg: Config, stable: Colour) -> PurePosixPath:
    """The site file of a canary whose old colour is ``stable`` (`render_site` with a
    ``Traffic``): the link points at it while the split is in effect."""
    return available(cfg, stable).with_name(f"{available(cfg, stable).name}-canary")


def upstream_name(cfg: Config, colour: Colour) -> str:
    return f"bluegreen_{cfg.app.replace('-', '_')}_{colour.value}"


def render_site(cfg: Config, colour: Colour, addresses: list[str] | None = None,
                maintenance_page: PurePosixPath | None = None,
                traffic: Traffic | None = None, log: PurePosixPath | None = None,
                unreleased: bool = False) -> str:
    """The site file for ``colour``: the built-in template or ``proxy.template``. Its
    upstream lists ``addresses`` (default: 127.0.0.1) at the colour's port; while the file
    ``maintenance_page`` (the proxy host's, `Layout.maintenance_page`) exists, every
    request but /deployment_id gets it with a 503. ``unreleased`` (the colour's slot has
    never run a release): while nothing answers there, 503 with `no_release`, not 502. With ``traffic`` (``colour`` is its
    stable colour): the canary's file, both colours' upstreams, requests split by
    ``traffic`` and each logged as a JSON line to ``log``."""
    port = cfg.slots.port(colour)
    ident = cfg.app.replace("-", "_")
    canary = None
    if traffic is not None:
        assert log is not None and traffic.stable is colour
        canary = {
            "stable": traffic.stable.value, "new": traffic.new.value,
            "percent": traffic.percent, "sticky": traffic.sticky, "text": traffic.text(),
            "log": str(log), "log_format": f"bluegreen_{ident}_json",
            "var": f"bluegreen_{ident}_colour", "cookie": f"bluegreen_{ident}",
            "upstreams": [(upstream_name(cfg, c), [f"{a}:{cfg.slots.port(c)}" for a in
                                                   (addresses or ["127.0.0.1"])])
                          for c in Colour],
        }
    context = {
        "servers": [f"{a}:{port}" for a in (addresses or ["127.0.0.1"])],
        "app": cfg.app,
        "app_ident": ident,
        "colour": colour.value,
        "color": colour.value,
        "port": cfg.slots.port(colour),
        "upstream": upstream_name(cfg, colour),
        "canary": canary,
        "answer": traffic.text() if traffic else colour.value,
        "served": f"$bluegreen_{ident}_colour" if traffic else colour.value,
        "pass_to": f"bluegreen_{ident}_$bluegreen_{ident}_colour" if traffic
        else upstream_name(cfg, colour),
        "server_name": render(cfg.proxy.server_name, app=cfg.app),
        "listen": cfg.proxy.listen,
        "site": site_name(cfg),
        "tls": tls_context(cfg),
        "maintenance_page": str(maintenance_page) if maintenance_page and
        supports_maintenance(maintenance_page) else None,
        "no_release": no_release(colour.value) if unreleased and traffic is None else None,
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


MAINTENANCE_MARK = "# maintenance"


@reading
def read_link(cfg: Config, maintenance_page: PurePosixPath) -> Argv:
    """Print the live link's target (nothing when there is no link), then MAINTENANCE_MARK
    on a line of its own if the maintenance page exists: one round trip for both."""
    return sh('if [ -L "$1" ]; then readlink "$1"; fi; if [ -f "$2" ]; then echo "$3"; fi; '
              'true', link(cfg), maintenance_page, MAINTENANCE_MARK)


def colour_of_target(cfg: Config, target: str) -> Colour | None:
    """Which colour a link target names, or None if it names neither site file (a
    canary's file names its stable colour: `canary_of_target`)."""
    name = PurePosixPath(target.strip()).name
    for colour in Colour:
        if name in (f"{site_name(cfg)}-{colour.value}", canary_file(cfg, colour).name):
            return colour
    return None


def canary_of_target(cfg: Config, target: str) -> bool:
    """Whether a link target is a canary's site file."""
    name = PurePosixPath(target.strip()).name
    return any(name == canary_file(cfg, c).name for c in Colour)


def parse_traffic(text: str, stable: Colour) -> Traffic | None:
    """The split a canary's site file says in its head (`# bluegreen traffic: ...`)."""
    first = next((line for line in text.splitlines()
                  if line.startswith("# bluegreen traffic: ")), None)
    if first is None:
        return None
    words = first.removeprefix("# bluegreen traffic: ")
    return Traffic.parse(words.replace(" sticky", ""), stable, sticky=words.endswith(" sticky"))


def switch(cfg: Config, colour: Colour | PurePosixPath, use_sudo: bool) -> Steps:
    """Point the live link at ``colour``'s site file (or a canary's file) atomically: a new
    link under a dot name, which the usual ``sites-enabled/*`` include does not match,
    renamed over the live one."""
    dest = link(cfg)
    tmp = dest.parent / f".{dest.name}.bluegreen-tmp"
    site = available(cfg, colour) if isinstance(colour, Colour) else colour
    if use_sudo:
        return [["sudo", "-n", "ln", "-sfn", str(site), str(tmp)],
                ["sudo", "-n", "mv", "-Tf", str(tmp), str(dest)]]
    return [sh('ln -sfn "$1" "$2" && mv -Tf "$2" "$3"', site, tmp, dest)]


# Exit statuses of `trial` and `switch_and_reload` (the failing step's output is theirs).
LINK_FAILED, TEST_FAILED, RELOAD_FAILED, LINK_BACK_FAILED = 90, 92, 93, 91


def _chain(steps: Steps) -> str:
    return " && ".join(shlex.join(step) for step in steps)


SITE_FAILED = 94
WROTE_SITE = "# bluegreen wrote the site file"


def trial(cfg: Config, target: Colour, live: Colour, use_sudo: bool, test: Argv,
          update_site: bool = False) -> Argv:
    """One round trip: ``test`` with the link on ``target`` (a private copy of the link's
    folder as root; else the link itself, pointed back at ``live`` after: nginx reads the
    link only on reload, so traffic never sees the trial).
    Exit 0, or TEST_FAILED with the test's output, or LINK_(BACK_)FAILED. Under sudo each
    step is still its own fixed argv (`plan.sudoers`). ``update_site`` (not under sudo):
    first replace the target's site file with stdin when it differs (printing WROTE_SITE;
    SITE_FAILED if that fails); with ``target`` live, only that."""
    script = ""
    if update_site:
        site = available(cfg, target)
        tmp, dest = shlex.quote(str(site.parent / f".{site.name}.bluegreen-tmp")), \
            shlex.quote(str(site))
        script = (f"cat > {tmp} && chmod 0644 {tmp} || exit {SITE_FAILED}\n"
                  f"if cmp -s {tmp} {dest}; then rm -f {tmp}; else mv -f {tmp} {dest} || "
                  f"exit {SITE_FAILED}; echo {shlex.quote(WROTE_SITE)}; fi\n")
        if target is live:
            return sh(script)
    swap = (f"{_chain(switch(cfg, target, use_sudo))} || exit {LINK_FAILED}\n"
            f"{shlex.join(test)}; rc=$?\n"
            f"{_chain(switch(cfg, live, use_sudo))} || exit {LINK_BACK_FAILED}\n"
            f'[ "$rc" = 0 ] || exit {TEST_FAILED}\n')
    if use_sudo:
        return sh(script + swap)
    # As root, where mount namespaces work: the test sees a private copy of the folder
    # with the link on the target (bind-mounted over it for the test alone), so the live
    # link never changes, not even for the test's ~50 ms (a power cut then would boot
    # nginx on the target). Elsewhere: swap the link and put it back.
    live_link = link(cfg)
    folder, name, to = (shlex.quote(str(x)) for x in
                        (live_link.parent, live_link.name, available(cfg, target)))
    private = (
        f"d=$(mktemp -d) || exit {LINK_FAILED}\n"
        f'cp -a {folder}/. "$d"/ && ln -sfn {to} "$d"/{name} || '
        f'{{ rm -rf "$d"; exit {LINK_FAILED}; }}\n'
        "unshare --mount --propagation private sh -c "
        + shlex.quote('mount --bind "$1" "$2" && shift 2 && exec "$@"')
        + f' sh "$d" {folder} {shlex.join(test)}; rc=$?\n'
        'rm -rf "$d"\n'
        f'[ "$rc" = 0 ] || exit {TEST_FAILED}\n')
    return sh(script + 'if [ "$(id -u)" = 0 ] && unshare --mount --propagation private true '
              f"2>/dev/null; then\n{private}else\n{swap}fi\n")


def switch_and_reload(cfg: Config, target: Colour | PurePosixPath,
                      previous: Colour | PurePosixPath | None, use_sudo: bool,
                      test: Argv, reload: Argv) -> Argv:
    """One round trip: point the link at ``target``, test, reload; if the test or the
    reload fails, the link goes back to ``previous`` (removed when None) and the exit
    status says which (TEST_FAILED, RELOAD_FAILED). After the reload it waits for the
    hand-over (`plan.workers.WATCH`): from then on only workers of the new configuration
    accept; NOT_APPLIED (the link put back) when nginx kept its previous configuration."""
    back = (_chain(switch(cfg, previous, use_sudo)) if previous is not None
            else shlex.join(remove_link(cfg, use_sudo))) + f" || exit {LINK_BACK_FAILED}; "
    _, port = parse_listen(cfg.proxy.listen)
    return sh(f"{_chain(switch(cfg, target, use_sudo))} || exit {LINK_FAILED}\n"
              f"if ! {shlex.join(test)}; then {back}exit {TEST_FAILED}; fi\n"
              f"{watched(reload, back, RELOAD_FAILED)}", str(port), WATCH, link(cfg).parent)


def reload_watched(cfg: Config, reload: Argv) -> Argv:
    """``reload``, then the wait for the hand-over, as in `switch_and_reload`: exit 0,
    RELOAD_FAILED, or NOT_APPLIED with the last `[emerg]` line on stderr."""
    _, port = parse_listen(cfg.proxy.listen)
    return sh(watched(reload, "", RELOAD_FAILED), str(port), WATCH, link(cfg).parent)






def write_path(path: PurePosixPath, use_sudo: bool) -> Steps:
    """Replace the site file ``path`` (a canary's) with stdin, atomically."""
    return replace_config(path, use_sudo)


def restart_log(log: PurePosixPath) -> Argv:
    """Empty the canary's log when the SSH user may (nginx appends to it), then print its
    size: where a meter starts reading."""
    return sh(': 2>/dev/null > "$1"; stat -c %s "$1" 2>/dev/null || echo 0', log)


@reading
def read_log(log: PurePosixPath, offset: int) -> Argv:
    """Print the log's size, then what follows byte ``offset``."""
    return sh('s=$(stat -c %s "$1" 2>/dev/null || echo 0); echo "$s"\n'
              'if [ "$s" -gt "$2" ]; then tail -c +"$(($2 + 1))" "$1"; fi', log, str(offset))


def parse_log(text: str) -> dict[Colour, Sample]:
    """Per colour, the requests of the JSON lines the canary's log_format writes: a
    failure is a 5xx (nginx's own 502/504 when it could not reach the slot included); the
    time is the upstream's response time (the request's when there is none)."""
    out = {c: Sample() for c in Colour}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            colour = Colour(entry["colour"])
            status = int(entry["status"])
        except (ValueError, KeyError, TypeError):
            continue
        sample = out[colour]
        sample.requests += 1
        sample.errors += status >= 500
        times = [t.strip() for t in str(entry.get("upstream_time", "")).split(",")]
        try:
            sample.times.append(sum(float(t) for t in times) if all(times)
                                else float(entry["request_time"]))
        except (ValueError, KeyError):
            pass
    return out


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
        f"{MASTERS}"
        'if [ -z "$masters" ]; then pgrep -f "^nginx: worker process is shutting down"; exit 0; fi\n'
        "for m in $masters; do\n"
        '  pgrep -P "$m" -f "^nginx: worker process is shutting down"\n'
        "done\n"
        "exit 0\n", str(port))


KEEPALIVE_MIN_TIMEOUT_SINCE = (1, 27, 4)

# A row of `bluegreen check`: (item, ok, detail); ok is None for advice (a note that
# never fails the check).
Finding = tuple[str, bool | None, str]


# The line of `inspect`'s output that says whether nginx's master runs.
MASTER = "bluegreen-nginx-master"


@reading
def inspect(cfg: Config) -> Argv:
    """Print nginx's version, then the lines of its full config (``test`` with ``-T``)
    that set the directives `advice` looks at, then whether the master named by its pid
    file runs (`MASTER` running|stopped PIDFILE) (as the SSH user: without root, only the
    version may show)."""
    test = render(cfg.proxy.test, app=cfg.app)
    binary = next((w for w in shlex.split(test) if w.rsplit("/", 1)[-1] == "nginx"), "nginx")
    return sh(
        '"$1" -v 2>&1; dump=$(sh -c "$2 -T" 2>/dev/null)\n'
        'printf "%s\\n" "$dump" | grep -E '
        '"^[[:space:]]*(worker_shutdown_timeout|keepalive_min_timeout)[[:space:]]"\n'
        # Without the dump (no root), whether nginx runs is not known: say nothing.
        '[ -n "$dump" ] || exit 0\n'
        'f=$(printf "%s\\n" "$dump" | sed -n "s/^[[:space:]]*pid[[:space:]][[:space:]]*'
        '\\([^;]*\\);.*/\\1/p" | head -n 1)\n'
        '[ -n "$f" ] || f=$("$1" -V 2>&1 | sed -n "s/.*--pid-path=\\([^ ]*\\).*/\\1/p")\n'
        'case "$f" in /*) ;; *) exit 0 ;; esac\n'
        'if [ -e "$f" ] && [ ! -r "$f" ]; then exit 0; fi\n'
        'pid=$(cat "$f" 2>/dev/null)\n'
        'if [ -n "$pid" ] && [ -d "/proc/$pid" ]; then echo "$3 running $f"; '
        'else echo "$3 stopped $f"; fi\n',
        binary, test, MASTER)


def advice(output: str) -> list[Finding]:
    """What the nginx version and config printed by `inspect` mean for zero downtime:
    rows for `bluegreen check`: ok (True) or a note (None); a failure only when nginx does
    not run (its reload, in `setup` and every switch, would fail)."""
    match = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", output)
    directives = {line.split()[0]: line.split()[1].rstrip(";") for line in output.splitlines()
                  if len(line.split()) >= 2 and not line.startswith("nginx")}
    rows: list[Finding] = []
    master = directives.pop(MASTER, None)
    if master == "stopped":
        pid_file = next(line.split(maxsplit=2)[2] for line in output.splitlines()
                        if line.startswith(MASTER))
        rows.append(("nginx running", False,
                     f"nginx is not running on this host (no process of its pid file "
                     f"{pid_file}): start it (e.g. `systemctl start nginx`); setup reloads it"))
    elif master == "running":
        rows.append(("nginx running", True, "its master process runs"))
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
