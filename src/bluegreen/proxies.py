"""The two proxy kinds behind one interface, used by a HostSession for the proxy it runs.

- ``nginx``: a site file per colour and a live link; a switch renames the link, tests and
  reloads nginx (old workers finish their connections with the previous config).
- ``haproxy``: one config file with a backend per colour and a map file whose "live" key
  names the live colour; a switch writes the map file, then sets the key through the
  runtime API: no reload, no process replaced, no connection closed.

For both, what is on disk (link / map file) is the persistent truth of the live colour,
and what the running proxy answers on /deployment_id is what traffic sees."""

from __future__ import annotations

import abc
import asyncio
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from bluegreen.config import Colour, render
from bluegreen.errors import ProxyError
from bluegreen.plan import files, haproxy, nginx
from bluegreen.plan.nginx import Finding

if TYPE_CHECKING:
    from bluegreen.session import HostSession

RUNTIME_TIMEOUT = 10.0


class Proxy(abc.ABC):
    """What a host's proxy must do; ``s`` is the session of the host that runs it."""

    kind = ""
    files = ""  # what `test` checks, for messages

    def __init__(self, s: HostSession) -> None:
        self.s = s
        self.cfg = s.cfg

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

    async def old_workers(self) -> int:
        """Processes of a previous configuration that may still send the slots requests."""
        return 0

    async def sessions(self, colour: Colour, host_label: str) -> int | None:
        """Requests and tunnels the proxy has open to ``host_label``'s slot of ``colour``;
        None when the proxy cannot tell (then the slot's port is watched instead)."""
        return None

    @abc.abstractmethod
    async def checks(self) -> list[Finding]:
        """What `bluegreen check` reports about the proxy; changes nothing."""

    def command(self, value: str) -> list[str]:
        """``proxy.test`` or ``proxy.reload`` as argv (with sudo when configured)."""
        return files.sudo(["sh", "-c", render(value, app=self.cfg.app)], self.cfg.proxy.sudo)

    async def test(self) -> None:
        result = await self.s.run(self.command(self.cfg.proxy.test), check=False, timeout=60)
        if not result.ok:
            output = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise ProxyError(f"`{self.cfg.proxy.test}` rejected the {self.files}:\n{output}",
                             host=self.s.name, detail=output)

    async def reload(self) -> None:
        result = await self.s.run(self.command(self.cfg.proxy.reload), check=False, timeout=60)
        if not result.ok:
            output = (result.stderr.strip() or result.stdout.strip())[-2000:]
            raise ProxyError(f"`{self.cfg.proxy.reload}` failed (is {self.kind} running?):"
                             f"\n{output}", host=self.s.name, detail=output)

    async def _read(self, path: PurePosixPath) -> str:
        return str((await self.s.run(files.read_file(path))).stdout)

    async def _test_row(self) -> Finding:
        test = await self.s.run(self.command(self.cfg.proxy.test), check=False)
        return (f"proxy test `{self.cfg.proxy.test}`", test.ok, "passes" if test.ok else
                (test.stderr.strip() or test.stdout.strip())[-300:])


class NginxProxy(Proxy):
    kind = "nginx"
    files = "site"

    @property
    def source(self) -> str:
        return f"link {nginx.link(self.cfg)}"

    @property
    def directories(self) -> list[PurePosixPath]:
        return [nginx.available(self.cfg, Colour.BLUE).parent, nginx.link(self.cfg).parent]

    async def live_colour(self) -> Colour | None:
        result = await self.s.run(nginx.read_link(self.cfg))
        target = result.stdout.strip()
        if not target:
            return None
        colour = nginx.colour_of_target(self.cfg, target)
        if colour is None:
            raise ProxyError(f"{nginx.link(self.cfg)} points at {target}, which is neither "
                             "site file; fix the link or run `bluegreen setup`", host=self.s.name)
        return colour

    async def write_site(self, colour: Colour) -> bool:
        """Write the colour's site file if its content differs; True when it changed."""
        text = nginx.render_site(self.cfg, colour, self.s.upstreams)
        if await self._read(nginx.available(self.cfg, colour)) == text:
            return False
        await self.s.run(nginx.write_site(self.cfg, colour), input=text)
        self.s.say(f"wrote {nginx.available(self.cfg, colour)}")
        return True

    async def setup(self, live: Colour | None) -> None:
        previous = {c: await self._read(nginx.available(self.cfg, c)) for c in Colour}
        changed = [c for c in Colour if await self.write_site(c)]
        if live is None:
            self.s.say(f"linking {nginx.link(self.cfg)} -> blue")
            await self.s.run(nginx.switch(self.cfg, Colour.BLUE))
        try:
            await self.test()
        except ProxyError:
            for c in changed:
                if previous[c]:
                    await self.s.run(nginx.write_site(self.cfg, c), input=previous[c])
            if live is None:
                await self.restore(None)
            self.s.say("site files and link put back; nginx not reloaded")
            raise
        await self.reload()

    async def prepare(self, target: Colour, live: Colour) -> None:
        """Rewrite the target's site file if needed; then point the link at it, test,
        and put the link back. nginx reads its config only on reload, so traffic never
        sees the trial."""
        await self.write_site(target)
        if target is not live:
            await self._link_and_test(target, live)
            await self.restore(live)

    async def switch(self, target: Colour, previous: Colour | None) -> None:
        """Point the link at ``target``, test, reload. If ``test`` fails the previous link
        is put back and nothing is reloaded; if ``reload`` fails the link is put back too."""
        await self._link_and_test(target, previous)
        try:
            await self.reload()
        except ProxyError:
            # A failed reload never reached nginx: it still serves ``previous``.
            await self.restore(previous)
            self.s.say(f"link put back to {previous}")
            raise

    async def _link_and_test(self, target: Colour, previous: Colour | None) -> None:
        await self.s.run(nginx.switch(self.cfg, target))
        try:
            await self.test()
        except ProxyError:
            await self.restore(previous)
            self.s.say(f"link put back to {previous}; nginx not reloaded")
            raise

    async def restore(self, previous: Colour | None) -> None:
        if previous is None:
            await self.s.run(nginx.remove_link(self.cfg))
        else:
            await self.s.run(nginx.switch(self.cfg, previous))

    async def apply(self) -> None:
        await self.test()
        await self.reload()

    async def old_workers(self) -> int:
        result = await self.s.run(nginx.old_workers(), check=False)
        return len(result.stdout.split())

    async def checks(self) -> list[Finding]:
        cfg, out = self.cfg, [await self._test_row()]
        try:
            live = await self.live_colour()
            out.append((f"link {nginx.link(cfg)}", True,
                        f"live is {live}" if live else "setup will link blue"))
        except ProxyError as exc:
            out.append((f"link {nginx.link(cfg)}", False, exc.message))
        for c in Colour:
            exists = (await self.s.run(["test", "-f", str(nginx.available(cfg, c))],
                                       check=False)).ok
            out.append((f"site file {nginx.available(cfg, c)}", True,
                        "present" if exists else "setup will write it"))
        out.extend(await self._advice())
        return out

    async def _advice(self) -> list[Finding]:
        """What the running nginx's version and config mean for zero downtime."""
        result = await self.s.run(nginx.inspect(self.cfg), check=False)
        return nginx.advice(result.stdout)


class HAProxyProxy(Proxy):
    kind = "haproxy"
    files = "config"

    @property
    def source(self) -> str:
        return f"map {haproxy.map_file(self.cfg)}"

    @property
    def directories(self) -> list[PurePosixPath]:
        return [haproxy.config_file(self.cfg).parent, haproxy.map_file(self.cfg).parent]

    async def live_colour(self) -> Colour | None:
        path = haproxy.map_file(self.cfg)
        text = await self._read(path)
        if not text:
            return None
        value = haproxy.parse_map(text)
        if value not in (Colour.BLUE.value, Colour.GREEN.value):
            raise ProxyError(f"{path} has no 'live blue' or 'live green' line (it says "
                             f"{value!r}); fix it or run `bluegreen setup`", host=self.s.name)
        return Colour(value)

    async def runtime(self, command: str) -> str:
        """One command on HAProxy's runtime API (the stats socket, reached from the host)."""
        sock = haproxy.socket(self.cfg)
        self.s.out.debug(self.s.name, f"haproxy {sock}> {command}")
        try:
            if sock.startswith("/"):
                stream = await self.s.host.open_unix_connection(sock)
            else:
                address, _, port = sock.rpartition(":")
                stream = await self.s.host.open_connection(address, int(port))
        except OSError as exc:
            raise ProxyError(f"cannot reach HAProxy's runtime API at {sock}: "
                             f"{exc.strerror or exc}; is HAProxy running with `stats socket "
                             f"{sock} level admin`?", host=self.s.name) from None
        try:
            await stream.write(command.encode() + b"\n")
            chunks: list[bytes] = []

            async def read_all() -> None:
                while chunk := await stream.read(65536):
                    chunks.append(chunk)

            await asyncio.wait_for(read_all(), RUNTIME_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ProxyError(f"HAProxy's runtime API at {sock} did not answer `{command}`: "
                             f"{exc or 'timed out'}", host=self.s.name) from None
        finally:
            await stream.close()
        return b"".join(chunks).decode(errors="replace")

    async def running_colour(self) -> str | None:
        """The live colour in the running HAProxy's memory (None: it has no such map)."""
        answer = await self.runtime(haproxy.show_live(self.cfg))
        return haproxy.parse_show_map(answer)

    async def _set_running(self, colour: Colour) -> None:
        answer = await self.runtime(haproxy.set_live(self.cfg, colour))
        error = haproxy.runtime_error(answer)
        if error and "not found" in error.lower():  # the key was removed by hand
            error = haproxy.runtime_error(await self.runtime(haproxy.add_live(self.cfg, colour)))
        if error:
            raise ProxyError(f"HAProxy refused `{haproxy.set_live(self.cfg, colour)}`: {error}",
                             host=self.s.name)

    async def write_config(self) -> str | None:
        """Write the config file if its content differs; returns the previous content
        ("" when there was none) if it changed, None if not."""
        path = haproxy.config_file(self.cfg)
        text = haproxy.render_config(self.cfg, self.s.upstream_servers)
        current = await self._read(path)
        if current == text:
            return None
        await self.s.run(haproxy.write(self.cfg, path), input=text)
        self.s.say(f"wrote {path}")
        return current

    async def _write_map(self, colour: Colour) -> None:
        await self.s.run(haproxy.write(self.cfg, haproxy.map_file(self.cfg)),
                         input=haproxy.map_text(colour))

    async def setup(self, live: Colour | None) -> None:
        previous = await self.write_config()
        if live is None:
            self.s.say(f"writing {haproxy.map_file(self.cfg)}: live blue")
            await self._write_map(Colour.BLUE)
        try:
            await self.test()
        except ProxyError:
            path = haproxy.config_file(self.cfg)
            if previous:
                await self.s.run(haproxy.write(self.cfg, path), input=previous)
            elif previous == "":
                await self.s.run(haproxy.remove(self.cfg, path))
            if live is None:
                await self.restore(None)
            self.s.say("config and map file put back; HAProxy not reloaded")
            raise
        if previous is not None or await self._running_or_none() != (live or Colour.BLUE).value:
            # New config: HAProxy reads it (and the map file) only when it reloads.
            self.s.say("reloading HAProxy to load it")
            await self.reload()

    async def _running_or_none(self) -> str | None:
        try:
            return await self.running_colour()
        except ProxyError:
            return None

    async def prepare(self, target: Colour, live: Colour) -> None:
        """Reload only if the config is out of date (e.g. hosts were added: the live colour
        is unchanged by that, since HAProxy reads it from the map file); then prove that
        the runtime API answers and the target backend has this proxy's servers."""
        previous = await self.write_config()
        if previous is not None:
            try:
                await self.test()
            except ProxyError:
                path = haproxy.config_file(self.cfg)
                await self.s.run(haproxy.write(self.cfg, path), input=previous)
                raise
            self.s.say("reloading HAProxy for the new config (the live colour stays "
                       f"{live})")
            await self.reload()
            await self.s.verify(live)
        running = await self.running_colour()
        if running is None:
            raise ProxyError(f"the running HAProxy does not use {haproxy.map_file(self.cfg)}: "
                             "is the config file loaded (see docs/configuration.md)? Run "
                             "`bluegreen setup`", host=self.s.name)
        stat = haproxy.parse_stat(await self.runtime("show stat"))
        if (haproxy.backend(self.cfg, target), "BACKEND") not in stat:
            raise ProxyError(f"the running HAProxy has no backend "
                             f"{haproxy.backend(self.cfg, target)}; run `bluegreen setup`",
                             host=self.s.name)

    async def switch(self, target: Colour, previous: Colour | None) -> None:
        """Write the map file (what a restarted HAProxy will read), then set the running
        HAProxy's map. If the runtime API fails, the file is put back."""
        await self._write_map(target)
        try:
            await self._set_running(target)
        except ProxyError:
            await self.restore(previous)
            self.s.say(f"{haproxy.map_file(self.cfg)} put back to {previous}")
            raise

    async def restore(self, previous: Colour | None) -> None:
        if previous is None:
            await self.s.run(haproxy.remove(self.cfg, haproxy.map_file(self.cfg)))
        else:
            await self._write_map(previous)

    async def apply(self) -> None:
        live = await self.live_colour()
        if live is not None:
            await self._set_running(live)

    async def old_workers(self) -> int:
        """HAProxy processes left by a reload (of this same config) that still finish
        their connections: they route with the map they had, so they may still send the
        slot requests, and their tunnels are not in the current process's counts."""
        try:
            current = haproxy.parse_pid(await self.runtime("show info"))
        except ProxyError:
            return 0
        if current is None:
            return 0
        result = await self.s.run(haproxy.old_processes(current), check=False)
        return len(result.stdout.split())

    async def sessions(self, colour: Colour, host_label: str) -> int | None:
        try:
            stat = haproxy.parse_stat(await self.runtime("show stat"))
        except ProxyError:
            return None  # the slot's port is watched instead
        return haproxy.sessions(stat, self.cfg, colour, host_label)

    async def checks(self) -> list[Finding]:
        cfg, out = self.cfg, [await self._test_row()]
        try:
            info = await self.runtime("show info")
            version = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                            if line.startswith("Version:")), "?")
            out.append((f"runtime API {haproxy.socket(cfg)}", True, f"HAProxy {version}"))
        except ProxyError as exc:
            out.append((f"runtime API {haproxy.socket(cfg)}", False, exc.message))
        try:
            live = await self.live_colour()
            out.append((f"map {haproxy.map_file(cfg)}", True,
                        f"live is {live}" if live else "setup will write it (live blue)"))
        except ProxyError as exc:
            out.append((f"map {haproxy.map_file(cfg)}", False, exc.message))
        exists = (await self.s.run(["test", "-f", str(haproxy.config_file(cfg))],
                                   check=False)).ok
        out.append((f"config file {haproxy.config_file(cfg)}", True,
                    "present" if exists else "setup will write it"))
        return out


def for_session(s: HostSession) -> Proxy:
    return HAProxyProxy(s) if s.cfg.proxy.is_haproxy else NginxProxy(s)
