"""The steps of each command that deploys or switches: connect, lock, act, record,
unlock (the context, connecting and locking: ``context``). `setup` is in ``setup``; day-two
commands in ``operations``; read-only reports in ``reports``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from bluegreen import supervisors

from bluegreen.rollout import canary, records
from bluegreen.rollout.artifact import Artifact
from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, ProxyError
from bluegreen.hosts.fleet import each
from bluegreen.commands.context import (Context, connected, load_secrets, locked,
                                         record_failed, refuse_partial_switch)
from bluegreen.commands.hooks import run_hook
from bluegreen.plan import files, history
from bluegreen.plan import release as releaseplan
from bluegreen.plan.files import Query
from bluegreen.plan.slot import SlotState, env_script
from bluegreen.rollout.releases import (deploy_target, kept_release, migrate_on, prepare, prune_host,
                                upload)
from bluegreen.rollout.slots import moment
from bluegreen.rollout.switch import (finish_interrupted, refuse_split, switch_all,
                                      warn_if_maintenance)
from bluegreen.rollout.topology import AppHost, Topology


# ---- deploy ---------------------------------------------------------------------------

@dataclass
class DeployResult:
    release: str
    version: str
    targets: dict[str, Colour]
    promoted: bool


async def deploy(ctx: Context, source: Artifact | Callable[[], Artifact], *,
                 promote: bool = True, plan: canary.Plan | None = None) -> DeployResult:
    """Upload, start and health-check the release (``source``, or what it builds when no
    host is locked) on each host's idle slot, then switch (with ``plan``: through a
    canary's steps, and/or watched after)."""
    if promote:
        refuse_partial_switch(ctx, "deploy")
    secrets = load_secrets(ctx.cfg)
    ctx.out.add_secrets(list(secrets.values()))
    async with connected(ctx) as topo, records.built_while_free(
            [a.node for a in topo.apps], source) as art, locked(ctx, topo, lambda a: [
            releaseplan.exists(a.node.layout, art.release_id),
            releaseplan.list_releases(a.node.layout)]):
        apps = topo.apps
        # The releases kept, read with the lock (for the prune; the new one is the newest).
        kept = {a.name: (await a.node.run(releaseplan.list_releases(a.node.layout))
                         ).stdout.split() for a in apps}
        for names in kept.values():
            if art.release_id not in names:
                names.append(art.release_id)
        keep = ctx.cfg.release.keep
        pruned = False
        lives = await refuse_split(topo, "deploy", ctx.out, finishing=art.release_id)
        await warn_if_maintenance(topo, ctx.out)
        names = [a.name for a in apps]
        planned = dict(zip(names, await each(
            apps, lambda a: deploy_target(a, art, lives[a.name]), ctx.out)))
        targets = {name: colour for name, (colour, _) in planned.items()}
        done = {name: state for name, (_, state) in planned.items() if state is not None}
        todo = [a for a in apps if a.name not in done]
        first_target = targets[names[0]].value
        await run_hook(ctx.cfg, "pre_deploy", ctx.out, colour=first_target,
                       version=art.version, hosts=names)
        boot = asyncio.Semaphore(ctx.cfg.deploy.boot_limit or len(apps))
        switching = False
        try:
            started = dict(zip([a.name for a in todo], await each(
                todo, lambda a: _deploy_host(a, art, targets[a.name], lives[a.name], secrets,
                                             boot), ctx.out)))
            states = {**done, **started}
            for a in todo:
                await records.record(a.node, "deploy", targets[a.name], states[a.name],
                                     ctx.user, f"started on {targets[a.name]}")
            first = apps[0]
            if ctx.cfg.run.migrate and first in todo:
                await migrate_on(first, targets[first.name], states[first.name])
            if promote:
                switching = True
                # One host: the prune, the history and the lock's release go with the
                # verify (if it passes); else the release list is read with it.
                pruned = await _switch(
                    ctx, topo, targets, "promote", plan, lambda: run_hook(
                        ctx.cfg, "pre_promote", ctx.out, colour=first_target,
                        version=art.version, hosts=names),
                    lambda a: [releaseplan.list_releases(a.node.layout)], ends=True,
                    last_steps=lambda a: prune_host(a, keep, ctx.user, kept[a.name],
                                                    if_done=True))
        except BlueGreenError as err:
            await record_failed(ctx, topo, err, {n: (c, (art.release_id, art.version))
                                           for n, c in targets.items()})
            raise
        except asyncio.CancelledError:  # Ctrl-C: what it started is stopped (`Boot.start`)
            raise await records.interrupted({a.node: a.boot.left for a in apps}, targets,
                                            ctx.user, f"the deploy of {art.release_id}",
                                            switching) from None
        if not pruned:
            await each(apps, lambda a: prune_host(a, keep, ctx.user), ctx.out)
    if promote:
        await run_hook(ctx.cfg, "post_promote", ctx.out, colour=first_target,
                       version=art.version, hosts=names)
    await run_hook(ctx.cfg, "post_deploy", ctx.out, colour=first_target, version=art.version,
                   hosts=names)
    return DeployResult(art.release_id, art.version, targets, promote)


async def _deploy_host(a: AppHost, art: Artifact, target: Colour, live: Colour | None,
                       secrets: dict[str, str], boot: asyncio.Semaphore) -> SlotState:
    if target is not live:  # what `stop` looks at first, read with the upload's check
        state = await a.slots.state(target)
        a.slots.probe_ahead(target, supervisors.of_state(a.node, state).session(state))
        a.node.ahead(*[q for p in a.proxies if p.node is a.node for q in p.drain_reads()])
    live_state = await a.slots.state(live) if live is not None and target is not live else None
    await upload(a.node, art, live_state.release if live_state is not None else None)
    slot = a.slots.slot(target, art.release_id, art.version)
    await prepare(a, slot, secrets)
    layout = a.node.layout
    if a.node.cfg.run.env_file or a.node.cfg.run.secrets:  # with the next round trip
        a.node.later(files.make_dirs([layout.shared_env.parent]), then=a.node.check)
        a.node.later(files.write_file(layout.shared_env, "0600"), input=env_script(secrets),
                     then=a.node.check)
    if boot.locked():
        a.node.say(f"waiting for a boot slot (deploy.boot_limit={a.node.cfg.deploy.boot_limit})")
    async with boot:  # deploy.boot_limit: at most N hosts stop and start at once
        if target is not live:  # the first deploy starts on the live colour: nothing there
            await a.boot.stop(target, then_start=True)
        return await a.boot.start(slot, secrets)


# ---- promote and rollback -------------------------------------------------------------

async def promote(ctx: Context, colour: Colour | None, *, event: str = "promote",
                  plan: canary.Plan | None = None) -> dict[str, Colour]:
    """Switch every host to ``colour`` (default: the idle one) after checking it is healthy.
    A colour named puts every proxy on it, also load balancers that disagree. A rollback
    while a canary's split is in effect (a run killed mid-canary) only ends the split."""
    refuse_partial_switch(ctx, event)
    forward_only = colour is None and event == "promote"
    # Whether a rollback sent traffic off the idle release: read with the lock.
    reads = (lambda a: [history.read(a.node.layout)]) if forward_only else None
    async with connected(ctx) as topo, locked(ctx, topo, reads):
        apps = topo.apps
        if event == "rollback":
            ended = await _end_canary(ctx, topo)
            if ended is not None:
                return {a.name: ended for a in apps}
        if colour is None:
            await refuse_split(topo, event, ctx.out)
            lives = await each(apps, lambda a: a.require_live(), ctx.out)
            targets = {a.name: live.other for a, live in zip(apps, lives)}
        else:
            await finish_interrupted(topo, ctx.out)
            targets = {a.name: colour for a in apps}
        proxy_lives = await each(topo.proxies, lambda p: p.live_colour(), ctx.out)
        await warn_if_maintenance(topo, ctx.out)
        first = apps[0]
        state = await first.slots.state(targets[first.name])
        hook_args: dict[str, Any] = {"colour": targets[first.name].value,
                                     "version": state.version if state else None,
                                     "hosts": [a.name for a in apps]}
        before: Callable[[], Awaitable[None]] | None = None
        if event == "rollback":
            await each(apps, lambda a: _can_roll_back(a, targets[a.name]), ctx.out)
        else:
            await _one_release(apps, targets)
            if forward_only:
                await each(apps, lambda a: _newer_than_live(a, targets[a.name]), ctx.out)
            if any(live is not targets[apps[0].name] for live in proxy_lives):
                before = lambda: run_hook(  # noqa: E731
                    ctx.cfg, "pre_promote", ctx.out, **hook_args)
        states = [await a.slots.state(targets[a.name]) for a in apps]
        try:
            await _switch(ctx, topo, targets, event, plan, before, ends=True)
        except BlueGreenError as err:
            await record_failed(ctx, topo, err, {a.name: (targets[a.name], (s.release, s.version)
                                                    if s else None) for a, s in zip(apps, states)})
            raise
    await run_hook(ctx.cfg, "post_rollback" if event == "rollback" else "post_promote", ctx.out,
                   **hook_args)
    return targets


async def _switch(ctx: Context, topo: Topology, targets: dict[str, Colour], event: str,
                  plan: canary.Plan | None, before: Callable[[], Awaitable[None]] | None,
                  reads_after: Callable[[AppHost], list[Query]] | None = None,
                  ends: bool = False,
                  last_steps: Callable[[AppHost], Awaitable[object]] | None = None) -> bool:
    """``switch_all``, after a canary's steps and followed by a watch when ``plan`` asks.
    ``ends``, ``last_steps``: see `switch_all` (whether the steps went with the verify)."""
    baseline = None
    if plan is not None and plan.steps:
        ctx.out.step(None, plan.describe())
        baseline = await canary.run_steps(topo, targets, plan, ctx.out, before)
        before = None  # pre_promote ran before the first request reached the new colour
    watch = plan is not None and plan.watch
    ended = await switch_all(topo, targets, event, ctx.user, ctx.out, before,
                             None if watch else reads_after, ends=ends and not watch,
                             last_steps=last_steps)
    if plan is not None and plan.watch:
        new = next(iter(targets.values()))
        await canary.watch(topo, new, plan, ctx.out, baseline, lambda reason: switch_all(
            topo, {a.name: new.other for a in topo.apps}, "rollback", ctx.user, ctx.out))
    return ended


async def _end_canary(ctx: Context, topo: Topology) -> Colour | None:
    """If a canary's split is in effect (its run was killed), send every request back to
    its stable colour and record a rollback; the stable colour, or None."""
    splits = [s for s in await each(topo.proxies, lambda p: p.split(), ctx.out) if s]
    if not splits:
        return None
    stable = splits[0].stable
    ctx.out.step(None, f"a canary is in effect ({splits[0].percent}% to {splits[0].new}): "
                 f"rollback ends it; every request goes to {stable} again")
    failed = await canary.back_to(topo.proxies, stable, ctx.out)
    if failed:
        raise ProxyError(f"rollback: {canary.went_back(failed, stable)}")
    for a in topo.apps:
        await records.record(a.node, "rollback", stable, await a.slots.state(stable),
                             ctx.user, f"canary ended: {splits[0].text()} -> {stable}")
    return stable


async def _can_roll_back(a: AppHost, target: Colour) -> None:
    state = await a.slots.state(target)
    if state is None or state.status != "running":
        raise BlueGreenError(
            f"nothing to roll back to: the {target} slot "
            + ("has never run a release" if state is None else
               f"is {state.status} ({state.release})")
            + "; deploy again instead", host=a.name)
    live = await a.slots.state(target.other)
    if live is not None and _forward(state, live):
        # Run twice (a CI retry, up-arrow), a rollback would switch back to the release it
        # rolled away from; before any rollback, to one staged and never live.
        raise BlueGreenError(
            f"nothing older to roll back to: {target} holds {state.release}, started after "
            f"the live {live.release} on {target.other}, so switching to it would go forward, "
            f"not back (a repeated rollback?). Nothing was switched. To go further back: "
            f"`bluegreen rollback --to RELEASE` (a release kept on the hosts, see `bluegreen "
            f"history`); to switch to {target} anyway: `bluegreen promote {target}`",
            host=a.name)
    a.node.say(f"rolling back to {state.release} on {target} (started {state.started})"
               + (f", away from {live.release} on {target.other}" if live else ""))


def _forward(target: SlotState, live: SlotState) -> bool:
    """Whether a switch to ``target`` goes forward: its release was started after the live
    one's. `promote` without a colour only goes forward, `rollback` only backward."""
    started, live_started = moment(target.started), moment(live.started)
    return started is not None and live_started is not None and started > live_started


async def _newer_than_live(a: AppHost, target: Colour) -> None:
    """`promote` without a colour moves forward only: the idle colour must hold a release
    started after the live one's (e.g. `deploy --no-promote`), and no rollback may have
    sent traffic off it since. Run twice (a retried CI job), or after a rollback, it would
    otherwise put back a release that someone moved away from."""
    idle, live = await a.slots.state(target), await a.slots.state(target.other)
    if idle is None or live is None:
        return  # nothing to compare (the health check says what is missing)
    if not _forward(idle, live):
        raise BlueGreenError(
            f"nothing newer to promote: {target} holds {idle.release}, started before the "
            f"live {live.release} on {target.other}, so promoting it would go "
            f"back, not forward (a repeated promote?). Nothing was changed. To go back on "
            f"purpose: `bluegreen rollback`; to switch to {target} anyway: `bluegreen "
            f"promote {target}`", host=a.name)
    moved = await records.rolled_away(a.node, target, idle.started)
    if moved is not None:
        raise BlueGreenError(
            f"{target} holds {idle.release}, which a rollback sent traffic away from (at "
            f"{moved.get('time')}, by {moved.get('user')}); a promote without a colour never "
            f"undoes a rollback (a retried CI job?). Nothing was changed. To ship it again on "
            f"purpose: `bluegreen promote {target}`; else deploy a fixed release", host=a.name)


async def _one_release(apps: list[AppHost], targets: dict[str, Colour]) -> None:
    """A switch must not leave the hosts serving different releases of the app (e.g. two
    `deploy --host NAME --no-promote` runs of different releases): refused, exit 1."""
    states = [await a.slots.state(targets[a.name]) for a in apps]
    if len({s.release for s in states if s is not None}) > 1:
        alone = "" if apps[0].node.cfg.load_balancers else (
            ", or promote some hosts alone with `--host NAME`")
        raise BlueGreenError(
            "the hosts hold different releases on the colour to promote ("
            + ", ".join(f"{a.name}: {s.release if s else 'nothing'} on {targets[a.name]}"
                        for a, s in zip(apps, states))
            + "); nothing was switched. Deploy one release to every host first (`bluegreen "
            f"deploy --no-promote`){alone}")


async def rollback(ctx: Context) -> dict[str, Colour]:
    """Promote the previously live colour (it must still be running and healthy, and hold a
    release started before the live one: only backward)."""
    return await promote(ctx, None, event="rollback")


async def rollback_to(ctx: Context, spec: str) -> DeployResult:
    """Start an older release still kept on every host (by id, or its newest by version)
    on the idle colour, health-check it and promote it: a deploy without an upload."""
    async with connected(ctx) as topo:
        found = await each(topo.apps, lambda a: kept_release(a, spec), ctx.out)
    if len(set(found)) > 1:
        raise BlueGreenError(f"the hosts keep different releases for {spec!r}: " + ", ".join(
            f"{a.name} {rid}" for a, rid in zip(topo.apps, found)) + "; name one by its id")
    ctx.out.step(None, f"rolling back to {found[0]}: it starts on the idle colour, then is "
                "promoted once healthy")
    return await deploy(ctx, Artifact.of_kept(found[0]))


# ---- stop, prune, unlock --------------------------------------------------------------

async def stop(ctx: Context, colour: Colour) -> None:
    """Drain and stop an idle slot; the live one is refused."""
    async with connected(ctx) as topo, locked(ctx, topo):
        await finish_interrupted(topo, ctx.out)
        lives = await each(topo.apps, lambda a: a.live_colour(), ctx.out)
        for a, live in zip(topo.apps, lives):
            if live is colour:
                raise BlueGreenError(f"{colour} is live; promote the other colour first",
                                     host=a.name)

        async def stop_one(a: AppHost) -> None:
            state = await a.boot.stop(colour)
            await supervisors.of_state(a.node, state).retire(colour)
            await records.record(a.node, "stop", colour, state, ctx.user)

        await each(topo.apps, stop_one, ctx.out)


async def prune(ctx: Context, keep: int) -> dict[str, list[str]]:
    """Delete all but the ``keep`` newest releases on each host (never a slot's)."""
    async with connected(ctx) as topo, locked(ctx, topo):
        removed = await each(topo.apps, lambda a: prune_host(a, keep, ctx.user), ctx.out)
    return {a.name: r for a, r in zip(topo.apps, removed)}
