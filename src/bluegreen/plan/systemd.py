"""Builders for slots run by systemd: a template unit per app (``bluegreen-<app>@.service``,
the colour as instance), the per-slot start script a unit runs, and the systemctl and
journalctl command lines."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from bluegreen.config import Colour, Config, HostConfig
from bluegreen.errors import ConfigError
from bluegreen.plan.files import Argv, Query, reading, sh, sudo
from bluegreen.plan.layout import Layout
from bluegreen.plan.slot import Slot
from bluegreen.plan.template import render_file

UNIT_DIR = PurePosixPath("/etc/systemd/system")
SHOW_PROPERTIES = ("ActiveState", "SubState", "MainPID", "NRestarts", "ExecMainStatus",
                   "UnitFileState")
# `check`: the host runs systemd as its init (what sd_booted() tests).
DETECT = Query(["test", "-d", "/run/systemd/system"])
# The SSH user as the host knows it (an address without `user@` takes ~/.ssh/config's).
WHO = Query(["id", "-un"])


def unit_prefix(cfg: Config) -> str:
    return f"bluegreen-{cfg.app}"


def unit(cfg: Config, colour: Colour) -> str:
    return f"{unit_prefix(cfg)}@{colour.value}.service"


def unit_path(cfg: Config) -> PurePosixPath:
    return UNIT_DIR / f"{unit_prefix(cfg)}@.service"


def render_unit(cfg: Config, layout: Layout, user: str) -> str:
    """The template unit: the built-in one, or ``run.unit_template``; its slots run as
    ``user`` (the SSH user, as `id -un` answers on the host)."""
    context = {"app": cfg.app, "unit_prefix": unit_prefix(cfg),
               "slots_dir": str(layout.root / "slots"), "deploy_to": str(layout.root),
               "stop_timeout": f"{cfg.run.stop_timeout:g}",
               "user": None if user == "root" else user}
    return render_file(cfg, "run.unit_template", cfg.run.unit_template,
                       "systemd-slot.service.j2", context)


def unit_user(text: str) -> str:
    """The user a unit runs its service as: its last ``User=`` (systemd takes the last
    assignment; an empty one resets it), else root."""
    user = ""
    for line in text.splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and key.strip() == "User":
            user = value.strip()
    return user or "root"


def check_unit_user(text: str, ssh_user: str, hc: HostConfig) -> None:
    """With `sudo = true` the unit runs, as root if it runs as root, the start script the
    SSH user writes before each `sudo systemctl restart`: so the unit must run the slots as
    that user, never as root or another one."""
    if not hc.sudo:
        return
    runs_as = unit_user(text)
    if runs_as == "root" or runs_as != ssh_user:
        raise ConfigError(
            f"hosts: {hc.label} has sudo = true and its SSH user is {ssh_user!r}, but the "
            f"unit would run the slots as {runs_as!r} (User={runs_as}): its ExecStart runs "
            f"slots/<colour>/start.sh, which {ssh_user!r} rewrites before each restart, so "
            f"that would let {ssh_user!r} run anything as {runs_as!r}. Deploy as a non-root "
            "user (\"deploy@host\") and keep the unit's User= that user "
            "(run.unit_template)")


def start_script(cfg: Config, slot: Slot) -> str:
    """What a colour's unit runs: the slot's release, from ``run.cwd``, with its env."""
    assert cfg.run.command is not None
    return ("#!/bin/sh\n"
            f"# Written by bluegreen: {slot.release_id} on {slot.colour}.\n"
            f"cd {shlex.quote(slot.cwd(cfg))} || exit 1\n"
            f". {shlex.quote(str(slot.layout.slot_env(slot.colour)))}\n"
            f"exec sh -c {shlex.quote(slot.render(cfg, cfg.run.command))}\n")


def start_script_path(layout: Layout, colour: Colour) -> PurePosixPath:
    return layout.slot(colour) / "start.sh"


def install_unit(cfg: Config) -> Argv:
    """Replace the unit file with stdin and make systemd read it. Never under sudo: a
    user who may write a system unit may run anything as root, so with `sudo = true` the
    unit is installed once by an admin (`bluegreen setup --print-unit`)."""
    return sh('tmp="$(dirname "$1")/.$(basename "$1").bluegreen-tmp"; '
              'cat > "$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" "$1" && '
              "systemctl daemon-reload", unit_path(cfg))


def systemctl(use_sudo: bool, *args: str) -> Argv:
    return sudo(["systemctl", *args], use_sudo)


def enable(cfg: Config, colour: Colour, use_sudo: bool) -> Argv:
    """The colour's unit starts at boot."""
    return systemctl(use_sudo, "enable", "-q", unit(cfg, colour))


def reset_failed(cfg: Config, colour: Colour, use_sudo: bool) -> Argv:
    """Forget that the unit failed (and its start limit), so it can be started again."""
    return systemctl(use_sudo, "reset-failed", unit(cfg, colour))


def restart(cfg: Config, colour: Colour, use_sudo: bool) -> Argv:
    return systemctl(use_sudo, "restart", unit(cfg, colour))


def stop(cfg: Config, colour: Colour, use_sudo: bool) -> Argv:
    """Stop the colour's unit (systemd signals its whole cgroup, then kills it after
    TimeoutStopSec); it stays enabled, so a deploy's restart follows."""
    return systemctl(use_sudo, "stop", unit(cfg, colour))


def disable(cfg: Config, colour: Colour, use_sudo: bool) -> Argv:
    """Stop the colour's unit and keep it stopped across reboots."""
    return systemctl(use_sudo, "disable", "-q", "--now", unit(cfg, colour))


@reading
def show(cfg: Config, colour: Colour) -> Argv:
    return ["systemctl", "show", "-p", ",".join(SHOW_PROPERTIES), unit(cfg, colour)]


def parse_show(output: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@reading
def journal(cfg: Config, colour: Colour, lines: int, follow: bool) -> Argv:
    """The colour's unit's journal: its last ``lines`` lines (and new ones with ``follow``).
    A non-root user reads it as a member of the `systemd-journal` group."""
    argv = ["journalctl", "-u", unit(cfg, colour), "-n", str(lines), "--no-pager",
            "-o", "short-iso", "-q"]
    return [*argv, "-f"] if follow else argv
