"""Builders for the haproxy kind: one config file with a backend per colour, a map file
whose "live" key names the live colour, and the runtime API commands that switch it.

HAProxy evaluates the map for every request, so one ``set map`` on the runtime API moves
all new requests (also those on open keep-alive connections) at once, with no reload:
no process is replaced and no connection is closed. Connections already upgraded (e.g.
websockets) stay on the backend they were opened on. The map file on disk is what a
restarted HAProxy reads, so it is written first and is the persistent truth."""

from __future__ import annotations

import csv
import io
import re
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, HAProxySettings, render
from bluegreen.plan.nginx import tls_context
from bluegreen.plan.files import Argv, Steps, reading, remove_config, replace_config, sh
from bluegreen.plan.template import no_release, render_file, render_proxy_config
from bluegreen.traffic import Traffic

MAP_KEY = "live"
SHOW_STAT = "show stat"  # runtime API: per-server counters (CSV)
SHOW_INFO = "show info"  # runtime API: version, pid


def settings(cfg: Config) -> HAProxySettings:
    return cfg.proxy_of(HAProxySettings)


def config_file(cfg: Config) -> PurePosixPath:
    return PurePosixPath(render(settings(cfg).config_file, app=cfg.app))


def map_file(cfg: Config) -> PurePosixPath:
    return PurePosixPath(render(settings(cfg).map_file, app=cfg.app))


def socket(cfg: Config) -> str:
    return render(settings(cfg).socket, app=cfg.app)


def ident(cfg: Config) -> str:
    return cfg.app.replace("-", "_")


def backend(cfg: Config, colour: Colour) -> str:
    return f"bluegreen_{ident(cfg)}_{colour.value}"


def server_name(host_label: str) -> str:
    """A HAProxy server name for an app host (its label, with other characters as '_')."""
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", host_label)


def bind(listen: str) -> str:
    """HAProxy's ``bind`` for a ``proxy.listen`` value: "80" listens on every address."""
    return listen if ":" in listen else f":{listen}"


def render_config(cfg: Config, servers: list[tuple[str, str]],
                  unreleased: frozenset[Colour] = frozenset()) -> str:
    """The config file: ``servers`` are (host label, address) of the app hosts whose slots
    the backends list (one: the host itself; several: a load balancer). The backend of a
    colour in ``unreleased`` (its slots never ran a release) answers the 503 it makes
    while nothing answers there with `no_release`."""
    context = {
        "app": cfg.app,
        "app_ident": ident(cfg),
        "frontend": f"bluegreen_{ident(cfg)}",
        "backend_prefix": f"bluegreen_{ident(cfg)}_",
        "bind": bind(cfg.proxy.listen),
        "listen": cfg.proxy.listen,
        "map_file": str(map_file(cfg)),
        "server_name": render(cfg.proxy.server_name, app=cfg.app),
        "tls": tls_context(cfg, bind),
        "shared": shared(cfg),
        "maintenance_map": str(maintenance_map(cfg)),
        "backends": {
            c.value: [(server_name(label), f"{address}:{cfg.slots.port(c)}")
                      for label, address in servers]
            for c in Colour
        },
        "canaries": [(c.value, sticky) for c in Colour for sticky in (True, False)],
        "cookie": f"bluegreen_{ident(cfg)}",
        "no_release": {c.value: no_release(c.value) for c in unreleased},
    }
    return render_proxy_config(cfg, "haproxy.cfg.j2", context)


def maintenance_map(cfg: Config) -> PurePosixPath:
    """The map file holding this app's maintenance ``state`` (on/off) and ``message``."""
    path = map_file(cfg)
    return path.with_name(f"{path.stem}.maintenance{path.suffix or '.map'}")


def maintenance_text(on: bool, message: str) -> str:
    return (f"# bluegreen: `bluegreen maintenance on|off` changes it\nstate {'on' if on else 'off'}"
            f"\nmessage {message}\n")


def set_maintenance(cfg: Config, on: bool, message: str) -> str:
    """Runtime API commands for the running HAProxy (a space in a value is escaped)."""
    path = maintenance_map(cfg)
    value = " ".join(message.replace("\\", "").split())
    for char in " ;":  # the runtime API splits words on spaces and commands on ';'
        value = value.replace(char, "\\" + char)
    return f"set map {path} state {'on' if on else 'off'}; set map {path} message {value}"


def shared(cfg: Config) -> bool:
    return settings(cfg).shared_frontend


def frontend_file(cfg: Config) -> PurePosixPath:
    return PurePosixPath(render(settings(cfg).frontend_file, app=cfg.app))


def map_keys(cfg: Config) -> list[str]:
    """The map file keys this app owns: "live" in its own map file; with a shared
    frontend, its server names (the frontend looks the request's host up there)."""
    if shared(cfg):
        return render(cfg.proxy.server_name, app=cfg.app).lower().split()
    return [MAP_KEY]


def map_value(cfg: Config, colour: Colour) -> str:
    """What the app's keys map to: the colour, or (shared) the colour's backend suffix."""
    return f"{ident(cfg)}_{colour.value}" if shared(cfg) else colour.value


def colour_of_value(cfg: Config, value: str | None) -> str | None:
    """The colour a map value names (for a shared map: this app's), else the value."""
    if value is not None and shared(cfg) and value.startswith(f"{ident(cfg)}_"):
        return value[len(ident(cfg)) + 1:]
    return value


def render_frontend(cfg: Config) -> str:
    """With ``shared_frontend``: the frontend every app on this HAProxy writes alike (it
    depends only on the listeners and the map file, never on one app)."""
    tls = tls_context(cfg, bind)
    if tls is not None:  # every app's PEM in one directory; HAProxy picks one by SNI
        tls["certificate"] = str(PurePosixPath(str(tls["certificate"])).parent) + "/"
    return render_file(cfg, "proxy.template", None, "haproxy-frontend.cfg.j2", {
        "bind": bind(cfg.proxy.listen), "tls": tls, "map_file": str(map_file(cfg))})


def map_text(cfg: Config, colour: Colour, current: str = "") -> str:
    """The map file with this app's keys on ``colour``: other apps' lines (a shared map)
    are kept as they are."""
    keys = map_keys(cfg)
    kept = [line for line in current.splitlines()
            if line.strip() and not line.startswith("#") and line.split()[0] not in keys]
    head = ("# bluegreen: each app's server names -> its live backend; `bluegreen promote` "
            "changes them" if shared(cfg) else "# bluegreen: the live colour; `bluegreen "
            "promote` changes it")
    return "\n".join([head, *kept, *(f"{k} {map_value(cfg, colour)}" for k in keys)]) + "\n"


def without_app(cfg: Config, current: str) -> str:
    """A shared map file without this app's lines."""
    keys = map_keys(cfg)
    return "".join(line + "\n" for line in current.splitlines()
                   if not line.split() or line.split()[0] not in keys)


def parse_map(cfg: Config, text: str) -> str | None:
    """The live colour this app's keys name in a map file (None when it has none); when
    its keys disagree, what they say, so that the caller reports it."""
    values = {parts[0]: parts[1] for parts in map(str.split, text.splitlines())
              if len(parts) == 2 and parts[0] in map_keys(cfg)}
    if not values:
        return None
    found = {colour_of_value(cfg, v) for v in values.values()}
    return found.pop() if len(found) == 1 else ", ".join(sorted(str(v) for v in found))


# Read-modify-write of a map file other apps write too (``shared_frontend``), on the host
# under an flock on a file beside the map, reading the file right before writing it: a
# copy read earlier (phase 1, then minutes of pre_promote or canary steps) would put back
# another app's previous colour, which a restarted HAProxy then serves. stdin: the app's
# lines (and the head comment, for a new file); argv: the map, the app, its keys.
UPDATE_SHARED_MAP = """import fcntl, os, sys, time
path, app, keys = sys.argv[1], sys.argv[2], set(sys.argv[3:])
where, name = os.path.split(path)
lock = os.path.join(where, '.%s.lock' % name)
fd, deadline = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644), time.monotonic() + 30
while True:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        if time.monotonic() > deadline:
            sys.exit('%s: held by another run for over 30 s' % lock)
        time.sleep(0.02)
try:
    with open(path) as f:
        old = f.read().splitlines()
except FileNotFoundError:
    old = []
kept = [line for line in old if not line.split() or line.split()[0] not in keys]
lines = kept + [line for line in sys.stdin.read().splitlines() if not (kept and line[:1] == '#')]
tmp = os.path.join(where, '.%s.%s.bluegreen-tmp' % (name, app))
with open(tmp, 'w') as f:
    f.write(''.join(line + '\\n' for line in lines))
os.chmod(tmp, 0o644)
os.rename(tmp, path)
"""


def write_map(cfg: Config, colour: Colour | None, current: str, use_sudo: bool
              ) -> tuple[Steps, str]:
    """The steps that put this app's keys on ``colour`` in the map file (None: remove
    them), and their stdin. A shared map is re-read and replaced on the host under a lock
    (`UPDATE_SHARED_MAP`); under sudo (a fixed argv per step) it becomes ``current``, this
    app's lines changed."""
    if shared(cfg) and not use_sudo:
        argv = ["python3", "-c", UPDATE_SHARED_MAP, str(map_file(cfg)), cfg.app, *map_keys(cfg)]
        return [argv], map_text(cfg, colour) if colour is not None else ""
    text = map_text(cfg, colour, current) if colour is not None else without_app(cfg, current)
    return write(cfg, map_file(cfg), use_sudo), text


def write(cfg: Config, path: PurePosixPath, use_sudo: bool) -> Steps:
    """Replace the config or map file ``path`` with stdin, atomically."""
    return replace_config(path, use_sudo)


def remove(cfg: Config, path: PurePosixPath, use_sudo: bool) -> Argv:
    return remove_config(path, use_sudo)


@reading
def old_processes(current: int) -> Argv:
    """Print the pids of HAProxy processes of the same config (same ``-f`` arguments) as
    ``current`` that are neither it nor its master: old ones, left by a reload, still
    finishing their connections (and routing them with the map they had)."""
    return sh(
        'args() { tr "\\000" " " < "/proc/$1/cmdline" 2>/dev/null | grep -o -- "-f [^ ]*" | '
        'tr "\\n" " "; }\n'
        'conf=$(args "$1"); master=$(ps -o ppid= -p "$1" | tr -d " ")\n'
        'for p in $(pgrep -x haproxy); do\n'
        '  [ "$p" = "$1" ] || [ "$p" = "$master" ] && continue\n'
        '  case "$(ps -o stat= -p "$p")" in Z*|"") continue;; esac\n'
        '  [ "$(args "$p")" = "$conf" ] && echo "$p"\n'
        'done; true', str(current))


def parse_pid(info: str) -> int | None:
    """The ``Pid:`` of ``show info``."""
    for line in info.splitlines():
        if line.startswith("Pid:") and line.split(":", 1)[1].strip().isdigit():
            return int(line.split(":", 1)[1])
    return None


def parse_version(info: str) -> str:
    """The ``Version:`` of ``show info``."""
    return next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("Version:")), "?")


# ---- runtime API ------------------------------------------------------------------

def set_live(cfg: Config, colour: Colour) -> str:
    """One runtime API line setting every key of this app (commands joined by ';' run in
    order on one connection)."""
    return "; ".join(f"set map {map_file(cfg)} {k} {map_value(cfg, colour)}"
                     for k in map_keys(cfg))


def add_live(cfg: Config, colour: Colour, keys: list[str]) -> str:
    return "; ".join(f"add map {map_file(cfg)} {k} {map_value(cfg, colour)}" for k in keys)


def show_live(cfg: Config) -> str:
    return f"show map {map_file(cfg)}"


def parse_show_map(cfg: Config, text: str) -> str | None:
    """This app's live colour in ``show map`` output (lines of "<ref> <key> <value>")."""
    return parse_map(cfg, "\n".join(" ".join(line.split()[1:]) for line in text.splitlines()))


def missing_keys(cfg: Config, show_map: str) -> list[str]:
    """This app's keys that the running map lacks (removed by hand, or a name added)."""
    present = {line.split()[1] for line in show_map.splitlines() if len(line.split()) == 3}
    return [k for k in map_keys(cfg) if k not in present]


def runtime_error(answer: str) -> str | None:
    """The error in a runtime API answer (commands that succeed answer nothing)."""
    text = answer.strip()
    return text or None


def parse_stat(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """``show stat`` CSV as {(proxy, server): row}."""
    lines = text.lstrip("# ").splitlines()
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        if row.get("pxname") and row.get("svname"):
            rows[(row["pxname"], row["svname"])] = row
    return rows


def sessions(stat: dict[tuple[str, str], dict[str, str]], cfg: Config, colour: Colour,
             host_label: str) -> int | None:
    """Current sessions on ``host_label``'s server of the colour's backend, and on its
    servers in the canary backends (None when HAProxy has no such server)."""
    rows = [stat.get((backend(cfg, colour), server_name(host_label)))]
    rows += [stat.get((f"bluegreen_{ident(cfg)}_{kind}-{new.value}",
                       f"{colour.value}-{server_name(host_label)}"))
             for kind in ("canary", "split") for new in Colour]
    if rows[0] is None:
        return None
    values = [(row.get("scur") or "0") for row in rows if row is not None]
    return sum(int(v) for v in values if v.isdigit())


# ---- canary -----------------------------------------------------------------------

CANARY_PREFIXES = ("canary-", "split-")


def canary_value(traffic: Traffic) -> str:
    """The map value (and /deployment_id answer) while ``traffic`` is in effect: the
    canary backend towards the new colour, with a cookie (sticky) or without."""
    return f"{'canary' if traffic.sticky else 'split'}-{traffic.new.value}"


def canary_backend(cfg: Config, traffic: Traffic) -> str:
    return f"bluegreen_{ident(cfg)}_{canary_value(traffic)}"


def canary_of_value(value: str | None) -> tuple[Colour, bool] | None:
    """(new colour, sticky) of a canary map value; None for a colour or nothing."""
    if value is None or not value.startswith(CANARY_PREFIXES):
        return None
    kind, _, new = value.partition("-")
    return (Colour(new), kind == "canary") if new in ("blue", "green") else None


def set_weights(cfg: Config, traffic: Traffic, labels: list[str]) -> str:
    """Runtime API commands giving each of ``labels``' servers in the canary backend its
    colour's weight (the shares in percent: HAProxy's weights go to 256)."""
    backend_name = canary_backend(cfg, traffic)
    return "; ".join(f"set weight {backend_name}/{colour}-{server_name(label)} {share}"
                     for colour, share in traffic.shares.items() for label in labels)


def set_value(cfg: Config, value: str) -> str:
    """`set_live` with a raw value (a canary's)."""
    stored = f"{ident(cfg)}_{value}" if shared(cfg) else value
    return "; ".join(f"set map {map_file(cfg)} {k} {stored}" for k in map_keys(cfg))


def canary_weights(stat: dict[tuple[str, str], dict[str, str]], cfg: Config,
                   traffic: Traffic) -> dict[str, int]:
    """The summed current weight per colour of the canary backend's servers."""
    out = {c.value: 0 for c in Colour}
    for (proxy, server), row in stat.items():
        colour = server.split("-", 1)[0]
        if proxy == canary_backend(cfg, traffic) and colour in out:
            out[colour] += int(row.get("weight") or 0)
    return out


# Per-server counters a canary is judged on: responses and what failed.
COUNTERS = ("stot", "hrsp_5xx", "econ", "eresp")


def colour_counters(stat: dict[tuple[str, str], dict[str, str]], cfg: Config
                    ) -> dict[tuple[str, str], tuple[Colour, dict[str, int], float]]:
    """For each server of this app's backends (colour and canary ones): its colour, its
    counters and its average response time (``rtime``, ms, over its last 1024)."""
    prefix = f"bluegreen_{ident(cfg)}_"
    out: dict[tuple[str, str], tuple[Colour, dict[str, int], float]] = {}
    for (proxy, server), row in stat.items():
        if not proxy.startswith(prefix) or server in ("FRONTEND", "BACKEND"):
            continue
        rest = proxy[len(prefix):]
        name = rest if rest in ("blue", "green") else server.split("-", 1)[0]
        if name not in ("blue", "green"):
            continue
        counts = {k: int(row.get(k) or 0) for k in COUNTERS}
        out[(proxy, server)] = (Colour(name), counts, float(row.get("rtime") or 0) / 1000)
    return out
