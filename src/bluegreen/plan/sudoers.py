"""The sudoers drop-in for a non-root deploy user (`hosts[].sudo = true`), made from the
same builders that run the commands: every step bluegreen runs through `sudo -n` is a
fixed argv, listed here exactly, with full paths and no wildcards."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, HAProxySettings, HostConfig, render
from bluegreen.errors import ConfigError
from bluegreen.plan import haproxy, nginx, systemd
from bluegreen.plan.files import Argv, reading, sh, shell_command

# sudo's default secure_path on Debian: where `sudo -n CMD` finds CMD.
SECURE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def privileged(cfg: Config, with_systemd: bool) -> list[Argv]:
    """Every command (without `sudo -n`) bluegreen may run as root for this app."""
    return [argv for _, argv in sourced(cfg, with_systemd)]


def sourced(cfg: Config, with_systemd: bool) -> list[tuple[tuple[str, ...], Argv]]:
    """`privileged`, each command with the config keys its words come from."""
    steps: list[tuple[tuple[str, ...], Argv]] = []
    # Files whose content runs as root (site files, the HAProxy config, the unit) are not
    # here: an admin installs them (`plan.admin`). The map file is data, not config.
    if isinstance(cfg.proxy, HAProxySettings):
        path = haproxy.map_file(cfg)
        keys: tuple[str, ...] = ("proxy.map_file",)
        steps += [(keys, s) for s in [*haproxy.write(cfg, path, True),
                                      haproxy.remove(cfg, path, True)]]
        if not haproxy.shared(cfg):  # `maintenance on|off` writes it (data, like the map)
            steps += [(keys, s) for s in haproxy.write(cfg, haproxy.maintenance_map(cfg), True)]
    else:
        keys = ("proxy.sites_available", "proxy.sites_enabled", "proxy.site")
        for colour in Colour:
            steps += [(keys, s) for s in nginx.switch(cfg, colour, True)]
        steps.append((keys, nginx.remove_link(cfg, True)))
    for key in ("test", "reload"):
        command = render(getattr(cfg.proxy, key), app=cfg.app)
        steps.append(((f"proxy.{key}",), shell_command(command, True)))
    if with_systemd:
        for colour in Colour:
            steps += [(("app",), s) for s in (
                systemd.enable(cfg, colour, True), systemd.reset_failed(cfg, colour, True),
                systemd.restart(cfg, colour, True), systemd.stop(cfg, colour, True),
                systemd.disable(cfg, colour, True))]
    unique = {tuple(s[2:]): (k, s[2:]) for k, s in steps if s[:2] == ["sudo", "-n"]}
    return list(unique.values())


def directories(cfg: Config, with_systemd: bool) -> dict[str, tuple[str, ...]]:
    """Every directory that holds a path a sudo line names (what root writes, or links,
    there), and each directory above it, with the config keys the paths come from: a user
    who may change any of them could plant a symlink where root then writes."""
    found: dict[str, tuple[str, ...]] = {}
    for keys, argv in sourced(cfg, with_systemd):
        for word in argv[1:]:
            if word.startswith("/") and not re.search(r"\s", word):
                for parent in PurePosixPath(word).parents:
                    found[str(parent)] = tuple(dict.fromkeys([*found.get(str(parent), ()),
                                                              *keys]))
    return found


@reading
def owners(paths: list[str]) -> Argv:
    """`UID MODE PATH` (octal mode, symlinks followed) for each of ``paths`` that is a
    directory on the host; nothing for one that is not there."""
    return sh('for d; do [ -d "$d" ] && stat -L -c "%u %a %n" "$d"; done; exit 0', *paths)


def unsafe_directories(found: dict[str, tuple[str, ...]], owners_output: str
                       ) -> list[tuple[str, tuple[str, ...], str]]:
    """The directories of ``found`` (``directories``) that are not root's own and closed to
    group and others (``owners`` output): each with its keys and what is wrong with it."""
    bad = []
    for line in owners_output.splitlines():
        uid, mode, path = (line.split(" ", 2) + ["", ""])[:3]
        if path not in found or not uid.isdigit():
            continue
        why = [f"owned by uid {uid}"] if uid != "0" else []
        if int(mode, 8) & 0o022:
            why.append(f"mode {int(mode, 8) & 0o7777:04o}: group or others may write")
        if why:
            bad.append((path, found[path], ", ".join(why)))
    return bad


def refusal(bad: list[tuple[str, tuple[str, ...], str]]) -> str:
    """What to tell about ``unsafe_directories``: the keys, the directories, the fix."""
    keys = list(dict.fromkeys(k for _, ks, _ in bad for k in ks))
    where = "; ".join(f"{path} ({why})" for path, _, why in bad)
    return (f"{' / '.join(keys)}: sudo writes in a directory another user than root may "
            f"change: {where}. Root would follow a symlink planted there (e.g. over "
            "`.NAME.bluegreen-tmp`) and write where it points; keep what sudo writes in "
            "directories root owns and only root may write, up to / (e.g. /etc/haproxy, "
            "/etc/nginx), never under deploy_to")


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


# What sudoers reads in a command's words as more than the word itself: fnmatch wildcards,
# which match spaces too, so one allowed word can stand for many arguments (`*`, `?`,
# `[...]`, `[!...]`, `[^...]`); `^...$`, a regular expression (sudo 1.9.10+); `#`, a
# comment, which would cut the arguments off; `""`, no arguments; a backslash, an escape;
# and whitespace, which splits a word in two (sudo matches the arguments joined by spaces).
UNSAFE = re.compile(r'[*?\[\]!^#"\\\s]')
# A user name sudoers reads as something else: a keyword (ALL) or an alias (User_Alias
# names are upper case), so the line would grant other users, or every user.
_ALIAS = re.compile(r"^[A-Z][A-Z0-9_]*$")


def check_user(user: str, where: str) -> None:
    """Refuse a user name the drop-in cannot give rights to alone (root, ALL, an alias)."""
    if user == "root" or _ALIAS.match(user):
        what = "root needs no drop-in" if user == "root" else (
            "sudoers reads an upper-case name as a keyword or alias (ALL: every user)")
        raise ConfigError(f"{where}: the SSH user {user!r} cannot be given a sudoers drop-in "
                          f"({what}); deploy as a lower-case non-root user, e.g. "
                          "\"deploy@host\"")


def check_words(keys: tuple[str, ...], argv: Argv, cfg: Config) -> None:
    """Refuse a command sudoers would not match word for word: a word with a wildcard, a
    space or another character sudoers gives a meaning to (`UNSAFE`), or an empty word;
    in the command itself also `,` (it would start a second command), `:` and `=`."""
    for i, word in enumerate(argv):
        if word and not UNSAFE.search(word) and not (i == 0 and re.search("[,:=]", word)):
            continue
        culprits = [k for k in keys if UNSAFE.search(_value(cfg, k))] or list(keys)
        raise ConfigError(
            f"{' / '.join(culprits)}: the sudoers line for `{' '.join(argv)}` would have the "
            f"word {word!r}, which sudo would not read as just that word (wildcards and "
            "spaces let a line admit other command lines, `#` cuts it, `,` in a command "
            "starts another one) or cannot express (an empty word); use plain words (no "
            "`*?[]!^#\"\\` nor spaces; no `,:=` in a command) when a host has sudo = true")


def _value(cfg: Config, key: str) -> str:
    section, _, name = key.rpartition(".")
    return str(getattr(cfg.proxy if section == "proxy" else cfg, name, ""))


def drop_in(cfg: Config, user: str, commands: list[Argv], paths: dict[str, str]) -> str:
    """The sudoers file: `user` may run exactly ``commands`` as root, without a password.
    Raises ConfigError for a user or a word the file cannot name exactly."""
    check_user(user, "hosts")
    by_argv = {tuple(argv): keys for keys, argv in sourced(cfg, True)}
    for argv in commands:
        keys = by_argv.get(tuple(argv), ("proxy",))
        check_words(keys, argv, cfg)
        if argv[0] in paths:
            check_words(keys, [paths[argv[0]]], cfg)
    missing = sorted({c[0] for c in commands if c[0] not in paths})
    lines = [f"# /etc/sudoers.d/bluegreen-{cfg.app}: what {user} may run as root for "
             f"bluegreen ({cfg.app}), and nothing else.",
             f"# Written by `bluegreen setup --print-sudoers`. Install: visudo -cf FILE && "
             f"install -m 0440 FILE /etc/sudoers.d/bluegreen-{cfg.app}"]
    if missing:
        lines.append(f"# not found on the host (not allowed): {' '.join(missing)}")
    for argv in commands:
        if argv[0] in paths:
            # Without arguments a sudoers command admits any; `""` admits none.
            words = [paths[argv[0]], *(_escape(a) for a in argv[1:])] if argv[1:] else [
                paths[argv[0]], '""']
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
