"""`setup`: the layout on each host, the supervisor's unit, the proxy's files; and what an
admin installs for a deploy user (`--print-sudoers`, `--print-root-files`)."""

from __future__ import annotations

from bluegreen import supervisors
from bluegreen.commands.context import Context, connected, locked
from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, ConfigError
from bluegreen.hosts.fleet import each, open_fleet
from bluegreen.plan import admin, files, layout, sudoers
from bluegreen.proxies import Proxy
from bluegreen.rollout.switch import finish_interrupted
from bluegreen.rollout.topology import AppHost


async def setup(ctx: Context) -> None:
    """Create the layout, write the proxy's files (nginx: both site files, and the link to
    blue if none exists; haproxy: the config, and the map file with blue if none exists),
    test, reload."""
    async with connected(ctx) as topo:
        await each(topo.apps, _refuse_foreign_ports, ctx.out)
        for a in topo.apps:
            a.node.say(f"creating {a.node.layout.root}")
        await each(topo.apps, lambda a: a.node.run(files.make_dirs(a.node.layout.directories())),
                   ctx.out)
        # (the lock lives in deploy_to: made first; what follows changes files a running
        # command uses, such as the maintenance page's opening and the unit: under the lock)
        async with locked(ctx, topo):
            await each(topo.apps, lambda a: a.node.run(layout.close(a.node.layout)), ctx.out)
            await each(topo.apps, _install_supervisor, ctx.out)
            # setup reloads the proxy: first make sure that cannot complete a switch that a
            # killed run left half done towards a colour that is not healthy. A proxy that
            # answers nothing yet (a first setup killed after linking, before reloading)
            # is what this setup's reload and verify are for.
            await finish_interrupted(topo, ctx.out, silent_ok=True)
            unreleased = await _unreleased(topo.apps)

            async def one(p: Proxy) -> None:
                live = await p.live_colour()
                # (root's files, under sudo, are installed by an admin: left plain)
                p.unreleased = frozenset() if p.sudo else unreleased
                await p.setup(live)
                await p.verify(live or Colour.BLUE)
                p.node.say(f"would be ready; live colour would be {live or Colour.BLUE}"
                           if p.node.dry else f"ready; live colour is {live or Colour.BLUE}")

            await each(topo.proxies, one, ctx.out)


async def _unreleased(apps: list[AppHost]) -> frozenset[Colour]:
    """The colours whose slot never ran a release that became healthy on any host (as
    the first deploy sees it): until one does, the proxy answers that no release is
    deployed yet, not a bare 502."""
    async def ran(a: AppHost, colour: Colour) -> bool:
        state = await a.slots.state(colour)
        return state is not None and state.status not in ("starting", "failed")

    released = {c for c in Colour for a in apps if await ran(a, c)}
    return frozenset(set(Colour) - released)


async def print_sudoers(ctx: Context) -> str:
    """The sudoers drop-in for the first selected host's SSH user (`sudo = true`), with the
    full paths found on that host; refused (ConfigError) when a directory sudo writes in
    there is not root's alone."""
    hc = ctx.hosts[0]
    user = sudoers.user_of(hc)
    if user is None or user == "root":
        raise ConfigError(f"hosts: {hc.label} has no non-root user in its address "
                          "(\"deploy@host\"): --print-sudoers is for a deploy user with "
                          "sudo = true")
    sudoers.check_user(user, f"hosts: {hc.label}")
    async with open_fleet(ctx.cfg, [hc], ctx.out, via=ctx.via) as fleet:
        node = fleet.apps[0]
        supervisor, _ = await supervisors.choose(node)
        commands = sudoers.privileged(ctx.cfg, supervisor.runs_units)
        found = await node.run(sudoers.resolve(sorted({c[0] for c in commands})))
        dirs = sudoers.directories(ctx.cfg, supervisor.runs_units)
        owners = await node.run(sudoers.owners(sorted(dirs)))
    bad = sudoers.unsafe_directories(dirs, owners.stdout)
    if bad:
        raise ConfigError(sudoers.refusal(bad))
    return sudoers.drop_in(ctx.cfg, user, commands, sudoers.parse_resolve(found.stdout))


async def print_root_files(ctx: Context) -> str:
    """A script an admin runs as root to install what a deploy user may not write."""
    hc = ctx.hosts[0]
    async with open_fleet(ctx.cfg, [hc], ctx.out, via=ctx.via) as fleet:
        supervisor, _ = await supervisors.choose(fleet.apps[0])
        unit = await supervisor.unit_file()
    return admin.script(ctx.cfg, hc, unit)


async def _refuse_foreign_ports(a: AppHost) -> None:
    """Before anything is written: a slot port held by a process that is not this app's
    own slot (another app's, say) would get this app's traffic once the site is linked."""
    for colour in Colour:
        probe = await a.slots.probe(colour)
        if probe.listening and not a.slots.owns(colour, await a.slots.state(colour), probe):
            raise BlueGreenError(
                f"port {a.node.cfg.slots.port(colour)} of the {colour} slot is held by "
                f"{a.slots.strangers(probe)}, not this app's slot: the proxy would send this "
                f"app's traffic there. Stop it or change slots.{colour}; nothing was written",
                host=a.name)


async def _install_supervisor(a: AppHost) -> None:
    supervisor, why = await supervisors.choose(a.node)
    a.node.say(f"slots run under {supervisor.title}: {why}")
    await supervisor.install()
