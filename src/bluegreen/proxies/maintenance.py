"""`maintenance on|off`, proven through the proxy as a switch is: what it answers on `/`
afterwards, and (nginx) why its workers may not see the page."""

from __future__ import annotations

import asyncio
import time

from bluegreen.errors import ProxyError
from bluegreen.hosts import health
from bluegreen.plan import workers
from bluegreen.plan.nginx import Finding
from bluegreen.proxies.base import ASK_TIMEOUT, Proxy

TIMEOUT = 5.0  # until the proxy answers the page (or, off, no longer does)


async def switch(proxy: Proxy, on: bool, message: str, page: str, marker: str) -> None:
    """Turn maintenance on or off on ``proxy`` and prove it through the proxy (``marker``:
    text of the page); if `on` does not take, it is turned off again, so that nothing says
    maintenance while users get the app, and the error says why."""
    await proxy.set_maintenance(on, message, page)
    said = await unproven(proxy, on, marker)
    if said is None:
        return
    if not on:
        raise ProxyError(f"maintenance off did not take: the proxy still answers {said}",
                         host=proxy.name)
    await proxy.set_maintenance(False, message, page)
    raise ProxyError(f"maintenance on did not take: the proxy answered {said}, not 503 with "
                     f"the page{await why_unseen(proxy)}; maintenance was turned off again",
                     host=proxy.name)


async def unproven(proxy: Proxy, on: bool, marker: str, timeout: float = TIMEOUT) -> str | None:
    """Ask ``GET /`` (the app's Host) through the proxy, from its host, until it answers the
    maintenance page (503 with ``marker``, whitespace aside) when ``on``, anything else when
    off: None once it does, else what it answered last."""
    if proxy.node.dry:
        return None
    address, port, _, host_header, tls_name = proxy._ask_request()
    wanted = " ".join(marker.split())
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = await health.get(proxy.node, address, port, "/", host_header=host_header,
                                    timeout=ASK_TIMEOUT, tls_name=tls_name)
            shown = resp.status == 503 and wanted in " ".join(resp.body.split())
            said = f"HTTP {resp.status}" + (" with the maintenance page" if shown else "")
        except (OSError, asyncio.TimeoutError) as exc:
            shown, said = False, f"nothing ({exc or 'timed out'})"
        if shown == on:
            return None
        if time.monotonic() >= deadline:
            return said
        await asyncio.sleep(0.1)


async def page_row(proxy: Proxy) -> list[Finding]:
    """`check`: whether the workers of a proxy that tests the page's file reach it
    (a note when not: `maintenance on` would fail); nothing when no worker is seen."""
    if not proxy.tests_page_file:
        return []
    path = proxy.node.layout.maintenance_page
    user, blocked = await _access(proxy)
    if user is None:
        return []
    item = f"maintenance page {path}"
    # deploy_to and shared/ are closed to others (0750) until `maintenance on` opens them
    # (o+x) and writes the page 0644 (plan.layout.open_page): only a directory above them
    # can keep the workers out.
    if blocked in {str(path), str(path.parent), str(proxy.node.layout.root)}:
        return [(item, True, f"nginx's workers ({user!r}) can reach deploy_to; `maintenance "
                 "on` opens deploy_to and shared/ to them (o+x) for the page")]
    if blocked:
        return [(item, None, f"nginx's workers run as {user!r}, who cannot traverse or read "
                 f"{blocked}: `maintenance on` would not take. Let {user!r} reach "
                 f"{path.parent} (o+x on each directory above it) or move deploy_to")]
    return [(item, True, f"nginx's workers ({user!r}) can reach it")]


async def _access(proxy: Proxy) -> tuple[str | None, str | None]:
    path = proxy.node.layout.maintenance_page
    return workers.parse_access(
        (await proxy.node.run(workers.access(proxy.cfg, path), check=False)).stdout)


async def why_unseen(proxy: Proxy) -> str:
    """Why the proxy's workers may not see the page file (kinds that test it per request):
    the user they run as and the first directory on the way that user cannot traverse."""
    if not proxy.tests_page_file:
        return ""
    path = proxy.node.layout.maintenance_page
    user, blocked = await _access(proxy)
    if user and blocked:
        return (f": nginx's workers run as {user!r}, who cannot traverse or read {blocked}, "
                f"so their test of {path} is false. Let {user!r} reach it (o+x on each "
                "directory above it) or move deploy_to")
    return f" (nginx's workers run as {user!r}, who can reach {path})" if user else ""
