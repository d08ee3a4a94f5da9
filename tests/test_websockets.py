"""Websockets through nginx across a switch: open connections stay on the colour they were
opened on; a deploy that needs that slot drains them (or cuts them at drain_timeout)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import ExitStack

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import BLUEGREEN, SERVER_NAME, Project


def ws(p: Project, stack: ExitStack) -> ClientConnection:
    """A websocket to /ws through the project's nginx (with its server name as Host)."""
    sock = socket.create_connection(("127.0.0.1", p.nginx.port), timeout=5)
    return stack.enter_context(connect(f"ws://{SERVER_NAME}/ws", sock=sock, open_timeout=5))


def ask(conn: ClientConnection, message: str) -> str:
    conn.send(message)
    return str(conn.recv(timeout=5))


def test_websockets_stay_on_their_colour_and_are_drained(local_project: Project) -> None:
    with ExitStack() as stack:
        stay_and_drain(local_project, stack)


def stay_and_drain(p: Project, stack: ExitStack) -> None:
    p.extra_run = {"drain_timeout": 2}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    clients = [ws(p, stack) for _ in range(5)]
    assert [ask(c, "a") for c in clients] == ["a from 1.0.0 (blue)"] * 5
    p.bg("promote")
    # After the switch: 0 closures, the open connections still talk to blue...
    assert [ask(c, "b") for c in clients] == ["b from 1.0.0 (blue)"] * 5
    # ... while new ones go to green.
    fresh = ws(p, stack)
    assert ask(fresh, "c") == "c from 2.0.0 (green)"
    st = p.status()
    assert st["slots"]["blue"]["connections"] == 5
    # The next deploy needs blue: it drains for drain_timeout, then says how many it cut.
    out = p.deploy("3.0.0")
    assert "blue: 5 connection(s) still open" in out.stderr
    assert "after drain_timeout=2s; stopping anyway" in out.stderr
    closed = 0
    for c in clients:
        try:
            ask(c, "d")
        except (ConnectionClosed, TimeoutError, OSError):
            closed += 1
    assert closed == 5
    assert ask(fresh, "e") == "e from 2.0.0 (green)"  # green's connection never noticed


def test_drain_ends_as_soon_as_connections_close(local_project: Project) -> None:
    with ExitStack() as stack:
        drain_ends_early(local_project, stack)


def drain_ends_early(p: Project, stack: ExitStack) -> None:
    p.extra_run = {"drain_timeout": 30}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    clients = [ws(p, stack) for _ in range(3)]
    assert ask(clients[0], "x") == "x from 2.0.0 (green)"
    p.bg("promote", "blue")
    p.artifact("3.0.0")
    started = time.monotonic()
    deploy = subprocess.Popen([*BLUEGREEN, "deploy", "--version", "3.0.0"], cwd=p.dir,
                              env={**os.environ, "HOME": str(p.home)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert deploy.stderr is not None
    seen = ""
    while "draining green" not in seen:  # the drain has begun, with three websockets open
        line = deploy.stderr.readline()
        assert line, seen
        seen += line
    time.sleep(0.5)
    assert deploy.poll() is None  # still draining them
    for c in clients:
        c.close()
    _, err = deploy.communicate(timeout=60)
    err = seen + err
    assert deploy.returncode == 0, err
    assert time.monotonic() - started < 15
    assert "still open after drain_timeout" not in err
    assert p.answer().version == "3.0.0"
