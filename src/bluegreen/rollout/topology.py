"""Who sends traffic where: each app host with the proxies that serve it (its own, or the
load balancers'), built once per command from the opened fleet."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from bluegreen import proxies, supervisors
from bluegreen.rollout.boot import Boot
from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, SplitBrain
from bluegreen.hosts.fleet import Fleet, Node
from bluegreen.plan import files
from bluegreen.plan import systemd as systemdplan
from bluegreen.hosts.base import Op
from bluegreen.plan.files import Query
from bluegreen.proxies import Proxy
from bluegreen.rollout.slots import Slots


@dataclass
class AppHost:
    node: Node
    proxies: list[Proxy]  # those that send it traffic: its own, or every load balancer
    slots: Slots

    @property
    def name(self) -> str:
        return self.node.name

    @cached_property
    def boot(self) -> Boot:
        """One for the command: what a step learns (a stop sent with the start, what an
        interrupted start left) is there for the next."""
        return Boot(self.slots)

    def first_reads(self) -> list[Query | Op]:
        """What a command that takes the lock reads next on this host (its own proxy's
        live colour, both slots' states): read with the lock, in one round trip."""
        own = [q for p in self.proxies if p.node is self.node for q in p.first_reads()]
        return own + [files.read_file(self.node.layout.state(c)) for c in Colour] + [
            systemdplan.DETECT]

    async def remember_first_reads(self) -> None:
        """Keep what ``first_reads`` read for the whole command (the slots' states, whether
        systemd runs the host), before a write makes the node forget it."""
        for colour in Colour:
            await self.slots.state(colour)
        await supervisors.has_systemd(self.node)

    async def live_colour(self) -> Colour | None:
        """The colour this host's traffic goes to: its proxy's (its own, or the load
        balancers', which must agree). None before setup."""
        colours = [await p.live_colour() for p in self.proxies]
        if len(set(colours)) > 1:
            raise SplitBrain("split brain: the load balancers disagree on the live colour ("
                             + ", ".join(f"{p.name} is on {c}" for p, c in
                                         zip(self.proxies, colours))
                             + "); put them on one colour with `bluegreen promote blue` "
                             "(or green)", host=self.name)
        return colours[0]

    async def require_live(self) -> Colour:
        live = await self.live_colour()
        if live is None:
            raise BlueGreenError(f"no live colour yet ({self.proxies[0].source} does not "
                                 "exist): run `bluegreen setup` first", host=self.name)
        return live

    async def proxy_answer(self) -> str | None:
        """What this host's traffic gets on /deployment_id: from its own proxy, or from
        each load balancer (joined with '/' when they differ)."""
        answers = [await p.answer() for p in self.proxies]
        return answers[0] if len(set(answers)) == 1 else "/".join(str(a) for a in answers)


@dataclass
class Topology:
    apps: list[AppHost]
    proxies: list[Proxy]  # every proxy once: the app hosts' own, or the load balancers

    def served_by(self, proxy: Proxy) -> list[AppHost]:
        return [a for a in self.apps if proxy in a.proxies]


def build(fleet: Fleet) -> Topology:
    """The app hosts and proxies of an opened fleet. A load balancer's upstream lists every
    app host of the config (not only those selected with --host)."""
    balancers: list[Proxy] = []
    for node in fleet.balancers:
        cfg = node.cfg
        balancers.append(proxies.for_node(node, [(h.label, cfg.bind_address(h))
                                                 for h in cfg.hosts]))
    apps = []
    for node in fleet.apps:
        serving = balancers or [proxies.for_node(node, [(node.name, node.bind)])]
        apps.append(AppHost(node, serving, Slots(node, serving)))
    return Topology(apps, balancers or [a.proxies[0] for a in apps])
