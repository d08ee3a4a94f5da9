"""Execution: one small interface (``base``), LocalHost and SSHHost behind it, and
``connect`` which picks one for a ``[[hosts]]`` entry."""

from __future__ import annotations

from bluegreen.config import HostConfig
from bluegreen.hosts.base import Host, Result
from bluegreen.hosts.counting import CountingHost
from bluegreen.hosts.relay import Relay

__all__ = ["CountingHost", "Host", "Result", "connect"]


async def connect(cfg: HostConfig, *, via: Relay | None = None) -> CountingHost:
    """An open Host for one ``[[hosts]]`` entry: this machine, or a server over SSH; its
    round trips counted. ``via``: a relay that may lend a kept SSH connection (else a new
    login)."""
    if cfg.is_local:
        from bluegreen.hosts.local import LocalHost

        return CountingHost(LocalHost(cfg.label))
    # Imported only when a host is remote: asyncssh takes ~0.1 s to import.
    from bluegreen.hosts.ssh import SSHHost

    return CountingHost(await SSHHost.open(cfg, via=via))
