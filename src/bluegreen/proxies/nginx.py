"""The nginx kind: a site file per colour and a live link; a switch renames the link, tests
and reloads nginx (old workers finish their connections with the previous config)."""

from __future__ import annotations

from pathlib import PurePosixPath

from bluegreen.config import Colour
from bluegreen.errors import ProxyError
from bluegreen.hosts.base import Result
from bluegreen.plan import files, layout
from bluegreen.plan import nginx, workers
from bluegreen.hosts.base import Op
from bluegreen.plan.files import Query
from bluegreen.plan.nginx import Finding
from bluegreen.proxies.base import Meter, Proxy
from bluegreen.traffic import Sample, Traffic


# What a proxy's link is not known to name yet (`NginxProxy.live_colour` reads it).
UNKNOWN = object()


class NginxProxy(Proxy):
    kind = "nginx"
    files = "site"
    tests_page_file = True
    _link: Colour | None | object = UNKNOWN
    _to_canary = False  # the link names a canary's file (of the stable colour `_link`)
    _maintenance: bool | None = None  # the page's existence, read with the link

    @property
    def source(self) -> str:
        return f"link {nginx.link(self.cfg)}"

    @property
    def directories(self) -> list[PurePosixPath]:
        return [nginx.available(self.cfg, Colour.BLUE).parent, nginx.link(self.cfg).parent]

    def first_reads(self) -> list[Query | Op]:
        return [*super().first_reads(), nginx.read_link(self.cfg, self.node.layout.maintenance_page)]

    async def live_colour(self) -> Colour | None:
        """The colour the link names: read once per command, then kept as this proxy
        changes the link (every change goes through `_linked`)."""
        cached = self._link
        if cached is None or isinstance(cached, Colour):
            return cached
        result = await self.node.run(nginx.read_link(self.cfg,
                                                     self.node.layout.maintenance_page))
        lines = result.stdout.splitlines()
        self._maintenance = nginx.MAINTENANCE_MARK in lines
        target = "\n".join(line for line in lines if line != nginx.MAINTENANCE_MARK).strip()
        if not target:
            return self._linked(None)
        colour = nginx.colour_of_target(self.cfg, target)
        if colour is None:
            raise ProxyError(f"{nginx.link(self.cfg)} points at {target}, which is neither "
                             "site file; fix the link or run `bluegreen setup`", host=self.name)
        return self._linked(colour, nginx.canary_of_target(self.cfg, target))

    def _linked(self, colour: Colour | None | object, canary: bool = False) -> Colour | None:
        """Remember what the link names now (UNKNOWN: read it again next time); a
        canary's file counts as its stable colour, with ``canary`` set."""
        self._link, self._to_canary = colour, canary
        return colour if isinstance(colour, Colour) else None

    async def write_site(self, colour: Colour) -> bool:
        """Write the colour's site file if its content differs; True when it changed."""
        page, unreleased = self.node.layout.maintenance_page, colour in self.unreleased
        text = nginx.render_site(self.cfg, colour, self.upstreams, page, unreleased=unreleased)
        current = await self.read(nginx.available(self.cfg, colour))
        if current == text:
            return False
        if self.sudo:
            self.refuse_root_file(nginx.available(self.cfg, colour), current)
        await self.node.run_steps(nginx.write_site(self.cfg, colour, self.sudo), input=text)
        self.node.say(f"wrote {nginx.available(self.cfg, colour)}")
        return True

    async def setup(self, live: Colour | None) -> None:
        await set_up(self, live)

    async def reload(self) -> None:
        """``proxy.reload``, proven taken: until nginx's workers from before it stop
        accepting (`plan.workers.WATCH`)."""
        self.handed_over = True
        self._check(await self.node.run(nginx.reload_watched(
            self.cfg, self.command(self.cfg.proxy.reload)), check=False, timeout=60), None)

    async def prepare(self, target: Colour, live: Colour) -> None:
        """Rewrite the target's site file if it differs, point the link at it, test, and put
        the link back, with the next round trip (under sudo the site file is only read:
        root's). nginx reads its config only on reload, so traffic never sees the trial."""
        if self.sudo:  # the site files are root's: read, and refused if out of date
            await self.write_site(target)
        if target is live and self.sudo:
            return
        text = None if self.sudo else nginx.render_site(
            self.cfg, target, self.upstreams, self.node.layout.maintenance_page)
        self._linked(UNKNOWN)

        def tried(result: Result) -> None:
            if nginx.WROTE_SITE in result.stdout.splitlines():
                self.node.say(f"wrote {nginx.available(self.cfg, target)}")
                self.stale = target is live  # the running nginx still has the old text
            self._check(result, live, trial=True)
            self._linked(live)

        # Sent with the next round trip (the health checks before a switch); a failure
        # raises there, and nothing after it runs.
        self.node.later(nginx.trial(self.cfg, target, live, self.sudo,
                                    self.command(self.cfg.proxy.test),
                                    update_site=not self.sudo), input=text, then=tried)

    async def switch(self, target: Colour, previous: Colour | None, *,
                     defer: bool = False) -> None:
        """Point the link at ``target``, test, reload, in one round trip (``defer``: with
        the next one, the verify). If ``test`` fails the previous link is put back and
        nothing is reloaded; if ``reload`` fails the link is put back too (a failed reload
        never reached nginx: it still serves ``previous``)."""
        if not defer:
            await self._relink(target, previous, previous, self.sudo)
            self._linked(target)
            return
        self._linked(UNKNOWN)

        def switched(result: Result) -> None:
            try:
                self._check(result, previous)
            except ProxyError as exc:
                exc.step = "switch and reload"
                raise
            self._linked(target)

        self.node.later(self._relink_argv(target, previous, self.sudo), timeout=120,
                        then=switched)

    async def _relink(self, target: Colour | PurePosixPath,
                      back: Colour | PurePosixPath | None, previous: Colour | None,
                      use_sudo: bool) -> None:
        """Point the link at ``target`` (a colour's or a canary's site file), test, reload:
        one round trip; if the test or the reload fails, the link goes back to ``back``
        and the error names ``previous``."""
        self._linked(UNKNOWN)
        result = await self.node.run(self._relink_argv(target, back, use_sudo), check=False,
                                     timeout=120)
        self._check(result, previous)

    def _relink_argv(self, target: Colour | PurePosixPath, back: Colour | PurePosixPath | None,
                     use_sudo: bool) -> list[str]:
        self.handed_over = True  # the command waits for the old workers to stop accepting
        return nginx.switch_and_reload(self.cfg, target, back, use_sudo,
                                       self.command(self.cfg.proxy.test),
                                       self.command(self.cfg.proxy.reload))

    def _check(self, result: Result, previous: Colour | None, trial: bool = False) -> None:
        """Turn a failed `trial` or `switch_and_reload` into the error of its step."""
        if result.ok:
            return
        output = (result.stderr.strip() or result.stdout.strip())[-2000:]
        if result.exit_status == nginx.TEST_FAILED:
            self.node.say(f"the live link stays on {previous}; nginx not reloaded" if trial
                          else f"link put back to {previous}; nginx not reloaded")
            raise ProxyError(f"`{self.cfg.proxy.test}` rejected the {self.files}:\n{output}",
                             host=self.name, detail=output)
        if result.exit_status in (nginx.RELOAD_FAILED, workers.NOT_APPLIED) and previous:
            self.node.say(f"link put back to {previous}")
        if result.exit_status == nginx.RELOAD_FAILED:
            raise ProxyError(f"`{self.cfg.proxy.reload}` failed (is {self.kind} running?):"
                             f"\n{output}", host=self.name, detail=output)
        if result.exit_status == workers.NOT_APPLIED:
            raise ProxyError("nginx did not apply the new configuration (its workers from "
                             "before the reload still serve; `nginx -t` does not bind the "
                             f"listen ports): {output or 'no [emerg] line in its error log'}",
                             host=self.name, detail=output)
        if result.exit_status == nginx.SITE_FAILED:
            folder = nginx.available(self.cfg, Colour.BLUE).parent
            raise ProxyError(f"writing the site file in {folder} failed: {output}",
                             host=self.name, detail=output)
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
        """The page file's existence is the switch (nginx tests it per request: no reload)."""
        path = self.node.layout.maintenance_page
        self._maintenance = None
        if not on:
            await self.node.run(layout.close_page(self.node.layout))
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
        await self.node.run(layout.open_page(self.node.layout))
        await self.node.run(files.write_file(path, "0644"), input=page)

    async def in_maintenance(self) -> bool:
        if self._maintenance is None:
            self._maintenance = (await self.node.run(
                files.exists(self.node.layout.maintenance_page), check=False)).ok
        return self._maintenance

    async def remove(self) -> list[PurePosixPath]:
        """Remove the link, test, reload (the site is gone); then the site files: the two
        colours' and a canary's (root's under sudo: left for an admin)."""
        self._linked(UNKNOWN)
        await self.node.run(nginx.remove_link(self.cfg, self.sudo))
        self._linked(None)
        await self.apply()
        self.node.say(f"removed {nginx.link(self.cfg)}; nginx reloaded")
        sites = [f(self.cfg, c) for f in (nginx.available, nginx.canary_file) for c in Colour]
        if self.sudo:
            return sites
        await self.node.run(["rm", "-f", "--", *map(str, sites)])
        return []

    # ---- canary: a third site file with both upstreams, split by split_clients ------

    @property
    def persisted_split(self) -> bool:
        return self._to_canary

    async def split(self) -> Traffic | None:
        live = await self.live_colour()
        if live is None or not self._to_canary:
            return None
        text = await self.read(nginx.canary_file(self.cfg, live))
        return nginx.parse_traffic(text, live) or Traffic(live, 0)

    async def set_traffic(self, traffic: Traffic) -> None:
        """Write the canary's site file for ``traffic``, point the link at it, test and
        reload (one round trip; a failed test or reload puts the link back on the stable
        colour's file), then poll until every answer says the new split."""
        if self.sudo:
            raise ProxyError("a canary with nginx rewrites a site file at each step, which "
                             "the SSH user may not do with sudo = true (the site files are "
                             "root's); use proxy.kind = \"haproxy\" (weights through the "
                             "runtime API) or a full switch", host=self.name)
        log = self.node.layout.traffic_log
        if not nginx.supports_maintenance(log):
            raise ProxyError(f"a canary needs deploy_to without spaces, quotes, ';' or '$' "
                             f"(nginx reads the log's path, {log}, from the site file)",
                             host=self.name)
        text = nginx.render_site(self.cfg, traffic.stable, self.upstreams,
                                 self.node.layout.maintenance_page, traffic, log)
        if "split_clients" not in text:
            raise ProxyError("proxy.template does not render a canary (no split_clients when "
                             "`canary` is set; see `bluegreen docs canary`)", host=self.name)
        path = nginx.canary_file(self.cfg, traffic.stable)
        await self.node.run(files.make_dirs([log.parent]))
        await self.node.run_steps(nginx.write_path(path, False), input=text)
        await self._relink(path, traffic.stable, traffic.stable, False)
        self._linked(traffic.stable, canary=True)
        await self.verify(traffic.text())

    async def end_split(self, colour: Colour) -> None:
        live = await self.live_colour()
        previous = (nginx.canary_file(self.cfg, live) if live and self._to_canary else live)
        await self._relink(colour, previous, live, self.sudo)
        self._linked(colour)
        await self.verify(colour)

    async def observe(self, colour: Colour) -> None:
        await self.set_traffic(Traffic(colour, 0, sticky=False))

    async def meter(self) -> Meter:
        log = self.node.layout.traffic_log
        size = await self.node.run(nginx.restart_log(log))
        return LogMeter(self, log, int(size.stdout.strip() or 0))

    def drain_reads(self) -> list[Query | Op]:
        return [nginx.old_workers(self.cfg)]

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


async def set_up(proxy: NginxProxy, live: Colour | None) -> None:
    """Write both site files (and with no link yet, link blue), test, reload, and verify
    the answer; when a step fails, what it changed is put back: the site files, the link
    it made (a link left behind would make every later reload fail the same way, for
    every site on this nginx), and, if nginx had applied them, nginx reloaded again."""
    cfg, node = proxy.cfg, proxy.node
    previous = {c: await proxy.read(nginx.available(cfg, c)) for c in Colour}
    changed = [c for c in Colour if await proxy.write_site(c)]
    if live is None:
        node.say(f"linking {nginx.link(cfg)} -> blue")
        proxy._linked(UNKNOWN)
        await node.run_steps(nginx.switch(cfg, Colour.BLUE, proxy.sudo))
        proxy._linked(Colour.BLUE)
    applied = False
    try:
        await proxy.test()
        await proxy.reload()
        applied = True
        await proxy.verify(live or Colour.BLUE)
    except ProxyError:
        for c in changed:
            if previous[c]:
                await node.run_steps(nginx.write_site(cfg, c, proxy.sudo), input=previous[c])
        if live is None:
            await proxy.restore(None)
        if applied and (changed or live is None):
            await proxy.reload()
        node.say("site files and link put back; " + ("nginx reloaded with them" if applied
                                                     else "nginx runs its previous configuration"))
        raise


class LogMeter(Meter):
    """Reads the JSON lines nginx appended to the canary's log since ``offset``: one per
    request, with the colour split_clients picked, the status and the response time."""

    def __init__(self, proxy: NginxProxy, log: PurePosixPath, offset: int) -> None:
        self.proxy, self.log, self.offset = proxy, log, offset
        self.samples = {c: Sample() for c in Colour}

    async def read(self) -> dict[Colour, Sample]:
        result = await self.proxy.node.run(nginx.read_log(self.log, self.offset))
        size, _, data = result.stdout.partition("\n")
        if int(size or 0) < self.offset:  # truncated or rotated: read it from its start
            self.offset = 0
            return await self.read()
        complete = data[:data.rfind("\n") + 1]  # a line nginx is still writing: next time
        self.offset += len(complete.encode())
        for colour, sample in nginx.parse_log(complete).items():
            self.samples[colour].add(sample)
        return {c: Sample(s.requests, s.errors, list(s.times)) for c, s in self.samples.items()}
