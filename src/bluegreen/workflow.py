"""The steps of each command across hosts: connect, lock, act, record, unlock."""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

from bluegreen.artifact import Artifact
from bluegreen.config import Colour, Config, HostConfig
from bluegreen.errors import (ArtifactError, BlueGreenError, CommandFailed, ConfigError,
                              ConnectError, ProxyError)
from bluegreen.hosts.base import Host, connect
from bluegreen.output import Reporter
from bluegreen.plan import files, history, lock, release as releaseplan
from bluegreen.plan.slot import env_script, slot_command
from bluegreen.hooks import run_hook
from bluegreen.session import HostSession, SlotState, load_secrets, now_iso

T = TypeVar("T")


@dataclass
class Context:
    """Everything a command needs; passed down, never global."""

    cfg: Config
    out: Reporter
    hosts: list[HostConfig]
    command: str = field(default_factory=lambda: " ".join(["bluegreen", *sys.argv[1:]]))
    user: str = field(default_factory=lambda: _user())


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def make_context(cfg: Config, out: Reporter, host_names: tuple[str, ...] = ()) -> Context:
    return Context(cfg, out, cfg.select_hosts(host_names))


# ---- plumbing -------------------------------------------------------------------------

@asynccontextmanager
async def connected(ctx: Context) -> AsyncIterator[list[HostSession]]:
    """Open one connection per host (and per load balancer), in parallel; close them all
    at the end. Yields the app hosts; each knows which sessions hold its proxy link."""
    balancers = ctx.cfg.load_balancers
    ctx.out.expect_hosts([h.label for h in [*ctx.hosts, *balancers]])
    opened = await asyncio.gather(*(connect(h) for h in [*ctx.hosts, *balancers]),
                                  return_exceptions=True)
    hosts = [h for h in opened if not isinstance(h, BaseException)]
    if len(hosts) < len(opened):
        await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)
        await _gather_all([_reraise(e) for e in opened if isinstance(e, BaseException)], ctx.out)
    try:
        apps = [HostSession(ctx.cfg, hc, h, ctx.out) for hc, h in zip(ctx.hosts, hosts)]
        lbs = [HostSession(ctx.cfg, hc, h, ctx.out, balancer=True)
               for hc, h in zip(balancers, hosts[len(apps):])]
        for app in apps:
            app.proxies = lbs or [app]
        yield apps
    finally:
        await asyncio.gather(*(h.close() for h in hosts), return_exceptions=True)


def proxies_of(sessions: list[HostSession]) -> list[HostSession]:
    """The sessions that hold the proxy links: the hosts themselves, or the balancers."""
    seen: dict[str, HostSession] = {}
    for s in sessions:
        for p in s.proxies:
            seen.setdefault(p.name, p)
    return list(seen.values())


async def _reraise(exc: BaseException) -> None:
    raise exc


async def _gather_all(aws: list[Awaitable[T]], out: Reporter) -> list[T]:
    """Await all; if any failed, report every failure and raise the first."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for extra in errors[1:]:
            if isinstance(extra, BlueGreenError):
                out.error(extra.message)
        for err in errors:
            if not isinstance(err, Exception):
                raise err
        raise errors[0]
    return list(results)  # type: ignore[arg-type]


async def each(sessions: list[HostSession], fn: Callable[[HostSession], Awaitable[T]],
               out: Reporter) -> list[T]:
    return await _gather_all([fn(s) for s in sessions], out)


@asynccontextmanager
async def locked(ctx: Context, sessions: list[HostSession]) -> AsyncIterator[None]:
    """Hold every host's lock for the body; a held lock is exit 4 and nothing is done."""
    info = lock.LockInfo(user=ctx.user, host=socket.gethostname(), pid=os.getpid(),
                         command=ctx.command, started=now_iso())
    results = await asyncio.gather(*(s.acquire_lock(info) for s in sessions),
                                   return_exceptions=True)
    taken = [s for s, r in zip(sessions, results) if not isinstance(r, BaseException)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(s.release_lock() for s in taken), return_exceptions=True)
        raise failures[0]
    try:
        yield
    finally:
        await asyncio.gather(*(s.release_lock() for s in sessions), return_exceptions=True)


async def _record_failure(ctx: Context, sessions: list[HostSession],
                          err: BlueGreenError) -> None:
    """Append a ``failed`` event on the app host that failed (on every one when the error
    names none of them, e.g. a load balancer)."""
    targets = [s for s in sessions if err.host == s.name] or sessions  # a balancer: all
    await asyncio.gather(
        *(s.record("failed", None, None, ctx.user, err.message.split("\n")[0]) for s in targets),
        return_exceptions=True,
    )


# ---- setup and check ------------------------------------------------------------------

async def setup(ctx: Context) -> None:
    """Create the layout, write the proxy's files (nginx: both site files, and the link to
    blue if none exists; haproxy: the config, and the map file with blue if none exists),
    test, reload."""
    async with connected(ctx) as sessions:
        for s in sessions:
            s.say(f"creating {s.layout.root}")
        await each(sessions, lambda s: s.run(files.make_dirs(s.layout.directories())), ctx.out)
        async with locked(ctx, sessions):
            # setup reloads the proxy: first make sure that cannot complete a switch that a
            # killed run left half done towards a colour that is not healthy.
            await _finish_interrupted_switch(ctx, sessions)
            await each(proxies_of(sessions), _setup_host, ctx.out)


async def _setup_host(s: HostSession) -> None:
    live = await s.live_colour()
    await s.proxy.setup(live)
    await s.verify(live or Colour.BLUE)
    s.say(f"ready; live colour is {live or Colour.BLUE}")


@dataclass
class CheckItem:
    host: str
    item: str
    ok: bool | None  # None: a note (advice), which does not fail the check
    detail: str


async def check(ctx: Context) -> list[CheckItem]:
    """Connect to every host and verify tools, proxy and paths; changes nothing."""

    balancers = ctx.cfg.load_balancers

    async def one(hc: HostConfig, app: bool) -> list[CheckItem]:
        try:
            host = await connect(hc)
        except ConnectError as exc:
            return [CheckItem(hc.label, "connect", False, exc.message)]
        try:
            session = HostSession(ctx.cfg, hc, host, ctx.out, balancer=not app)
            return await _check_host(session, app=app, proxy=not app or not balancers)
        finally:
            await host.close()

    checks = [one(h, True) for h in ctx.hosts] + [one(h, False) for h in balancers]
    return [item for items in await asyncio.gather(*checks) for item in items]


_CHECK_SCRIPT = """
for tool in sh tar sha256sum ss setsid ps kill mkdir mv ln readlink tail; do
  if command -v "$tool" >/dev/null 2>&1; then echo "tool $tool ok"; else echo "tool $tool missing"; fi
done
for d in "$1" "$2"; do
  [ -n "$d" ] || continue
  if [ -d "$d" ] && [ -w "$d" ]; then echo "dir $d ok"; elif [ -d "$d" ]; then echo "dir $d not-writable"; else echo "dir $d missing"; fi
done
if [ -n "$3" ]; then
  d="$3"
  while [ ! -e "$d" ]; do d=$(dirname "$d"); done
  if [ -d "$3" ]; then echo "deploy_to exists"; elif [ -w "$d" ]; then echo "deploy_to creatable $d"; else echo "deploy_to blocked $d"; fi
fi
"""


async def _check_host(s: HostSession, *, app: bool, proxy: bool) -> list[CheckItem]:
    """Tools, and the proxy's dirs and test (``proxy``) and deploy_to (``app``)."""
    cfg = s.cfg
    out: list[CheckItem] = [CheckItem(s.name, "connect", True, "connected")]
    dirs = [str(d) for d in s.proxy.directories] if proxy else []
    dirs = [*dict.fromkeys(dirs), "", ""][:2]
    root = str(s.layout.root) if app else ""
    result = await s.run(["sh", "-c", _CHECK_SCRIPT, "sh", *dirs, root])
    missing = []
    for line in result.stdout.splitlines():
        parts = line.split()
        if parts[0] == "tool" and parts[2] != "ok":
            missing.append(parts[1])
        elif parts[0] == "dir":
            ok = parts[2] == "ok" or (parts[2] == "not-writable" and cfg.proxy.sudo)
            out.append(CheckItem(s.name, f"directory {parts[1]}", ok,
                                 "present" if ok else parts[2].replace("-", " ")))
        elif parts[0] == "deploy_to":
            state = parts[1]
            detail = {"exists": "present", "creatable": "setup will create it",
                      "blocked": f"cannot create it ({parts[-1]} is not writable)"}[state]
            out.append(CheckItem(s.name, f"deploy_to {s.layout.root}", state != "blocked", detail))
    out.append(CheckItem(s.name, "tools", not missing, "missing: " + " ".join(missing)
                         if missing else "sh tar sha256sum ss setsid ps found"))
    if not proxy:
        return out
    out.extend(CheckItem(s.name, item, ok, detail) for item, ok, detail in await s.proxy.checks())
    return out


# ---- deploy ---------------------------------------------------------------------------

@dataclass
class DeployResult:
    release: str
    version: str
    targets: dict[str, Colour]
    promoted: bool


async def deploy(ctx: Context, art: Artifact, *, promote: bool = True) -> DeployResult:
    """Upload, start and health-check the release on each host's idle slot, then switch."""
    secrets = load_secrets(ctx.cfg)
    ctx.out.add_secrets(list(secrets.values()))
    async with connected(ctx) as sessions, locked(ctx, sessions):
        lives = await _refuse_split(ctx, sessions, "deploy")
        names = [s.name for s in sessions]
        planned = dict(zip(names, await each(
            sessions, lambda s: _deploy_target(s, art, lives[s.name]), ctx.out)))
        targets = {name: colour for name, (colour, _) in planned.items()}
        done = {name: state for name, (_, state) in planned.items() if state is not None}
        todo = [s for s in sessions if s.name not in done]
        first_target = targets[names[0]].value
        await run_hook(ctx.cfg, "pre_deploy", ctx.out, colour=first_target,
                       version=art.version, hosts=names)
        boot = asyncio.Semaphore(ctx.cfg.deploy.boot_limit or len(sessions))
        try:
            started = dict(zip([s.name for s in todo], await each(
                todo, lambda s: _deploy_host(s, art, targets[s.name], lives[s.name], secrets,
                                             boot), ctx.out)))
            states = {**done, **started}
            for s in todo:
                await s.record("deploy", targets[s.name], states[s.name], ctx.user,
                               f"started on {targets[s.name]}")
            first = sessions[0]
            if ctx.cfg.run.migrate and first in todo:
                await _migrate(first, targets[first.name], states[first.name])
            if promote:
                await _switch_all(ctx, sessions, targets, "promote", lambda: run_hook(
                    ctx.cfg, "pre_promote", ctx.out, colour=first_target, version=art.version,
                    hosts=names))
        except BlueGreenError as err:
            await _record_failure(ctx, sessions, err)
            raise
        await each(sessions, lambda s: _prune_host(s, ctx.cfg.release.keep, ctx.user), ctx.out)
    if promote:
        await run_hook(ctx.cfg, "post_promote", ctx.out, colour=first_target,
                       version=art.version, hosts=names)
    await run_hook(ctx.cfg, "post_deploy", ctx.out, colour=first_target, version=art.version,
                   hosts=names)
    return DeployResult(art.release_id, art.version, targets, promote)


def split_brain(lives: dict[str, str | None]) -> str | None:
    """How hosts disagree on the live colour, or None when they agree."""
    if len(set(lives.values())) <= 1:
        return None
    return ", ".join(f"{host} is on {colour or 'nothing'}" for host, colour in lives.items())


async def _finish_interrupted_switch(ctx: Context, sessions: list[HostSession]) -> None:
    """A run killed between replacing a link (or map file) and reloading (or setting the
    running HAProxy's map) leaves a proxy whose persisted state names one colour while it
    serves the other. Finish that switch when the named colour is healthy on every host
    behind the proxy; otherwise put the link (map file) back."""

    async def one(p: HostSession) -> None:
        link = await p.link_colour()
        if link is None:
            return
        answer = await p.own_proxy_answer()
        if answer == link.value:
            return
        if answer not in (Colour.BLUE.value, Colour.GREEN.value):
            raise ProxyError(f"the proxy does not answer on /deployment_id ({answer!r}): is "
                             f"{p.proxy.kind} running?", host=p.name)
        served = [s for s in sessions if p in s.proxies]
        healthy = [await s.health(link) for s in served]
        if all(r is not None and r.ok for r in healthy):
            p.say(f"finishing an interrupted switch: the {p.proxy.source} says {link}, the "
                  f"proxy still serves {answer}")
            await p.proxy.apply()
            await p.verify(link)
        else:
            p.say(f"undoing an interrupted switch: the {p.proxy.source} says {link} (not "
                  f"healthy), the proxy serves {answer}")
            await p.proxy.restore(Colour(answer))

    await each(proxies_of(sessions), one, ctx.out)


async def _refuse_split(ctx: Context, sessions: list[HostSession],
                        what: str) -> dict[str, Colour | None]:
    """Each host's live colour, once any interrupted switch is settled; refuses (exit 1)
    when the hosts disagree."""
    await _finish_interrupted_switch(ctx, sessions)
    lives = dict(zip([s.name for s in sessions],
                     await each(sessions, lambda s: s.live_colour(), ctx.out)))
    split = split_brain({name: c.value if c else None for name, c in lives.items()})
    if split:
        raise BlueGreenError(
            f"split brain: the hosts disagree on the live colour ({split}); {what} refused. "
            "Put every host on one colour first: `bluegreen promote blue` (or green)")
    return lives


async def _deploy_target(s: HostSession, art: Artifact,
                         live: Colour | None) -> tuple[Colour, SlotState | None]:
    """The colour this deploy starts the release on: the idle one, except on the first
    deploy (the live slot has never run a release), when there is nothing to protect.
    With the state of the live slot when it already runs this release, healthy (a re-run
    after a deploy that was interrupted once it had switched): nothing left to do there."""
    if live is None:
        live = await s.require_live()  # raises: no link, run setup first
    live_state = await s.state(live)
    if live_state is not None and live_state.release == art.release_id \
            and live_state.status == "running":
        resp = await s.health(live)
        if resp is not None and resp.ok:
            s.say(f"{art.release_id} is already live on {live}; nothing to deploy here")
            return live, live_state
    first = live_state is None or live_state.status in ("starting", "failed")
    target = live if first else live.other
    s.say(f"live is {live}; deploying {art.release_id} to {target}"
          + (" (first deploy: nothing live to protect)" if first else ""))
    return target, None


async def _deploy_host(s: HostSession, art: Artifact, target: Colour, live: Colour | None,
                       secrets: dict[str, str], boot: asyncio.Semaphore) -> SlotState:
    await _upload(s, art)
    if s.cfg.run.env_file:
        await s.run(files.make_dirs([s.layout.shared_env.parent]))
        await s.run(files.write_file(s.layout.shared_env, "0600"), input=env_script(secrets))
    if boot.locked():
        s.say(f"waiting for a boot slot (deploy.boot_limit={s.cfg.deploy.boot_limit})")
    async with boot:  # deploy.boot_limit: at most N hosts stop and start at once
        if target is not live:  # the first deploy starts on the live colour: nothing there
            await s.stop_slot(target)
        slot = s.slot(target, art.release_id, art.version)
        return await s.start_slot(slot, secrets)


async def _upload(s: HostSession, art: Artifact) -> None:
    rid = art.release_id
    if (await s.run(releaseplan.exists(s.layout, rid), check=False)).ok:
        s.say(f"release {rid} already on the host; upload skipped")
        return
    dest = releaseplan.upload_path(s.layout, rid)
    size = art.path.stat().st_size
    s.say(f"uploading {art.path.name} ({size / 1e6:.1f} MB)")
    await s.run(files.make_dirs([s.layout.releases]))
    try:
        await s.host.put(art.path, dest)
    except CommandFailed as exc:
        await s.run(["rm", "-f", "--", str(dest)], check=False)  # a partial upload frees its space
        raise CommandFailed(f"{str(exc).removeprefix(f'[{s.name}] ')} ({await _free_space(s)}); "
                            "live traffic was not touched", host=s.name) from None
    result = await s.run(releaseplan.checksum(dest))
    remote_sha = result.stdout.split()[0] if result.stdout.split() else ""
    if remote_sha != art.sha256:
        await s.run(["rm", "-f", "--", str(dest)])
        raise ArtifactError(
            f"upload corrupted: sha256 on the host is {remote_sha[:12]}, expected "
            f"{art.sha256[:12]}; run deploy again", host=s.name)
    s.say(f"unpacking into {s.layout.release(rid)}")
    try:
        await s.run(releaseplan.unpack(s.layout, rid), timeout=600)
    except CommandFailed as exc:
        raise CommandFailed(f"unpacking {rid} failed ({await _free_space(s)}); nothing was "
                            f"started and live traffic was not touched:\n{exc.detail}",
                            host=s.name, detail=exc.detail) from None


async def _free_space(s: HostSession) -> str:
    """How much space is left where releases go, for messages about a failed write."""
    result = await s.run(["df", "-Pk", str(s.layout.releases)], check=False)
    fields = result.stdout.splitlines()[-1].split() if result.ok and result.stdout else []
    if len(fields) >= 6 and fields[3].isdigit():
        return f"{int(fields[3]) / 1024:.1f} MB free on {fields[5]}"
    return "free space unknown"


async def _migrate(s: HostSession, colour: Colour, state: SlotState) -> None:
    """Run ``run.migrate`` with the slot's release and env; its output is shown."""
    assert s.cfg.run.migrate is not None
    slot = s.slot(colour, state.release, state.version)
    s.say(f"migrate with {state.release} ({colour}): {s.cfg.run.migrate}")
    result = await s.run(slot_command(state.cwd, s.layout.slot_env(colour),
                                      slot.render(s.cfg, s.cfg.run.migrate)),
                         timeout=3600, check=False)
    output = s.out.mask((result.stdout + result.stderr).rstrip())
    for line in output.splitlines()[-50:]:
        s.say(f"  {line}")
    if not result.ok:
        raise BlueGreenError(f"migrate failed (exit {result.exit_status}); nothing was switched "
                             f"and live traffic was not touched", host=s.name, detail=output)


# ---- promote and rollback -------------------------------------------------------------

async def _switch_all(ctx: Context, sessions: list[HostSession], targets: dict[str, Colour],
                      event: str,
                      before_switch: Callable[[], Awaitable[None]] | None = None) -> None:
    """Switch every proxy (each host's own, or the load balancers) to the target colour,
    all or nothing:
    (1) every host's target slot answers its health check, and every proxy is ready:
        nginx: the new site link passes the test (tried, then put back; nginx reads it only
        on reload); haproxy: the runtime API answers and has the target backend;
    (2) every proxy switches (nginx: link and reload; haproxy: map file and runtime API);
    (3) every proxy answers the target colour.
    If any proxy fails in (2) or (3), those already switched are switched back, and the
    error names the host and the step (exit 1)."""
    proxies = proxies_of(sessions)
    wanted: dict[str, Colour] = {}
    for s in sessions:
        for p in s.proxies:
            if wanted.setdefault(p.name, targets[s.name]) is not targets[s.name]:
                raise BlueGreenError(f"{p.name} serves hosts that would need different colours")
    lives = dict(zip([p.name for p in proxies],
                     await each(proxies, lambda p: p.require_live(), ctx.out)))

    async def healthy(s: HostSession) -> None:
        target = targets[s.name]
        resp = await s.health(target)
        if resp is None or not resp.ok:
            state = await s.state(target)
            what = f"its release {state.release} is {state.status}" if state else "it is empty"
            raise BlueGreenError(
                f"{target} is not healthy ({'no answer' if resp is None else resp.status} on "
                f"{ctx.cfg.run.health_path}; {what}); nothing was switched", host=s.name)

    async def ready(p: HostSession) -> None:
        try:
            await p.proxy.prepare(wanted[p.name], lives[p.name])
        except ProxyError as exc:
            raise ProxyError(str(exc).removeprefix(f"[{p.name}] ") + "; nothing was switched",
                             host=p.name, detail=exc.detail) from None

    await each(sessions, healthy, ctx.out)
    await each(proxies, ready, ctx.out)
    if before_switch is not None:
        await before_switch()
    moving = [p for p in proxies if wanted[p.name] is not lives[p.name]]
    for p in proxies:
        if p not in moving:
            p.say(f"{wanted[p.name]} is already live")
    switched: list[HostSession] = []

    async def flip(p: HostSession) -> None:
        p.say(f"switching {lives[p.name]} -> {wanted[p.name]}")
        await p.proxy.switch(wanted[p.name], lives[p.name])
        switched.append(p)

    step = "switch and reload"
    failures = await _gather_failures(moving, flip)
    if not failures:
        step = "verify through the proxy"
        failures = await _gather_failures(proxies, lambda p: p.verify(wanted[p.name]))
    if failures:
        for p in switched:
            ctx.out.warn(p.name, f"switching back to {lives[p.name]}")
            try:
                await p.proxy.switch(lives[p.name], wanted[p.name])
                await p.verify(lives[p.name])
            except BlueGreenError as exc:
                ctx.out.error(f"could not switch back: {exc.message}")
        first_host, first_err = failures[0]
        for host, err in failures[1:]:
            ctx.out.error(f"[{host}] {step} failed too: {err}")
        detail = str(first_err).removeprefix(f"[{first_host}] ")
        raise ProxyError(
            f"{event} failed at step '{step}': {detail}"
            + (f"; switched back: {', '.join(p.name for p in switched)}" if switched else
               "; no host was switched"),
            host=first_host)
    for s in sessions:
        state = await s.state(targets[s.name])
        before = lives[s.proxies[0].name]
        await s.record(event, targets[s.name], state, ctx.user, f"{before} -> {targets[s.name]}")
        s.say(f"live is {targets[s.name]} ({state.release if state else '?'}); proxy answers "
              f"{targets[s.name]}")


async def _gather_failures(sessions: list[HostSession],
                           fn: Callable[[HostSession], Awaitable[None]]) -> list[tuple[str, BaseException]]:
    """Run ``fn`` on every host at once; the (host, error) pairs of those that failed."""
    results = await asyncio.gather(*(fn(s) for s in sessions), return_exceptions=True)
    out: list[tuple[str, BaseException]] = []
    for s, r in zip(sessions, results):
        if isinstance(r, BaseException):
            if not isinstance(r, Exception):
                raise r
            out.append((s.name, r))
    return out


async def promote(ctx: Context, colour: Colour | None, *, event: str = "promote") -> dict[str, Colour]:
    """Switch every host to ``colour`` (default: the idle one) after checking it is healthy."""
    async with connected(ctx) as sessions, locked(ctx, sessions):
        if colour is None:
            await _refuse_split(ctx, sessions, event)
        else:
            await _finish_interrupted_switch(ctx, sessions)
        lives = await each(sessions, lambda s: s.require_live(), ctx.out)
        targets = {s.name: colour or live.other for s, live in zip(sessions, lives)}
        names = [s.name for s in sessions]
        first = sessions[0]
        state = await first.state(targets[first.name])
        hook_args: dict[str, Any] = {"colour": targets[first.name].value,
                                     "version": state.version if state else None,
                                     "hosts": names}
        before: Callable[[], Awaitable[None]] | None = None
        if event == "rollback":
            await each(sessions, lambda s: _can_roll_back(s, targets[s.name]), ctx.out)
        elif any(targets[s.name] is not live for s, live in zip(sessions, lives)):
            before = lambda: run_hook(ctx.cfg, "pre_promote", ctx.out, **hook_args)  # noqa: E731
        try:
            await _switch_all(ctx, sessions, targets, event, before)
        except BlueGreenError as err:
            await _record_failure(ctx, sessions, err)
            raise
    await run_hook(ctx.cfg, "post_rollback" if event == "rollback" else "post_promote", ctx.out,
                   **hook_args)
    return targets


async def _can_roll_back(s: HostSession, target: Colour) -> None:
    state = await s.state(target)
    if state is None or state.status != "running":
        raise BlueGreenError(
            f"nothing to roll back to: the {target} slot "
            + ("has never run a release" if state is None else
               f"is {state.status} ({state.release})")
            + "; deploy again instead", host=s.name)


async def rollback(ctx: Context) -> dict[str, Colour]:
    """Promote the previously live colour (it must still be running and healthy)."""
    return await promote(ctx, None, event="rollback")


# ---- stop, prune, unlock --------------------------------------------------------------

async def stop(ctx: Context, colour: Colour) -> None:
    """Drain and stop an idle slot; the live one is refused."""
    async with connected(ctx) as sessions, locked(ctx, sessions):
        await _finish_interrupted_switch(ctx, sessions)
        lives = await each(sessions, lambda s: s.live_colour(), ctx.out)
        for s, live in zip(sessions, lives):
            if live is colour:
                raise BlueGreenError(f"{colour} is live; promote the other colour first",
                                     host=s.name)

        async def stop_one(s: HostSession) -> None:
            state = await s.stop_slot(colour)
            await s.record("stop", colour, state, ctx.user)

        await each(sessions, stop_one, ctx.out)


async def prune(ctx: Context, keep: int) -> dict[str, list[str]]:
    async with connected(ctx) as sessions, locked(ctx, sessions):
        removed = await each(sessions, lambda s: _prune_host(s, keep, ctx.user), ctx.out)
    return {s.name: r for s, r in zip(ctx.hosts, removed)}  # type: ignore[misc]


async def _prune_host(s: HostSession, keep: int, user: str) -> list[str]:
    """Delete all but the ``keep`` newest releases, never the blue or green slot's."""
    result = await s.run(releaseplan.list_releases(s.layout))
    protected = {st.release for c in Colour if (st := await s.state(c)) is not None}
    doomed = releaseplan.to_prune(result.stdout.split(), keep, protected)
    if doomed:
        s.say(f"pruning {len(doomed)} old release(s): {', '.join(doomed)}")
        await s.run(releaseplan.remove(s.layout, doomed))
        await s.record("prune", None, None, user, "removed " + " ".join(doomed))
    return doomed


async def _slot_state(s: HostSession, colour: Colour) -> SlotState:
    state = await s.state(colour)
    if state is None:
        raise BlueGreenError(f"the {colour} slot has never run a release", host=s.name)
    return state


def _one_host(ctx: Context, sessions: list[HostSession], what: str) -> HostSession:
    if len(sessions) > 1:
        ctx.out.warn(None, f"{what} runs on one host: {sessions[0].name} (choose with --host)")
    return sessions[0]


async def migrate(ctx: Context, colour: Colour | None) -> None:
    """Run ``run.migrate`` in a slot (default: the idle one) with its release and env."""
    if not ctx.cfg.run.migrate:
        raise ConfigError("run.migrate is not set")
    ctx.out.add_secrets(list(load_secrets(ctx.cfg).values()))
    async with connected(ctx) as sessions, locked(ctx, sessions):
        s = _one_host(ctx, sessions, "migrate")
        target = colour or (await s.require_live()).other
        await _migrate(s, target, await _slot_state(s, target))


async def console(ctx: Context, colour: Colour | None) -> int:
    """Run ``run.console`` in a pty on the host, in a slot (default: the live one)."""
    if not ctx.cfg.run.console:
        raise ConfigError("run.console is not set")
    async with connected(ctx) as sessions:
        s = _one_host(ctx, sessions, "console")
        target = colour or await s.require_live()
        state = await _slot_state(s, target)
        slot = s.slot(target, state.release, state.version)
        s.say(f"console on {target} ({state.release}): {ctx.cfg.run.console}")
        return await s.host.interactive(
            slot_command(state.cwd, s.layout.slot_env(target),
                         slot.render(ctx.cfg, ctx.cfg.run.console)), pty=True)


async def logs(ctx: Context, colour: Colour | None, lines: int, follow: bool) -> None:
    """Print (or follow) a slot's logs (default: the live one) on each selected host."""
    ctx.out.add_secrets(list(load_secrets(ctx.cfg).values()))
    async with connected(ctx) as sessions:
        if follow:
            sessions = [_one_host(ctx, sessions, "logs -f")]
        for s in sessions:
            target = colour or await s.require_live()
            state = await s.state(target)
            argv = s.logs_argv(target, state, lines, follow)
            if len(sessions) > 1:
                print(f"==> [{s.name}] {target} ({state.release if state else 'no release'}) <==")
            if follow:
                async for line in s.host.stream(argv):
                    print(ctx.out.mask(line), end="", flush=True)
            else:
                result = await s.run(argv, check=False)
                print(ctx.out.mask(result.stdout), end="")


async def unlock(ctx: Context) -> list[tuple[str, str]]:
    """Remove each host's lock; returns (host, what was removed)."""
    out: list[tuple[str, str]] = []
    async with connected(ctx) as sessions:
        for s in sessions:
            holder = await s.lock_holder()
            if holder is False:
                out.append((s.name, "no lock"))
                continue
            await s.release_lock()
            out.append((s.name, "removed: " + s.describe_holder(holder)))
    return out


# ---- status and history ---------------------------------------------------------------

async def status(ctx: Context) -> dict[str, Any]:
    """Per host: live colour, proxy answer, and each slot's release, pid and health; with
    load balancers, each balancer's link and answer too. Unreachable hosts are listed."""
    balancers = ctx.cfg.load_balancers

    async def open_one(hc: HostConfig) -> Host | ConnectError:
        try:
            return await connect(hc)
        except ConnectError as exc:
            return exc

    opened = await asyncio.gather(*(open_one(h) for h in [*ctx.hosts, *balancers]))
    try:
        lbs: list[HostSession] = []
        lb_rows: list[dict[str, Any]] = []
        for hc, h in zip(balancers, opened[len(ctx.hosts):]):
            if isinstance(h, ConnectError):
                lb_rows.append({"host": hc.label, "reachable": False, "error": h.message})
                continue
            lb = HostSession(ctx.cfg, hc, h, ctx.out, balancer=True)
            lbs.append(lb)
            live = await lb.link_colour()
            lb_rows.append({"host": hc.label, "reachable": True,
                            "live": live.value if live else None,
                            "proxy_answer": await lb.own_proxy_answer()})

        async def one(hc: HostConfig, h: Host | ConnectError) -> dict[str, Any]:
            if isinstance(h, ConnectError):
                return {"host": hc.label, "reachable": False, "error": h.message}
            s = HostSession(ctx.cfg, hc, h, ctx.out)
            if balancers:
                s.proxies = lbs
            return await _status_host(s)

        hosts = await asyncio.gather(*(one(hc, h) for hc, h in zip(ctx.hosts, opened)))
    finally:
        await asyncio.gather(*(h.close() for h in opened if not isinstance(h, ConnectError)),
                             return_exceptions=True)
    reachable = [h for h in hosts if h["reachable"]]
    problems = []
    split = split_brain({h["host"]: h["live"] for h in [*reachable, *lb_rows]
                         if h.get("reachable")})
    if split:
        problems.append(f"split brain: {split}; fix: `bluegreen promote blue` (or green) puts "
                        "every host on one colour")
    releases = {h["host"]: h["slots"][h["live"]]["release"] for h in reachable if h["live"]}
    if len(set(releases.values())) > 1:
        problems.append("live releases differ: " + ", ".join(
            f"{host} serves {rel or 'nothing'}" for host, rel in releases.items())
            + "; fix: deploy one release to every host")
    data: dict[str, Any] = {"app": ctx.cfg.app, "hosts": list(hosts),
                            "split_brain": bool(problems), "problems": problems}
    if balancers:
        data["load_balancers"] = lb_rows
    return data


async def _status_host(s: HostSession) -> dict[str, Any]:
    try:
        live = await s.live_colour()
    except ProxyError:  # balancers that disagree: reported as split brain by the caller
        live = None
    answer = await s.proxy_answer()
    slots: dict[str, Any] = {}
    for c in Colour:
        state = await s.state(c)
        probe = await s.probe(c)
        pid = next(iter(probe.listeners), None)
        resp = await s.health(c) if probe.listening else None
        slots[c.value] = {
            "release": state.release if state else None,
            "version": state.version if state else None,
            "port": s.cfg.slots.port(c),
            "pid": pid,
            "running": probe.listening,
            "healthy": bool(resp and resp.ok),
            "connections": await s.connections(c, probe=probe),
            "own": s.owns(c, state, probe) if probe.listening else None,
        }
    return {"host": s.name, "reachable": True, "live": live.value if live else None,
            "proxy_answer": answer, "slots": slots}


async def read_history(ctx: Context, limit: int | None) -> list[dict[str, Any]]:
    async with connected(ctx) as sessions:
        texts = await each(sessions, lambda s: s.run(history.read(s.layout)), ctx.out)
    indexed = [(str(e.get("time", "")), i, e)
               for r in texts for i, e in enumerate(history.parse(r.stdout))]
    indexed.sort(key=lambda t: (t[0], t[1]), reverse=True)
    events = [e for _, _, e in indexed]
    return events[:limit] if limit else events
