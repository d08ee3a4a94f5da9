"""The interface every proxy kind implements, on a thin host context (``Node``).

For every kind, what is on disk (nginx's link, HAProxy's map file) is the persistent truth
of the live colour, and what the running proxy answers on /deployment_id is what traffic
sees."""

from __future__ import annotations

import abc
import asyncio
from pathlib import PurePosixPath
from typing import ClassVar, NoReturn

from bluegreen import health
from bluegreen.config import Colour, parse_listen, render
from bluegreen.errors import ProxyError
from bluegreen.fleet import Node
from bluegreen.plan import files
from bluegreen.plan.nginx import Finding, deployment_id_request

VERIFY_TIMEOUT = 10.0
VERIFY_STREAK = 3  # old nginx workers answer the previous colour for ~100 ms after a reload


class Proxy(abc.ABC):
    """The proxy one host runs. ``servers`` are the (name, address) of the app hosts whose
    slots it sends traffic to: the host itself, or (a load balancer) every app host."""

    kind: ClassVar[str]
    files: ClassVar[str]  # what `test` checks, for messages

    def __init__(self, node: Node, servers: list[tuple[str, str]]) -> None:
        self.node = node
        self.cfg = node.cfg
        self.servers = servers

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def sudo(self) -> bool:
        """Whether the proxy's files and commands need root through `sudo -n`."""
        return self.cfg.proxy.sudo or self.node.hc.sudo

    @property
    def upstreams(self) -> list[str]:
        return [address for _, address in self.servers]

    @property
    @abc.abstractmethod
    def source(self) -> str:
        """Where the live colour is kept (for messages)."""

    @property
    @abc.abstractmethod
    def directories(self) -> list[PurePosixPath]:
        """The directories the proxy's files are written to."""

    @abc.abstractmethod
    async def live_colour(self) -> Colour | None:
        """The colour the persisted state names; None before setup."""

    @abc.abstractmethod
    async def setup(self, live: Colour | None) -> None:
        """Write the config (``live``, or blue when None), test it, make it effective."""

    @abc.abstractmethod
    async def prepare(self, target: Colour, live: Colour) -> None:
        """Phase 1 of a switch: bring the config up to date and prove that the switch to
        ``target`` can be made, without changing what traffic sees."""

    @abc.abstractmethod
    async def switch(self, target: Colour, previous: Colour | None) -> None:
        """Send traffic to ``target``; on failure everything is left on ``previous``."""

    @abc.abstractmethod
    async def restore(self, previous: Colour | None) -> None:
        """Put the persisted state back on ``previous`` (nothing running is changed)."""

    @abc.abstractmethod
    async def apply(self) -> None:
        """Make the running proxy serve what the persisted state says."""

    @abc.abstractmethod
    async def checks(self) -> list[Finding]:
        """What `bluegreen check` reports about the proxy; changes nothing."""

    async def old_workers(self) -> int:
        """Processes of a previous configuration that may still send the slots requests."""
        return 0

    async def sessions(self, colour: Colour, host_label: str) -> int | None:
        """Requests and tunnels the proxy has open to ``host_label``'s slot of ``colour``;
        None when the proxy cannot tell (then the slot's port is watched instead)."""
        return None

    # ---- shared by the kinds --------------------------------------------------------

    async def answer(self) -> str | None:
        """What the proxy answers on /deployment_id, asked from its host."""
        address, port = parse_listen(self.cfg.proxy.listen)
        path, host_header = deployment_id_request(self.cfg)
        try:
            resp = await health.get(self.node.host, address, port, path,
                                    host_header=host_header, timeout=3)
        except (OSError, asyncio.TimeoutError):
            return None
        return resp.body.strip() if resp.ok else f"HTTP {resp.status}"

    async def verify(self, target: Colour, timeout: float = VERIFY_TIMEOUT) -> None:
        """Poll /deployment_id until it answers ``target`` VERIFY_STREAK times in a row."""
        streak = 0
        last: str | None = None

        async def answered() -> bool | None:
            nonlocal streak, last
            last = await self.answer()
            streak = streak + 1 if last == target.value else 0
            return True if streak >= VERIFY_STREAK else None

        if not await health.poll(answered, timeout=timeout, interval=0.05):
            raise ProxyError(f"the proxy did not answer {target} within {timeout:g}s "
                             f"(last answer: {last!r})", host=self.name)

    def command(self, value: str) -> list[str]:
        """``proxy.test`` or ``proxy.reload`` as argv (with sudo when configured)."""
        return files.shell_command(render(value, app=self.cfg.app), self.sudo)

    async def test(self) -> None:
        result = await self.node.run(self.command(self.cfg.proxy.test), check=False, timeout=60)
        if not result.ok:
            output = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise ProxyError(f"`{self.cfg.proxy.test}` rejected the {self.files}:\n{output}",
                             host=self.name, detail=output)

    async def reload(self) -> None:
        result = await self.node.run(self.command(self.cfg.proxy.reload), check=False,
                                     timeout=60)
        if not result.ok:
            output = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise ProxyError(f"`{self.cfg.proxy.reload}` failed (is {self.kind} running?):"
                             f"\n{output}", host=self.name, detail=output)

    def refuse_root_file(self, path: PurePosixPath, current: str) -> NoReturn:
        """With sudo, a file whose content runs as root is the admin's to install."""
        raise ProxyError(f"{path} is {'out of date' if current else 'not installed'}; with "
                         "sudo = true an admin installs it (its content runs as root): "
                         "`bluegreen setup --print-root-files` prints the script for that",
                         host=self.name)

    async def read(self, path: PurePosixPath) -> str:
        return (await self.node.run(files.read_file(path))).stdout

    async def file_row(self, what: str, path: PurePosixPath) -> Finding:
        exists = (await self.node.run(files.exists(path), check=False)).ok
        return (f"{what} {path}", True, "present" if exists else "setup will write it")

    async def test_row(self) -> Finding:
        test = await self.node.run(self.command(self.cfg.proxy.test), check=False)
        return (f"proxy test `{self.cfg.proxy.test}`", test.ok, "passes" if test.ok else
                (test.stderr.strip() or test.stdout.strip())[-300:])
