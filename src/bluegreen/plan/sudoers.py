"""The sudoers drop-in for a non-root deploy user (`hosts[].sudo = true`), made from the
same builders that run the commands: every step bluegreen runs through `sudo -n` is a
fixed argv, listed here exactly, with full paths and no wildcards."""

from __future__ import annotations

from bluegreen.config import Colour, Config, HAProxySettings, HostConfig, render
from bluegreen.plan import haproxy, nginx, systemd
from bluegreen.plan.files import Argv, reading, sh, shell_command

# sudo's default secure_path on Debian: where `sudo -n CMD` finds CMD.
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def privileged(cfg: Config, with_systemd: bool) -> list[Argv]:
    """Every command (without `sudo -n`) bluegreen may run as root for this app."""
    steps: list[Argv] = []
    # Files whose content runs as root (site files, the HAProxy config, the unit) are not
    # here: an admin installs them (`plan.admin`). The map file is data, not config.
    if isinstance(cfg.proxy, HAProxySettings):
        path = haproxy.map_file(cfg)
        steps += [*haproxy.write(cfg, path, True), haproxy.remove(cfg, path, True)]
        if not haproxy.shared(cfg):  # `maintenance on|off` writes it (data, like the map)
            steps += haproxy.write(cfg, haproxy.maintenance_map(cfg), True)
    else:
        for colour in Colour:
            steps += nginx.switch(cfg, colour, True)
        steps.append(nginx.remove_link(cfg, True))
    for command in (cfg.proxy.test, cfg.proxy.reload):
        steps.append(shell_command(render(command, app=cfg.app), True))
    if with_systemd:
        for colour in Colour:
            steps += [systemd.enable(cfg, colour, True), systemd.reset_failed(cfg, colour, True),
                      systemd.restart(cfg, colour, True), systemd.stop(cfg, colour, True),
                      systemd.disable(cfg, colour, True)]
    unique = {tuple(s[2:]): s[2:] for s in steps if s[:2] == ["sudo", "-n"]}
    return list(unique.values())


@reading
def resolve(names: list[str]) -> Argv:
    """Where sudo finds each command on the host: `NAME PATH` or `NAME -` per line."""
    return sh('PATH="$1"; shift; for c; do p=$(command -v "$c") && echo "$c $p" '
              '|| echo "$c -"; done', SECURE_PATH, *names)


def parse_resolve(output: str) -> dict[str, str]:
    return {parts[0]: parts[1] for line in output.splitlines()
            if len(parts := line.split()) == 2 and parts[1] != "-"}


def user_of(hc: HostConfig) -> str | None:
    return hc.address.rpartition("@")[0] or None


def drop_in(cfg: Config, user: str, commands: list[Argv], paths: dict[str, str]) -> str:
    """The sudoers file: `user` may run exactly ``commands`` as root, without a password."""
    missing = sorted({c[0] for c in commands if c[0] not in paths})
    lines = [f"# /etc/sudoers.d/bluegreen-{cfg.app}: what {user} may run as root for "
             f"bluegreen ({cfg.app}), and nothing else.",
             f"# Written by `bluegreen setup --print-sudoers`. Install: visudo -cf FILE && "
             f"install -m 0440 FILE /etc/sudoers.d/bluegreen-{cfg.app}"]
    if missing:
        lines.append(f"# not found on the host (not allowed): {' '.join(missing)}")
    for argv in commands:
        if argv[0] in paths:
            words = [paths[argv[0]], *(_escape(a) for a in argv[1:])]
            lines.append(f"{user} ALL=(root) NOPASSWD: {' '.join(words)}")
    return "\n".join(lines) + "\n"


def _escape(arg: str) -> str:
    """A sudoers command argument: its special characters escaped."""
    for ch in ("\\", ",", ":", "="):
        arg = arg.replace(ch, "\\" + ch)
    return arg


@reading
def may_run(argv: Argv) -> Argv:
    """Exit 0 when the user may run ``argv`` (without `sudo -n`) through sudo, without a
    password."""
    return ["sudo", "-n", "-l", *argv]
