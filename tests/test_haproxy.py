"""proxy.kind = "haproxy" end to end, with a real HAProxy (own config, runtime socket and
pid file on a loopback port), `local` and over a real sshd: the switch goes through the
runtime API, so no HAProxy process is replaced and open connections stay open."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
from contextlib import ExitStack

from websockets.exceptions import ConnectionClosed

from bluegreen.demo.haproxy import PrivateHAProxy
from conftest import SERVER_NAME, Project, get, live_slot
from test_websockets import ask, ws


def hx(p: Project) -> PrivateHAProxy:
    assert isinstance(p.nginx, PrivateHAProxy)
    return p.nginx


def map_colour(p: Project) -> str:
    lines = (hx(p).conf_d / "testapp.map").read_text().splitlines()
    return next(line.split()[1] for line in lines if line.startswith("live "))


def test_setup_deploy_promote_rollback_without_reload(hx_project: Project) -> None:
    p = hx_project
    out = p.bg("setup")
    assert "live colour is blue" in out.stderr
    assert map_colour(p) == "blue"
    assert get(p.nginx.port, "/deployment_id").body == "blue"
    assert get(p.nginx.port, "/deployment_id").colour == "blue"
    assert p.answer().status == 503  # nothing runs yet
    pids = hx(p).pids()
    assert pids
    p.bg("setup")  # unchanged config: no reload
    assert hx(p).pids() == pids

    p.deploy("1.0.0")
    a = p.answer()
    assert (a.status, a.colour, a.version) == (200, "blue", "1.0.0")
    # The first deploy reloads once: blue's backend no longer says that no release is
    # deployed yet. From here on, no switch reloads.
    pids = hx(p).pids()
    p.deploy("2.0.0")
    a = p.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")
    assert map_colour(p) == "green"
    st = p.status()
    assert st["live"] == "green" and st["proxy_answer"] == "green"
    assert st["slots"]["blue"]["healthy"] and st["slots"]["green"]["healthy"]
    p.bg("rollback")
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    out = p.bg("promote", "green", "--json")
    assert p.answer().colour == "green"
    # The map file and the runtime API's `set map` go with the verify (3 round trips per
    # host, as with nginx: tests/test_round_trips.py; this host is local or SSH).
    assert json.loads(out.stdout)["hosts"][0]["round_trips"]["total"] == 3, out.stdout
    p.deploy("3.0.0")  # replaces blue's 1.0.0 (drained, stopped), then switches to it
    assert (p.answer().colour, p.answer().version) == ("blue", "3.0.0")
    # Every switch went through the runtime API: the same HAProxy processes throughout.
    assert hx(p).pids() == pids
    history = p.history()
    assert [e["event"] for e in history[:4]] == ["promote", "deploy", "promote", "rollback"]


def test_a_failed_or_staged_deploy_leaves_haproxys_live_side_as_it_was(
        hx_project: Project) -> None:
    """Invariants 1 and 2 on HAProxy: a deploy whose release exits at start, and a
    `deploy --no-promote`, leave the live slot (process, state, env, files) and HAProxy
    (map file, map in memory, processes, the live backend's servers) exactly as they were."""
    p = hx_project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    before = live_slot(p)
    assert before.colour == "green" and before.proxy_workers and before.proxy_state
    out = p.deploy("3.0.0", mode="exit", check=5)
    assert "the process exited" in out.stderr and "exiting at start on purpose" in out.stderr
    assert live_slot(p) == before
    assert (p.answer().colour, p.answer().version) == ("green", "2.0.0")
    p.deploy("4.0.0", "--no-promote")
    assert live_slot(p) == before
    assert (p.answer().colour, p.answer().version) == ("green", "2.0.0")
    assert p.status()["slots"]["blue"]["version"] == "4.0.0"


def test_the_live_slot_snapshot_sees_a_change_of_haproxys_live_side(
        local_project_hx: Project) -> None:
    """`live_slot` on HAProxy is not vacuous: the live server put in maintenance or
    reweighted, the map changed in memory only, or a reload, each makes it differ."""
    p = local_project_hx
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    before = live_slot(p)
    time.sleep(1.1)  # the seconds since a server's last change are not part of it
    assert live_slot(p) == before
    server = "bluegreen_testapp_green/web1"
    assert hx(p).api(f"set server {server} state maint").strip() == ""
    assert live_slot(p) != before
    hx(p).api(f"set server {server} state ready")  # back, with its check counters reset
    before = live_slot(p)
    hx(p).api(f"set weight {server} 50")
    assert live_slot(p) != before
    hx(p).api(f"set weight {server} 1")
    assert live_slot(p) == before
    map_file = hx(p).conf_d / "testapp.map"
    hx(p).api(f"set map {map_file} live blue")  # the file still says green
    changed = live_slot(p)
    assert changed.link == before.link and changed != before
    hx(p).api(f"set map {map_file} live green")
    assert live_slot(p) == before
    subprocess.run(hx(p).reload_command, shell=True, check=True, timeout=30)
    deadline = time.monotonic() + 10
    while hx(p).pids() == list(before.proxy_workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_slot(p) != before


def test_keep_alive_connection_moves_to_the_new_colour_without_being_closed(
        hx_project: Project) -> None:
    p = hx_project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    conn = http.client.HTTPConnection("127.0.0.1", p.nginx.port, timeout=5)
    conn.request("GET", "/", headers={"Host": SERVER_NAME})
    first = conn.getresponse()
    first.read()
    assert first.getheader("X-Deployment-Id") == "blue"
    local_port = conn.sock.getsockname()[1]
    p.bg("promote")
    # The next request on the same client connection is routed by the new map value.
    conn.request("GET", "/", headers={"Host": SERVER_NAME})
    second = conn.getresponse()
    second.read()
    assert second.getheader("X-Deployment-Id") == "green"
    assert conn.sock.getsockname()[1] == local_port  # the same TCP connection
    conn.close()


def test_live_colour_survives_a_haproxy_restart(local_project_hx: Project) -> None:
    p = local_project_hx
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    assert p.answer().colour == "green"
    hx(p).stop()
    assert get(p.nginx.port, "/deployment_id").status == 0  # down
    hx(p).start()
    assert get(p.nginx.port, "/deployment_id").body == "green"
    assert p.answer().version == "2.0.0"


def test_runtime_api_unreachable_switches_nothing(local_project_hx: Project) -> None:
    p = local_project_hx
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    p.extra_proxy = {"socket": str(hx(p).prefix / "no-such.sock")}
    p.write_config()
    before = live_slot(p)
    out = p.bg("promote", check=1)
    assert "cannot reach HAProxy's runtime API" in out.stderr
    assert "nothing was switched" in out.stderr
    assert map_colour(p) == "blue" and live_slot(p) == before
    assert p.answer().colour == "blue"


def test_haproxy_dying_at_the_switch_puts_the_map_file_back(local_project_hx: Project) -> None:
    """HAProxy dies after phase 1 (here: killed by the pre_promote hook, which runs right
    before the switch): the runtime API call fails, the map file is put back, so a
    restarted HAProxy serves the colour that was live."""
    p = local_project_hx
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    pids = " ".join(str(pid) for pid in hx(p).pids())
    assert pids
    p.write_config(hooks={"pre_promote": f"kill -9 {pids}"})
    out = p.bg("promote", check=1)
    assert "cannot reach HAProxy's runtime API" in out.stderr
    assert "put back to blue" in out.stderr
    assert map_colour(p) == "blue"
    hx(p).start()
    assert p.answer().colour == "blue"


def test_interrupted_switch_is_finished(local_project_hx: Project) -> None:
    """A run killed after writing the map file but before the runtime API call: the next
    command finds the file on green while HAProxy serves blue, and finishes the switch."""
    p = local_project_hx
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    (hx(p).conf_d / "testapp.map").write_text("live green\n")
    assert p.answer().colour == "blue"
    out = p.bg("promote", "green")
    assert "finishing an interrupted switch" in out.stderr
    assert p.answer().colour == "green"


def test_check_reports_the_runtime_api(local_project_hx: Project) -> None:
    p = local_project_hx
    p.artifact("1.0.0")
    out = p.bg("check")
    installed = subprocess.run(["haproxy", "-v"], capture_output=True, text=True).stdout
    version = re.search(r"version (\d+\.\d+\.\d+)", installed)
    assert version and "runtime API" in out.stdout and f"HAProxy {version.group(1)}" in out.stdout
    p.bg("setup")
    out = p.bg("check")
    assert "live is blue" in out.stdout


def test_websockets_stay_at_promote_and_are_drained(local_project_hx: Project) -> None:
    p = local_project_hx
    p.extra_run = {"drain_timeout": 2}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    with ExitStack() as stack:
        clients = [ws(p, stack) for _ in range(4)]
        assert [ask(c, "a") for c in clients] == ["a from 1.0.0 (blue)"] * 4
        p.bg("promote")
        assert [ask(c, "b") for c in clients] == ["b from 1.0.0 (blue)"] * 4
        assert ask(ws(p, stack), "c") == "c from 2.0.0 (green)"
        st = p.status()
        # HAProxy's own count: the 4 tunnels on blue, the 1 on green.
        assert (st["slots"]["blue"]["connections"], st["slots"]["green"]["connections"]) == (4, 1)
        started = time.monotonic()
        out = p.deploy("3.0.0")
        assert "blue: 4 connection(s) still open after drain_timeout=2s" in out.stderr
        assert time.monotonic() - started >= 2
        closed = 0
        for c in clients:
            try:
                ask(c, "d")
            except (ConnectionClosed, TimeoutError, OSError):
                closed += 1
        assert closed == 4


def test_drain_does_not_wait_for_haproxys_idle_connections(local_project_hx: Project) -> None:
    """After a switch HAProxy keeps idle keep-alive connections to the old slot for reuse;
    they are not clients, so the drain does not wait for them."""
    p = local_project_hx
    p.extra_run = {"drain_timeout": 20}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    for _ in range(20):
        assert p.answer().colour == "blue"
    p.deploy("2.0.0")
    started = time.monotonic()
    p.deploy("3.0.0")
    assert time.monotonic() - started < 15
    assert p.answer().version == "3.0.0"


def test_drain_waits_for_haproxy_processes_left_by_a_reload(local_project_hx: Project) -> None:
    """A websocket opened before HAProxy was reloaded (say, by an admin) lives on in the old
    process, outside the current process's counts: the drain sees that process and waits
    for it (here until drain_timeout), instead of cutting the websocket at once."""
    p = local_project_hx
    p.extra_run = {"drain_timeout": 2}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    with ExitStack() as stack:
        old = ws(p, stack)
        assert ask(old, "a") == "a from 1.0.0 (blue)"
        subprocess.run(["sh", "-c", hx(p).reload_command], check=True)
        p.bg("promote")
        assert ask(old, "b") == "b from 1.0.0 (blue)"
        assert p.status()["slots"]["blue"]["connections"] == 0  # not in the new process
        started = time.monotonic()
        out = p.deploy("3.0.0")
        assert "1 old proxy worker(s) still running after drain_timeout=2s" in out.stderr
        assert time.monotonic() - started >= 2
        assert p.answer().version == "3.0.0"
