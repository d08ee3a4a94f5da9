"""What every command works with: its ``Context`` (config, reporter, hosts, who runs it,
the lock wait, a relay for kept SSH connections), the app's secrets, and the steps each
changing command opens with: connect (``connected``) and lock (``locked``)."""

from __future__ import annotations

import getpass
import os
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from bluegreen.commands.preflight import load_env_file
from bluegreen.config import Colour, Config, HostConfig
from bluegreen.config.models import Secret
from bluegreen.errors import BlueGreenError, ConfigError
from bluegreen.hosts import relay
from bluegreen.hosts.fleet import open_fleet
from bluegreen.hosts.relay import Relay
from bluegreen.output import Reporter
from bluegreen.plan.files import Query
from bluegreen.rollout import records
from bluegreen.rollout.topology import AppHost, Topology, build


@dataclass
class Context:
    """Everything a command needs; passed down, never global."""

    cfg: Config
    out: Reporter
    hosts: list[HostConfig]
    command: str = field(default_factory=lambda: " ".join(["bluegreen", *sys.argv[1:]]))
    user: str = field(default_factory=lambda: _user())
    # A relay that lends kept SSH connections: the one this command's environment names
    # (the warm process's pool, for the commands it runs), else none.
    via: Relay | None = field(default_factory=relay.from_environment)
    lock_wait: float = 0.0  # seconds to wait for a held lock (`--lock-wait`); 0: exit 4


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def make_context(cfg: Config, out: Reporter, host_names: tuple[str, ...] = ()) -> Context:
    return Context(cfg, out, cfg.select_hosts(host_names))


def load_secrets(cfg: Config) -> dict[str, str]:
    """The env_file's variables (parsed locally, never by a shell), then `[run.secrets]`
    (from this process's environment, or a local command's output). Never written here."""
    values = load_env_file(cfg)
    for name, secret in cfg.run.secrets.items():
        values[name] = _resolve_secret(cfg, name, secret)
    return values


def _resolve_secret(cfg: Config, name: str, secret: Secret) -> str:
    if secret.env is not None:
        if secret.env not in os.environ:
            raise ConfigError(f"run.secrets.{name}: ${secret.env} is not set in bluegreen's "
                              "environment")
        return os.environ[secret.env]
    assert secret.command is not None
    import subprocess

    proc = subprocess.run(secret.command, shell=True, cwd=cfg.base_dir, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:  # its stderr only: stdout may hold the secret
        raise ConfigError(f"run.secrets.{name}: `{secret.command}` failed (exit "
                          f"{proc.returncode}): {proc.stderr.strip()[-500:]}")
    return proc.stdout.removesuffix("\n")


@asynccontextmanager
async def connected(ctx: Context) -> AsyncIterator[Topology]:
    """One connection per selected host and per load balancer for the whole command."""
    async with open_fleet(ctx.cfg, ctx.hosts, ctx.out, via=ctx.via) as fleet:
        yield build(fleet)


@asynccontextmanager
async def locked(ctx: Context, topo: Topology,
                 also: Callable[[AppHost], list[Query]] | None = None) -> AsyncIterator[None]:
    """Every app host's lock held for the body (exit 4 if one is held, after
    ``ctx.lock_wait``); what each host reads first (and ``also``) is read in the same
    round trip as its lock."""
    def announce() -> None:
        for a in topo.apps:
            a.node.ahead(*a.first_reads(), *(also(a) if also else []))

    announce()
    async with records.locked([a.node for a in topo.apps], ctx.user, ctx.command,
                              wait=ctx.lock_wait, again=announce):
        for a in topo.apps:
            await a.remember_first_reads()
        yield


def refuse_partial_switch(ctx: Context, what: str) -> None:
    """With load balancers, a switch moves the traffic of every app host: one limited by
    --host would send traffic to slots nobody checked (invariant 6). Refused, exit 2."""
    skipped = [h.label for h in ctx.cfg.hosts if h not in ctx.hosts]
    if ctx.cfg.load_balancers and skipped:
        raise ConfigError(
            f"--host with [[load_balancers]]: {what} switches the load balancers, which send "
            f"traffic to the slots of every app host, and {', '.join(skipped)} would not be "
            "checked; run it without --host (`deploy --host NAME --no-promote` stages a "
            "release on some hosts; `promote` then checks every one)")


async def record_failed(ctx: Context, topo: Topology, err: BlueGreenError,
                  about: dict[str, tuple[Colour, tuple[str, str] | None]]) -> None:
    await records.record_failure([a.node for a in topo.apps], ctx.user, err, about)
