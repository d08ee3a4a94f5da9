"""The proxy kinds, chosen by name (``proxy.kind``) from one registry."""

from __future__ import annotations

from bluegreen.config import PROXY_SETTINGS
from bluegreen.hosts.fleet import Node
from bluegreen.proxies.base import Proxy
from bluegreen.proxies.haproxy import HAProxyProxy
from bluegreen.proxies.nginx import NginxProxy

KINDS: dict[str, type[Proxy]] = {"nginx": NginxProxy, "haproxy": HAProxyProxy}
assert set(KINDS) == set(PROXY_SETTINGS), "every proxy kind needs its settings model"

__all__ = ["KINDS", "Proxy", "for_node"]


def for_node(node: Node, servers: list[tuple[str, str]]) -> Proxy:
    """The proxy ``node`` runs, sending traffic to the slots of ``servers``."""
    return KINDS[node.cfg.proxy.kind](node, servers)
