"""The interface every proxy kind implements, on a thin host context (``Node``).

For every kind, what is on disk (nginx's link, HAProxy's map file) is the persistent truth
of the live colour, and what the running proxy answers on /deployment_id is what traffic
sees."""

from __future__ import annotations

import abc
import asyncio
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import ClassVar, NoReturn

from bluegreen.hosts import health
from bluegreen.config import Colour, parse_listen, render
from bluegreen.errors import ProxyError
from bluegreen.hosts.fleet import Node
from bluegreen.hosts.base import Op, exchange_op
from bluegreen.plan import check as checkplan, files
from bluegreen.plan.files import Query
from bluegreen.plan.nginx import Finding, deployment_id_request
from bluegreen.traffic import Sample, Traffic

CERT_WARN_DAYS = 14
VERIFY_TIMEOUT = 10.0
VERIFY_STREAK = 3
# Polled on the host. After a change that waited for the hand-over (an nginx relink waits
# until no worker of the old configuration accepts, `plan.workers.WATCH`; HAProxy's runtime
# API changes the running map at once), three answers 5 ms apart. After any other reload
# the three answers span 0.1 s: old nginx workers keep accepting for 100 ms after it.
VERIFY_INTERVAL = 0.05
VERIFY_INTERVAL_HANDED_OVER = 0.005
ASK_TIMEOUT = 3.0  # one GET of /deployment_id


class Meter(abc.ABC):
    """Counts what one proxy saw of each colour's requests from the moment it is made."""

    @abc.abstractmethod
    async def read(self) -> dict[Colour, Sample]:
        """Totals per colour since the meter was made."""


class Proxy(abc.ABC):
    """The proxy one host runs. ``servers`` are the (name, address) of the app hosts whose
    slots it sends traffic to: the host itself, or (a load balancer) every app host."""

    kind: ClassVar[str]
    files: ClassVar[str]  # what `test` checks, for messages
    # The running proxy tests the maintenance page's file per request (nginx): its workers
    # must reach it, and `maintenance on` says why when they do not.
    tests_page_file: ClassVar[bool] = False

    def __init__(self, node: Node, servers: list[tuple[str, str]]) -> None:
        self.node = node
        self.cfg = node.cfg
        self.servers = servers
        # Whether the last change to the running proxy waited until only the new
        # configuration answers (the verify then need not wait for stragglers).
        self.handed_over = False
        # The colours whose slots never ran a release (`setup` sets it): their files say
        # so with a 503 while nothing answers there; every later write renders them plain.
        self.unreleased: frozenset[Colour] = frozenset()
        # The live colour's file was rewritten and the running proxy has not read it (the
        # first deploy: the page `setup` wrote); `apply` makes it read it.
        self.stale = False

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
    async def switch(self, target: Colour, previous: Colour | None, *,
                     defer: bool = False) -> None:
        """Send traffic to ``target``; on failure everything is left on ``previous``.
        ``defer``: a kind may send it with the node's next round trip (the verify that
        follows); a failure then raises there, with ``ProxyError.step`` set."""

    @abc.abstractmethod
    async def restore(self, previous: Colour | None) -> None:
        """Put the persisted state back on ``previous`` (nothing running is changed)."""

    @abc.abstractmethod
    async def apply(self) -> None:
        """Make the running proxy serve what the persisted state says."""

    @abc.abstractmethod
    async def set_maintenance(self, on: bool, message: str, page: str) -> None:
        """Answer every request for this app but /deployment_id with 503 and ``page``
        (nginx; HAProxy renders ``message``), or (off) serve it again; no slot is touched."""

    @abc.abstractmethod
    async def in_maintenance(self) -> bool:
        """Whether `maintenance on` is in effect."""

    @abc.abstractmethod
    async def remove(self) -> list[PurePosixPath]:
        """Take this app out of the proxy (`bluegreen remove`): traffic for it stops, the
        proxy is reloaded. Returns the root-owned files left for an admin (with sudo)."""

    @abc.abstractmethod
    async def checks(self) -> list[Finding]:
        """What `bluegreen check` reports about the proxy; changes nothing."""

    @property
    def persisted_split(self) -> bool:
        """Whether the persisted state (read by `live_colour`) names a canary's split."""
        return False

    @abc.abstractmethod
    async def split(self) -> Traffic | None:
        """The canary split in effect (None: every request goes to the live colour)."""

    @abc.abstractmethod
    async def set_traffic(self, traffic: Traffic) -> None:
        """Split requests as ``traffic`` says and prove that the proxy does; the persisted
        live colour stays ``traffic.stable``."""

    @abc.abstractmethod
    async def end_split(self, colour: Colour) -> None:
        """Every request to ``colour`` again, in one step (nginx: one reload; HAProxy: one
        runtime-API command), proven; ``colour`` is the persisted live colour."""

    @abc.abstractmethod
    async def meter(self) -> Meter:
        """Start counting each colour's requests, failures and response times."""

    async def observe(self, colour: Colour) -> None:
        """Make the requests ``colour`` serves countable by a meter (nginx logs only
        during a split: it sets one of 0 %); `end_split` undoes it."""

    def first_reads(self) -> list[Query | Op]:
        """What a command reads of the proxy's host first (its live colour, and what it
        answers: a switch killed half way shows as a difference): read with the lock, in
        the same round trip."""
        return [self._ask_op()]

    def _ask_op(self) -> Op:
        """``ask`` as the operation it sends."""
        address, port, path, host_header, tls_name = self._ask_request()
        return exchange_op((address, port), health.request(address, port, path, host_header),
                           tls_name, ASK_TIMEOUT)

    def _ask_request(self) -> tuple[str, int, str, str, str | None]:
        tls = self.cfg.proxy.tls
        address, port = parse_listen(tls.listen if tls else self.cfg.proxy.listen)
        path, host_header = deployment_id_request(self.cfg)
        return address, port, path, host_header, host_header if tls else None

    def prepare_reads(self) -> list[Query | Op]:
        """What ``prepare`` reads: read ahead, in one round trip."""
        return []

    def drain_reads(self) -> list[Query | Op]:
        """What a drain reads first (``old_workers``, ``sessions``): read ahead with the
        stop's probe."""
        return []

    async def old_workers(self) -> int:
        """Processes of a previous configuration that may still send the slots requests."""
        return 0

    async def sessions(self, colour: Colour, host_label: str) -> int | None:
        """Requests and tunnels the proxy has open to ``host_label``'s slot of ``colour``;
        None when the proxy cannot tell (then the slot's port is watched instead)."""
        return None

    # ---- shared by the kinds --------------------------------------------------------

    async def ask(self) -> health.Response:
        """GET /deployment_id from the proxy, on its host: on the TLS listener with SNI =
        the first server name when ``[proxy.tls]`` is set, else on ``proxy.listen``."""
        address, port, path, host_header, tls_name = self._ask_request()
        return await health.get(self.node, address, port, path, host_header=host_header,
                                timeout=ASK_TIMEOUT, tls_name=tls_name)

    async def answer(self) -> str | None:
        """What the proxy answers on /deployment_id, asked from its host."""
        try:
            resp = await self.ask()
        except (OSError, asyncio.TimeoutError):
            return None
        return resp.body.strip() if resp.ok else f"HTTP {resp.status}"

    async def verify(self, target: Colour | str, timeout: float = VERIFY_TIMEOUT) -> None:
        """Poll /deployment_id until it answers ``target`` (a colour, or what a split
        answers) VERIFY_STREAK times in a row."""
        if self.node.dry:
            self.node.say(f"would verify that the proxy answers {target} on /deployment_id")
            return
        expected = target.value if isinstance(target, Colour) else target
        tls = self.cfg.proxy.tls
        address, port = parse_listen(tls.listen if tls else self.cfg.proxy.listen)
        path, host_header = deployment_id_request(self.cfg)
        met, last = await health.watch(self.node, address, port, path, timeout=timeout,
                                       host_header=host_header, body=expected,
                                       streak=VERIFY_STREAK,
                                       interval=VERIFY_INTERVAL_HANDED_OVER
                                       if self.handed_over else VERIFY_INTERVAL,
                                       tls_name=host_header if tls else None)
        if not met:
            said = (None if isinstance(last, OSError) else last.body.strip() if last.ok
                    else f"HTTP {last.status}")
            raise ProxyError(f"the proxy did not answer {target} within {timeout:g}s "
                             f"(last answer: {said!r})", host=self.name)

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
        self.handed_over = False
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

    async def tls_rows(self, set_up: bool) -> list[Finding]:
        """The certificate the TLS listener serves: its names and days to expiry (a
        warning under ``CERT_WARN_DAYS``); nothing without ``[proxy.tls]``. Before
        ``setup`` (``set_up`` False) a listener that does not answer yet is expected."""
        if self.cfg.proxy.tls is None:
            return []
        item = f"certificate on {self.cfg.proxy.tls.listen}"
        try:
            resp = await self.ask()
        except (OSError, asyncio.TimeoutError) as exc:
            if not set_up:
                return [(item, None, "not served yet: `nginx -t` after setup checks the "
                         "certificate files")]
            return [(item, False, f"no TLS answer: {exc or 'timed out'}")]
        return [certificate_finding(item, resp.certificate, deployment_id_request(self.cfg)[1])]

    async def file_row(self, what: str, path: PurePosixPath) -> Finding:
        exists = (await self.node.run(files.exists(path), check=False)).ok
        return (f"{what} {path}", True, "present" if exists else "setup will write it")

    async def test_row(self) -> Finding:
        test = await self.node.run(self.command(self.cfg.proxy.test), check=False)
        return (f"proxy test `{self.cfg.proxy.test}`", test.ok, "passes" if test.ok else
                (test.stderr.strip() or test.stdout.strip())[-300:])


async def listen_finding(proxy: Proxy) -> Finding:
    """`check`: ``proxy.listen``'s port is free or the proxy's own (a process named as its
    kind). `nginx -t` does not bind, so a port another process holds passes it, and the
    reload then fails on it: every later reload too, for every site on that nginx."""
    _, port = parse_listen(proxy.cfg.proxy.listen)
    item = f"proxy.listen {proxy.cfg.proxy.listen}"
    sockets = checkplan.parse_listeners((await proxy.node.run(checkplan.listeners(port))).stdout)
    if not sockets:
        return (item, True, f"free: {proxy.kind} will bind it")
    owners = {f"{name} (pid {pid})" for procs in sockets for name, pid in procs
              if name != proxy.kind}
    if owners:
        return (item, False, f"port {port} is held by {', '.join(sorted(owners))}, not "
                f"{proxy.kind}: its reload could not bind it. Stop that or change proxy.listen")
    if not all(sockets):
        return (item, None, f"port {port} is in use by a process the SSH user cannot see "
                f"(fine if it is {proxy.kind})")
    return (item, True, f"{proxy.kind} listens on it")


def certificate_finding(item: str, der: bytes | None, name: str) -> Finding:
    """A `check` row for a served certificate: fails when it is expired or does not name
    ``name``; a note (None) under CERT_WARN_DAYS days to expiry."""
    from cryptography import x509  # a dependency of asyncssh; needed only here

    if der is None:
        return (item, False, "the listener presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = []
    expires = cert.not_valid_after_utc
    days = (expires - datetime.now(timezone.utc)).total_seconds() / 86400
    detail = (f"{', '.join(names) or 'no DNS names'}; expires {expires:%Y-%m-%d} "
              f"({days:.0f} days)")
    if days <= 0:
        return (item, False, f"EXPIRED: {detail}")
    if not any(_matches(pattern, name) for pattern in names):
        return (item, False, f"does not name {name!r}: {detail}")
    if days < CERT_WARN_DAYS:
        return (item, None, f"renew soon: {detail}")
    return (item, True, detail)


def _matches(pattern: str, name: str) -> bool:
    """Whether a certificate's DNS name covers ``name`` (one leading wildcard label)."""
    pattern, name = pattern.lower(), name.lower()
    if pattern.startswith("*."):
        return "." in name and name.split(".", 1)[1] == pattern[2:]
    return pattern == name
