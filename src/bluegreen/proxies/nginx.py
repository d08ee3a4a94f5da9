"""The nginx kind: a site file per colour and a live link; a switch renames the link, tests
and reloads nginx (old workers finish their connections with the previous config)."""

from __future__ import annotations

from pathlib import PurePosixPath

from bluegreen.config import Colour
from bluegreen.errors import ProxyError
from bluegreen.hosts.base import Result
from bluegreen.plan import files, nginx
from bluegreen.plan.nginx import Finding
from bluegreen.proxies.base import Proxy


# What a proxy's link is not known to name yet (`NginxProxy.live_colour` reads it).
UNKNOWN = object()


class NginxProxy(Proxy):
    kind = "nginx"
    files = "site"
    _link: Colour | None | object = UNKNOWN

    @property
    def source(self) -> str:
        return f"link {nginx.link(self.cfg)}"

    @property
    def directories(self) -> list[PurePosixPath]:
        return [nginx.available(self.cfg, Colour.BLUE).parent, nginx.link(self.cfg).parent]

    async def live_colour(self) -> Colour | None:
        """The colour the link names: read once per command, then kept as this proxy
        changes the link (every change goes through `_linked`)."""
        cached = self._link
        if cached is None or isinstance(cached, Colour):
            return cached
        result = await self.node.run(nginx.read_link(self.cfg))
        target = result.stdout.strip()
        if not target:
            return self._linked(None)
        colour = nginx.colour_of_target(self.cfg, target)
        if colour is None:
            raise ProxyError(f"{nginx.link(self.cfg)} points at {target}, which is neither "
                             "site file; fix the link or run `bluegreen setup`", host=self.name)
        return self._linked(colour)

    def _linked(self, colour: Colour | None | object) -> Colour | None:
        """Remember what the link names now (UNKNOWN: read it again next time)."""
        self._link = colour
        return colour if isinstance(colour, Colour) else None

    async def write_site(self, colour: Colour) -> bool:
        """Write the colour's site file if its content differs; True when it changed."""
        text = nginx.render_site(self.cfg, colour, self.upstreams,
                                 self.node.layout.maintenance_page)
        current = await self.read(nginx.available(self.cfg, colour))
        if current == text:
            return False
        if self.sudo:
            self.refuse_root_file(nginx.available(self.cfg, colour), current)
        await self.node.run_steps(nginx.write_site(self.cfg, colour, self.sudo), input=text)
        self.node.say(f"wrote {nginx.available(self.cfg, colour)}")
        return True

    async def setup(self, live: Colour | None) -> None:
        previous = {c: await self.read(nginx.available(self.cfg, c)) for c in Colour}
        changed = [c for c in Colour if await self.write_site(c)]
        if live is None:
            self.node.say(f"linking {nginx.link(self.cfg)} -> blue")
            self._linked(UNKNOWN)
            await self.node.run_steps(nginx.switch(self.cfg, Colour.BLUE, self.sudo))
            self._linked(Colour.BLUE)
        try:
            await self.test()
        except ProxyError:
            for c in changed:
                if previous[c]:
                    await self.node.run_steps(nginx.write_site(self.cfg, c, self.sudo),
                                              input=previous[c])
            if live is None:
                await self.restore(None)
            self.node.say("site files and link put back; nginx not reloaded")
            raise
        await self.reload()

    async def prepare(self, target: Colour, live: Colour) -> None:
        """Rewrite the target's site file if needed; then point the link at it, test,
        and put the link back, in one round trip. nginx reads its config only on reload,
        so traffic never sees the trial."""
        await self.write_site(target)
        if target is not live:
            self._linked(UNKNOWN)
            result = await self.node.run(nginx.trial(
                self.cfg, target, live, self.sudo, self.command(self.cfg.proxy.test)),
                check=False)
            self._check(result, live)
            self._linked(live)

    async def switch(self, target: Colour, previous: Colour | None) -> None:
        """Point the link at ``target``, test, reload, in one round trip. If ``test``
        fails the previous link is put back and nothing is reloaded; if ``reload`` fails
        the link is put back too (a failed reload never reached nginx: it still serves
        ``previous``)."""
        self._linked(UNKNOWN)
        result = await self.node.run(nginx.switch_and_reload(
            self.cfg, target, previous, self.sudo, self.command(self.cfg.proxy.test),
            self.command(self.cfg.proxy.reload)), check=False, timeout=120)
        self._check(result, previous)
        self._linked(target)

    def _check(self, result: Result, previous: Colour | None) -> None:
        """Turn a failed `trial` or `switch_and_reload` into the error of its step."""
        if result.ok:
            return
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        if result.exit_status == nginx.TEST_FAILED:
            self.node.say(f"link put back to {previous}; nginx not reloaded")
            raise ProxyError(f"`{self.cfg.proxy.test}` rejected the {self.files}:\n{output}",
                             host=self.name, detail=output)
        if result.exit_status == nginx.RELOAD_FAILED:
            self.node.say(f"link put back to {previous}")
            raise ProxyError(f"`{self.cfg.proxy.reload}` failed (is {self.kind} running?):"
                             f"\n{output}", host=self.name, detail=output)
        what = ("pointing the link back" if result.exit_status == nginx.LINK_BACK_FAILED
                else "switching the link")
        raise ProxyError(f"{what} at {nginx.link(self.cfg)} failed (exit "
                         f"{result.exit_status}): {output}", host=self.name, detail=output)

    async def restore(self, previous: Colour | None) -> None:
        self._linked(UNKNOWN)
        if previous is None:
            await self.node.run(nginx.remove_link(self.cfg, self.sudo))
        else:
            await self.node.run_steps(nginx.switch(self.cfg, previous, self.sudo))
        self._linked(previous)

    async def apply(self) -> None:
        await self.test()
        await self.reload()

    async def set_maintenance(self, on: bool, message: str, page: str) -> None:
        """The page file's existence is the switch: each site file answers 503 with it
        while it exists (nginx checks per request: no reload)."""
        path = self.node.layout.maintenance_page
        if not on:
            await self.node.run(files.remove_file(path))
            return
        if not nginx.supports_maintenance(path):
            raise ProxyError(f"maintenance mode needs deploy_to without spaces, quotes, ';' "
                             f"or '$' (nginx reads the page's path, {path}, from the site "
                             "file)", host=self.name)
        live = await self.live_colour()
        site = await self.read(nginx.available(self.cfg, live or Colour.BLUE))
        if str(path) not in site:
            raise ProxyError(f"{nginx.available(self.cfg, live or Colour.BLUE)} predates "
                             "maintenance mode: run `bluegreen setup` (it rewrites the site "
                             "files) first", host=self.name)
        await self.node.run(files.make_dirs([path.parent]))
        await self.node.run(files.write_file(path, "0644"), input=page)

    async def in_maintenance(self) -> bool:
        return (await self.node.run(files.exists(self.node.layout.maintenance_page),
                                    check=False)).ok

    async def remove(self) -> list[PurePosixPath]:
        """Remove the link, test, reload (the site is gone); then the two site files
        (root's under sudo: left for an admin)."""
        self._linked(UNKNOWN)
        await self.node.run(nginx.remove_link(self.cfg, self.sudo))
        self._linked(None)
        await self.apply()
        self.node.say(f"removed {nginx.link(self.cfg)}; nginx reloaded")
        sites = [nginx.available(self.cfg, c) for c in Colour]
        if self.sudo:
            return sites
        await self.node.run(["rm", "-f", "--", *map(str, sites)])
        return []

    async def old_workers(self) -> int:
        result = await self.node.run(nginx.old_workers(self.cfg), check=False)
        return len(result.stdout.split())

    async def checks(self) -> list[Finding]:
        cfg, out, live = self.cfg, [await self.test_row()], None
        try:
            live = await self.live_colour()
            out.append((f"link {nginx.link(cfg)}", True,
                        f"live is {live}" if live else "setup will link blue"))
        except ProxyError as exc:
            out.append((f"link {nginx.link(cfg)}", False, exc.message))
        for c in Colour:
            out.append(await self.file_row("site file", nginx.available(cfg, c)))
        out.extend(await self.tls_rows(set_up=live is not None))
        out.extend(await self._advice())
        return out

    async def _advice(self) -> list[Finding]:
        """What the running nginx's version and config mean for zero downtime."""
        result = await self.node.run(nginx.inspect(self.cfg), check=False)
        return nginx.advice(result.stdout)
