"""The haproxy kind: one config file with a backend per colour and a map file whose "live"
key names the live colour; a switch writes the map file, then sets the key through the
runtime API: no reload, no process replaced, no connection closed."""

from __future__ import annotations

import asyncio
from pathlib import PurePosixPath
from typing import Callable

from bluegreen.config import Colour
from bluegreen.errors import ProxyError
from bluegreen.plan import files
from bluegreen.plan import haproxy
from bluegreen.hosts.base import Endpoint, Exchanged, Op, exchange_op
from bluegreen.plan.files import Query, Steps
from bluegreen.plan.nginx import Finding
from bluegreen.proxies.base import Meter, Proxy
from bluegreen.traffic import Sample, Traffic

RUNTIME_TIMEOUT = 10.0


class HAProxyProxy(Proxy):
    kind = "haproxy"
    files = "config"
    # Whether the running map lacks a key of this app (True until `running_colour` read it).
    _keys_missing = True

    @property
    def source(self) -> str:
        return f"map {haproxy.map_file(self.cfg)}"

    @property
    def directories(self) -> list[PurePosixPath]:
        out = [haproxy.config_file(self.cfg).parent, haproxy.map_file(self.cfg).parent]
        return out + ([haproxy.frontend_file(self.cfg).parent] if haproxy.shared(self.cfg)
                      else [])

    def first_reads(self) -> list[Query | Op]:
        return [*super().first_reads(), *self.prepare_reads()]

    def prepare_reads(self) -> list[Query | Op]:
        """The files `prepare` keeps up to date, and the running HAProxy's map and
        backends."""
        maintenance = haproxy.maintenance_map(self.cfg)
        shared = [files.read_file(haproxy.frontend_file(self.cfg))] if haproxy.shared(
            self.cfg) else []
        return [files.read_file(haproxy.map_file(self.cfg)), files.read_file(maintenance),
                files.exists(maintenance), files.read_file(haproxy.config_file(self.cfg)),
                *shared, self._runtime_op(haproxy.show_live(self.cfg)),
                self._runtime_op(haproxy.SHOW_STAT)]

    def drain_reads(self) -> list[Query | Op]:
        return [self._runtime_op(haproxy.SHOW_STAT), self._runtime_op(haproxy.SHOW_INFO)]

    def _runtime_op(self, command: str) -> Op:
        """``runtime(command)`` as the operation it sends."""
        return exchange_op(self._runtime_endpoint(), command.encode() + b"\n",
                           timeout=RUNTIME_TIMEOUT)

    def _runtime_endpoint(self) -> Endpoint:
        sock = haproxy.socket(self.cfg)
        if sock.startswith("/"):
            return sock
        address, _, port = sock.rpartition(":")
        return (address, int(port))

    async def live_colour(self) -> Colour | None:
        path = haproxy.map_file(self.cfg)
        text = await self.read(path)
        value = haproxy.parse_map(self.cfg, text)
        if value is None and (haproxy.shared(self.cfg) or not text):
            return None  # before setup (a shared map may hold other apps' lines)
        if value not in (Colour.BLUE.value, Colour.GREEN.value):
            keys = " ".join(haproxy.map_keys(self.cfg))
            raise ProxyError(f"{path}: the lines of {keys} do not name blue or green (they "
                             f"say {value!r}); fix it or run `bluegreen setup`", host=self.name)
        return Colour(value)

    async def runtime(self, command: str) -> str:
        """One command on HAProxy's runtime API (the stats socket, reached from the host)."""
        sock = haproxy.socket(self.cfg)
        changes = not command.startswith(("show ", "get "))
        if self.node.dry and changes:
            self.node.say(f"would send to HAProxy's runtime API {sock}: {command}")
            return ""
        if changes:  # what was read ahead of the running HAProxy is out of date
            self.node.changed()
        self.node.out.debug(self.name, f"haproxy {sock}> {command}")
        try:
            answer = await self.node.exchange(self._runtime_endpoint(),
                                              command.encode() + b"\n",
                                              timeout=RUNTIME_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            raise self._unreachable(command, exc) from None
        return answer.data.decode(errors="replace")

    def _unreachable(self, command: str, exc: BaseException) -> ProxyError:
        sock = haproxy.socket(self.cfg)
        if isinstance(exc, (ConnectionRefusedError, FileNotFoundError, PermissionError)):
            return ProxyError(f"cannot reach HAProxy's runtime API at {sock}: "
                              f"{exc.strerror or exc}; is HAProxy running with `stats socket "
                              f"{sock} level admin`?", host=self.name)
        return ProxyError(f"HAProxy's runtime API at {sock} did not answer `{command}`: "
                          f"{exc or 'timed out'}", host=self.name)

    async def running_colour(self) -> str | None:
        """The live colour in the running HAProxy's memory (None: it has no such map)."""
        answer = await self.runtime(haproxy.show_live(self.cfg))
        self._keys_missing = bool(haproxy.missing_keys(self.cfg, answer))
        return haproxy.parse_show_map(self.cfg, answer)

    async def _set_running(self, colour: Colour) -> None:
        self.handed_over = True  # the running map changes at once: no old process answers
        answer = await self.runtime(haproxy.set_live(self.cfg, colour))
        error = haproxy.runtime_error(answer)
        if error and "not found" in error.lower():  # a key removed by hand, or a new name
            missing = haproxy.missing_keys(self.cfg, await self.runtime(
                haproxy.show_live(self.cfg)))
            error = haproxy.runtime_error(
                await self.runtime(haproxy.add_live(self.cfg, colour, missing))) if missing \
                else error
        if error:
            raise ProxyError(f"HAProxy refused `{haproxy.set_live(self.cfg, colour)}`: {error}",
                             host=self.name)

    async def write_config(self) -> str | None:
        """Write the config file (and a shared frontend missing so far) if its content
        differs; returns the previous content ("" when there was none) if it changed,
        None if not."""
        if haproxy.shared(self.cfg):
            await self._write_frontend()
        else:  # the config reads it: it must exist before `test`
            maintenance = haproxy.maintenance_map(self.cfg)
            if not (await self.node.run(files.exists(maintenance), check=False)).ok:
                await self.node.run_steps(haproxy.write(self.cfg, maintenance, self.sudo),
                                          input=haproxy.maintenance_text(False, ""))
        path = haproxy.config_file(self.cfg)
        text = haproxy.render_config(self.cfg, self.servers, self.unreleased)
        current = await self.read(path)
        if current == text:
            return None
        if self.sudo:
            self.refuse_root_file(path, current)
        await self.node.run_steps(haproxy.write(self.cfg, path, self.sudo), input=text)
        self.node.say(f"wrote {path}")
        return current

    async def _write_frontend(self) -> None:
        """The shared frontend: written when missing; an existing one must be the same
        (another app wrote it, with the same listeners), else nothing is changed."""
        path = haproxy.frontend_file(self.cfg)
        text = haproxy.render_frontend(self.cfg)
        current = await self.read(path)
        if current == text:
            return
        if current:
            raise ProxyError(f"{path} (the frontend the apps on this HAProxy share) differs "
                             "from this app's: the apps must agree on proxy.listen, "
                             "[proxy.tls] (listen, certificate directory, redirect_http, "
                             "hsts) and map_file. If the difference is intended, remove the "
                             "file and run `bluegreen setup` for every app", host=self.name)
        if self.sudo:
            self.refuse_root_file(path, current)
        await self.node.run_steps(haproxy.write(self.cfg, path, self.sudo), input=text)
        self.node.say(f"wrote {path}")

    async def _write_map(self, colour: Colour | None) -> None:
        """Put this app's keys on ``colour`` in the map file (None: remove them), keeping
        other apps' lines (a shared map is re-read on the host, under a lock)."""
        self._write_map_later(await self._map_steps(colour))

    async def _map_steps(self, colour: Colour | None) -> tuple[Steps, str]:
        shared_by_sudo = haproxy.shared(self.cfg) and self.sudo
        current = await self.read(haproxy.map_file(self.cfg)) if shared_by_sudo else ""
        return haproxy.write_map(self.cfg, colour, current, self.sudo)

    def _write_map_later(self, steps_and_input: tuple[Steps, str]) -> None:
        """Run the map file's steps with the next round trip (a switch's runtime-API
        command, or the lock's release): a failure raises there."""
        steps, text = steps_and_input
        for i, step in enumerate(steps):
            self.node.later(step, input=text if i == 0 else None, then=self.node.check)

    async def setup(self, live: Colour | None) -> None:
        previous = await self.write_config()
        if live is None:
            self.node.say(f"writing {haproxy.map_file(self.cfg)}: live blue")
            await self._write_map(Colour.BLUE)
        try:
            await self.test()
        except ProxyError:
            path = haproxy.config_file(self.cfg)
            if previous:
                await self.node.run_steps(haproxy.write(self.cfg, path, self.sudo),
                                          input=previous)
            elif previous == "":
                await self.node.run(haproxy.remove(self.cfg, path, self.sudo))
            if live is None:
                await self.restore(None)
            self.node.say("config and map file put back; HAProxy not reloaded")
            raise
        if previous is not None or await self._running_or_none() != (live or Colour.BLUE).value:
            # New config: HAProxy reads it (and the map file) only when it reloads.
            self.node.say("reloading HAProxy to load it")
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
                await self.node.run_steps(haproxy.write(self.cfg, path, self.sudo),
                                          input=previous)
                raise
            self.node.say("reloading HAProxy for the new config (the live colour stays "
                       f"{live})")
            await self.reload()
            await self.verify(live)
        running = await self.running_colour()
        if running is None:
            raise ProxyError(f"the running HAProxy does not use {haproxy.map_file(self.cfg)}: "
                             "is the config file loaded (see `bluegreen docs configuration`)? Run "
                             "`bluegreen setup`", host=self.name)
        stat = haproxy.parse_stat(await self.runtime(haproxy.SHOW_STAT))
        if (haproxy.backend(self.cfg, target), "BACKEND") not in stat:
            raise ProxyError(f"the running HAProxy has no backend "
                             f"{haproxy.backend(self.cfg, target)}; run `bluegreen setup`",
                             host=self.name)

    async def switch(self, target: Colour, previous: Colour | None, *,
                     defer: bool = False) -> None:
        """Write the map file (what a restarted HAProxy will read), then set the running
        HAProxy's map. If the runtime API fails, the file is put back. ``defer``: both go
        with the next round trip (the verify), when the running map has every key of this
        app (`prepare` read it); a failure raises there, and the file is put back with the
        round trip after."""
        if defer and previous is not None and not self.node.dry and not self._keys_missing:
            path = haproxy.map_file(self.cfg)
            back = await self._map_steps(previous)
            await self._write_map(target)
            self.handed_over = True
            command = haproxy.set_live(self.cfg, target)

            def set_(get: Callable[[], Exchanged]) -> None:
                try:
                    try:
                        text = get().data.decode(errors="replace")
                    except (OSError, asyncio.TimeoutError) as exc:
                        raise self._unreachable(command, exc) from None
                    error = haproxy.runtime_error(text)
                    if error:
                        raise ProxyError(f"HAProxy refused `{command}`: {error}",
                                         host=self.name)
                except ProxyError as exc:
                    self._write_map_later(back)
                    self.node.say(f"{path} put back to {previous}")
                    exc.step = "switch"
                    raise

            self.node.out.debug(self.name, f"haproxy {haproxy.socket(self.cfg)}> {command}")
            self.node.later_exchange(self._runtime_endpoint(), command.encode() + b"\n",
                                     timeout=RUNTIME_TIMEOUT, then=set_)
            return
        await self._write_map(target)
        try:
            await self._set_running(target)
        except ProxyError:
            await self.restore(previous)
            self.node.say(f"{haproxy.map_file(self.cfg)} put back to {previous}")
            raise

    async def restore(self, previous: Colour | None) -> None:
        if previous is not None or haproxy.shared(self.cfg):
            await self._write_map(previous)
        else:
            await self.node.run(haproxy.remove(self.cfg, haproxy.map_file(self.cfg), self.sudo))

    async def apply(self) -> None:
        live = await self.live_colour()
        if live is not None:
            await self._set_running(live)

    async def set_maintenance(self, on: bool, message: str, page: str) -> None:
        """The maintenance map file (what a restarted HAProxy reads), then the running
        HAProxy's map through the runtime API: no reload."""
        if haproxy.shared(self.cfg):
            raise ProxyError("maintenance mode with proxy.shared_frontend is not supported "
                             "yet (`bluegreen docs operations`)", host=self.name)
        path = haproxy.maintenance_map(self.cfg)
        value = " ".join(message.split())
        await self.node.run_steps(haproxy.write(self.cfg, path, self.sudo),
                                  input=haproxy.maintenance_text(on, value))
        error = haproxy.runtime_error(await self.runtime(
            haproxy.set_maintenance(self.cfg, on, value)))
        if error:
            raise ProxyError(f"HAProxy refused the maintenance switch: {error} (is the config "
                             "up to date? run `bluegreen setup`)", host=self.name)

    async def in_maintenance(self) -> bool:
        text = await self.read(haproxy.maintenance_map(self.cfg))
        return any(line.split()[:2] == ["state", "on"] for line in text.splitlines())

    async def remove(self) -> list[PurePosixPath]:
        """Remove the config file (and the map file, or this app's lines of a shared one),
        test and reload. Under sudo the config is root's: both are left for an admin."""
        config, map_path = haproxy.config_file(self.cfg), haproxy.map_file(self.cfg)
        maintenance = haproxy.maintenance_map(self.cfg)
        if self.sudo:
            return [config] if haproxy.shared(self.cfg) else [config, map_path, maintenance]
        if haproxy.shared(self.cfg):
            await self._write_map(None)
            await self.runtime("; ".join(f"del map {map_path} {k}"
                                         for k in haproxy.map_keys(self.cfg)))
        else:
            await self.node.run(haproxy.remove(self.cfg, map_path, False))
            await self.node.run(haproxy.remove(self.cfg, maintenance, False))
        await self.node.run(haproxy.remove(self.cfg, config, False))
        await self.test()
        await self.reload()
        self.node.say(f"removed {config}; HAProxy reloaded")
        return []

    # ---- canary: weights in a backend with both colours, through the runtime API ----

    async def split(self) -> Traffic | None:
        running = await self._running_or_none()
        found = haproxy.canary_of_value(running)
        if found is None:
            return None
        new, sticky = found
        probe = Traffic(new.other, 0, sticky)
        stat = haproxy.parse_stat(await self.runtime(haproxy.SHOW_STAT))
        weights = haproxy.canary_weights(stat, self.cfg, probe)
        total = sum(weights.values())
        percent = round(100 * weights[new.value] / total) if total else 0
        return Traffic(new.other, percent, sticky)

    async def set_traffic(self, traffic: Traffic) -> None:
        """The weights of the canary backend's servers, then (at the first step) the map
        keys pointed at that backend: runtime-API commands, no reload. The map file keeps
        the stable colour: a restarted HAProxy serves only it."""
        stat = haproxy.parse_stat(await self.runtime(haproxy.SHOW_STAT))
        backend = haproxy.canary_backend(self.cfg, traffic)
        if (backend, "BACKEND") not in stat:
            raise ProxyError(f"the running HAProxy has no backend {backend} (a config from "
                             "before canaries); run `bluegreen setup`", host=self.name)
        labels = [label for label, _ in self.servers]
        # Weights first, then the map (commands joined by ';' run in order, one connection).
        command = "; ".join([haproxy.set_weights(self.cfg, traffic, labels),
                             haproxy.set_value(self.cfg, haproxy.canary_value(traffic))])
        self.handed_over = True
        error = haproxy.runtime_error(await self.runtime(command))
        if error:
            raise ProxyError(f"HAProxy refused `{command}`: {error}", host=self.name)
        weights = haproxy.canary_weights(
            haproxy.parse_stat(await self.runtime(haproxy.SHOW_STAT)), self.cfg, traffic)
        if weights != {c: share * len(labels) for c, share in traffic.shares.items()}:
            raise ProxyError(f"HAProxy's weights in {backend} are {weights}, not "
                             f"{traffic.shares} per server", host=self.name)
        await self.verify(haproxy.canary_value(traffic))

    async def end_split(self, colour: Colour) -> None:
        await self._set_running(colour)
        await self.verify(colour)

    async def meter(self) -> Meter:
        return StatMeter(self, await self._counters())

    async def _counters(self) -> dict[tuple[str, str], tuple[Colour, dict[str, int], float]]:
        return haproxy.colour_counters(
            haproxy.parse_stat(await self.runtime(haproxy.SHOW_STAT)), self.cfg)

    async def old_workers(self) -> int:
        """HAProxy processes left by a reload (of this same config) that still finish
        their connections: they route with the map they had, so they may still send the
        slot requests, and their tunnels are not in the current process's counts."""
        try:
            current = haproxy.parse_pid(await self.runtime(haproxy.SHOW_INFO))
        except ProxyError:
            return 0
        if current is None:
            return 0
        result = await self.node.run(haproxy.old_processes(current), check=False)
        return len(result.stdout.split())

    async def sessions(self, colour: Colour, host_label: str) -> int | None:
        try:
            stat = haproxy.parse_stat(await self.runtime(haproxy.SHOW_STAT))
        except ProxyError:
            return None  # the slot's port is watched instead
        return haproxy.sessions(stat, self.cfg, colour, host_label)

    async def checks(self) -> list[Finding]:
        cfg, out = self.cfg, [await self.test_row()]
        try:
            info = await self.runtime(haproxy.SHOW_INFO)
            out.append((f"runtime API {haproxy.socket(cfg)}", True,
                        f"HAProxy {haproxy.parse_version(info)}"))
        except ProxyError as exc:
            out.append((f"runtime API {haproxy.socket(cfg)}", False, exc.message))
        live = None
        try:
            live = await self.live_colour()
            out.append((f"map {haproxy.map_file(cfg)}", True,
                        f"live is {live}" if live else "setup will write it (live blue)"))
        except ProxyError as exc:
            out.append((f"map {haproxy.map_file(cfg)}", False, exc.message))
        out.append(await self.file_row("config file", haproxy.config_file(cfg)))
        if haproxy.shared(cfg):
            out.append(await self._frontend_row())
        out.extend(await self.tls_rows(set_up=live is not None))
        return out

    async def _frontend_row(self) -> Finding:
        path = haproxy.frontend_file(self.cfg)
        current = await self.read(path)
        item = f"shared frontend {path}"
        if not current:
            return (item, True, "setup will write it")
        if current == haproxy.render_frontend(self.cfg):
            return (item, True, "present, as this app would write it")
        return (item, False, "differs from this app's (listen, [proxy.tls] or map_file): "
                "setup would refuse")


class StatMeter(Meter):
    """The differences of the servers' counters in ``show stat`` since the meter was made
    (responses, 5xx, connection and response errors); the time is each server's average
    response time over its last 1024 requests (HAProxy keeps no percentile)."""

    def __init__(self, proxy: HAProxyProxy,
                 start: dict[tuple[str, str], tuple[Colour, dict[str, int], float]]) -> None:
        self.proxy, self.start = proxy, start

    async def read(self) -> dict[Colour, Sample]:
        out = {c: Sample() for c in Colour}
        for key, (colour, counts, rtime) in (await self.proxy._counters()).items():
            before = self.start.get(key, (colour, {}, 0.0))[1]
            delta = {k: v - before.get(k, 0) for k, v in counts.items()}
            if delta["stot"] <= 0:
                continue
            sample = out[colour]
            sample.requests += delta["stot"]
            sample.errors += delta["hrsp_5xx"] + delta["econ"] + delta["eresp"]
            sample.times.append(rtime)
        return out
