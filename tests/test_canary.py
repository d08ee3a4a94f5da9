"""Canaries under real load, through a real nginx and a real HAProxy: a release that fails
5 % of its requests is caught at the first step and every request goes back to the old
colour, with the harm bounded by the step's share; a good release reaches 100 % with no
failed request and sticky clients never go back to the old colour; a slow release is
caught on latency; a canary killed mid-way is ended by `rollback`."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bluegreen.demo.haproxy import PrivateHAProxy
from bluegreen.demo.nginx import PrivateNginx, free_port
from conftest import BLUEGREEN, SERVER_NAME, Project, get, make_project, with_home
from loadclient import LoadClient

CANARY = {"step": "3s", "min_requests": 40, "max_error_rate": 0.01}


KINDS = ["nginx", "haproxy"]


@pytest.fixture(params=KINDS)
def canary_project(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Project]:
    """A project with a private proxy of each kind, v1 live (it answers in about 10 ms:
    the old colour's latency the judge compares with); `local`, or (a "-ssh" kind) over a
    real sshd, so the judge reads nginx's log and HAProxy's counters through SSH."""
    proxy: PrivateNginx | PrivateHAProxy
    if request.param.startswith("nginx"):
        proxy = PrivateNginx(tmp_path / "nginx", free_port())
    else:
        proxy = PrivateHAProxy(tmp_path / "haproxy", free_port())
    proxy.write_config()
    proxy.start()
    server = request.getfixturevalue("sshd") if request.param.endswith("-ssh") else None
    p = make_project(tmp_path, proxy, server)
    p.write_config(canary=CANARY)
    p.bg("setup")
    p.deploy("1.0.0", mode="delay=0.01")
    yield p
    p.cleanup()
    proxy.stop()


STARTED: list[LoadClient] = []


@pytest.fixture(autouse=True)
def no_client_left() -> Iterator[None]:
    """A test that fails before `stop()` leaves no load client running."""
    yield
    while STARTED:
        client = STARTED.pop()
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.wait()


def load(p: Project, tmp_path: Path, clients: int = 0) -> LoadClient:
    client = LoadClient(tmp_path / "load.json", SERVER_NAME, [f"127.0.0.1:{p.nginx.port}"],
                        clients=clients)
    STARTED.append(client)
    return client


def failures_between(report: dict[str, Any], start: float, end: float) -> list[str]:
    return [f for f in report["failures"] if start <= float(f.split()[0]) <= end]


@pytest.mark.parametrize("canary_project", [*KINDS, "nginx-ssh"],
                         indirect=True)
def test_a_failing_release_is_caught_at_the_first_step(canary_project: Project,
                                                       tmp_path: Path) -> None:
    p = canary_project
    client = load(p, tmp_path)
    time.sleep(1)
    started = time.time()
    out = p.deploy("2.0.0", "--canary", "10,50,100", check=5, mode="delay=0.01 fail=0.05")
    ended = time.time()
    time.sleep(1.5)
    report = client.stop()
    assert "canary aborted at 10% (step 1 of 3)" in out.stderr, out.stderr
    assert "error rate" in out.stderr or "failed requests already" in out.stderr
    # Every request back on the old colour; the new slot left running for inspection.
    a = p.answer()
    assert (a.status, a.colour, a.version) == (200, "blue", "1.0.0")
    st = p.status()
    assert st["live"] == "blue" and st["traffic"] == {"blue": 100, "green": 0}
    assert st["canary"] is None
    assert st["slots"]["green"]["running"] and st["slots"]["green"]["version"] == "2.0.0"
    assert p.history()[0]["event"] == "failed"
    assert "canary aborted" in p.history()[0]["detail"]
    # The harm users saw: only 500s of the new release, only during its 10 % step, and
    # about what 10 % x 5 % of the requests in that window allows; none after the abort.
    during = failures_between(report, started, ended)
    assert all("HTTP 500" in f for f in during), during
    assert failures_between(report, ended, time.time() + 1) == []
    assert len(report["failures"]) == len(during)
    served = report["requests"]
    assert served > 200
    assert 1 <= len(during) <= max(4, 0.1 * 0.05 * served * 2), (len(during), served)


def test_a_good_release_reaches_all_traffic_and_sticky_clients_never_go_back(
        canary_project: Project, tmp_path: Path) -> None:
    p = canary_project
    # Sticky: the new colour's share is of clients (41 here), not of requests; at 40 % of
    # 41 clients it gets its 20 requests within a step even on a slow, busy machine.
    p.write_config(canary={**CANARY, "min_requests": 20})
    client = load(p, tmp_path, clients=41)  # odd: see the plain canary test below
    time.sleep(1)
    out = p.deploy("2.0.0", "--canary", "40,70", "--step", "3s", "--watch", "2s",
                   mode="delay=0.01")
    time.sleep(0.5)
    report = client.stop()
    assert "canary step 1/3 (40% to green): good" in out.stderr, out.stderr
    assert "canary step 2/3 (70% to green): good" in out.stderr
    assert "watching green (2s): good" in out.stderr
    assert report["failures"] == []
    assert (p.answer().colour, p.answer().version) == ("green", "2.0.0")
    st = p.status()
    assert st["traffic"] == {"blue": 0, "green": 100} and st["canary"] is None
    # Each client was served blue, then green, and never blue again.
    assert len(report["clients"]) == 41
    assert all(seq == ["blue", "green"] for seq in report["clients"]), report["clients"]
    assert report["colours"].get("green", 0) > 0


def test_a_slow_release_is_caught_on_latency(canary_project: Project) -> None:
    p = canary_project
    client = load(p, canary_project.dir)
    time.sleep(1)
    out = p.deploy("2.0.0", "--canary", "50", "--step", "3s", check=5, mode="delay=0.06")
    report = client.stop()
    assert "canary aborted at 50% (step 1 of 2)" in out.stderr, out.stderr
    assert "p99" in out.stderr if isinstance(p.nginx, PrivateNginx) else "ms is more than" in \
        out.stderr
    assert report["failures"] == []
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")


def start_canary(p: Project, version: str) -> subprocess.Popen[str]:
    """`deploy VERSION --canary 50 --step 60s` in the background, once its split is in
    effect (what the proxy answers says so)."""
    proc = subprocess.Popen(with_home(p.home, [*BLUEGREEN, "deploy", "--version", version,
                                               "--canary", "50", "--step", "60s"]),
                            cwd=p.dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        if get(p.nginx.port, "/deployment_id").body.strip() in ("blue=50 green=50",
                                                               "canary-green"):
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("the canary never started")


def test_a_canary_killed_midway_is_ended_by_the_next_command(canary_project: Project) -> None:
    p = canary_project
    p.artifact("2.0.0", "delay=0.01")
    # Ctrl-C: every request back on the old colour before the run exits, lock released.
    proc = start_canary(p, "2.0.0")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "canary interrupted" in err, err
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    assert p.status()["canary"] is None and not (p.deploy_to / "lock").exists()
    # SIGKILL: the split stays (status shows it) until the next command ends it.
    for then in ("rollback", "stop"):
        proc = start_canary(p, "2.0.0")
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        st = p.status()
        assert st["traffic"] == {"blue": 50, "green": 50}
        assert st["canary"] == {"new": "green", "percent": 50, "sticky": True}
        p.bg("unlock")
        if then == "rollback":  # only ends the split, back to the old colour
            out = p.bg("rollback")
            assert "rollback ends it" in out.stderr
            events = json.loads(p.bg("history", "--json").stdout)["events"]
            assert events[0]["event"] == "rollback"
        else:  # any command that changes things first undoes the split
            out = p.bg("stop", "green")
            assert "undoing an interrupted canary (50% to green)" in out.stderr, out.stderr
            assert not p.status()["slots"]["green"]["running"]
        a = p.answer()
        assert (a.colour, a.version) == ("blue", "1.0.0")
        st = p.status()
        assert st["traffic"] == {"blue": 100, "green": 0} and st["canary"] is None


def test_promote_with_a_plain_weighted_canary(canary_project: Project, tmp_path: Path) -> None:
    """`promote --canary --no-sticky` of a release started by `deploy --no-promote`: each
    request picks a colour by the weights, so clients do see both (the control for the
    sticky test above)."""
    p = canary_project
    p.deploy("2.0.0", "--no-promote", mode="delay=0.01")
    # (an odd count: HAProxy's round robin alternates, and an even one would give each
    # client the same colour every time)
    client = load(p, tmp_path, clients=41)
    time.sleep(1)
    out = p.bg("promote", "--canary", "50", "--step", "2s", "--no-sticky")
    report = client.stop()
    assert "canary step 1/2 (50% to green): good" in out.stderr, out.stderr
    assert "sticky" not in out.stderr.split("canary step 1/2")[1].splitlines()[0]
    assert (p.answer().colour, p.answer().version) == ("green", "2.0.0")
    assert report["failures"] == []
    assert any(len(seq) > 2 for seq in report["clients"]), report["clients"]


@pytest.mark.parametrize("canary_project", ["nginx"], indirect=True)
def test_each_step_first_proves_the_new_colour_still_healthy(canary_project: Project) -> None:
    """Invariant 6 at every step: a release that dies after its first step (no traffic to
    judge: min_requests 0) is not sent more requests; every request goes back."""
    p = canary_project
    p.write_config(canary={**CANARY, "min_requests": 0})
    out = p.deploy("2.0.0", "--canary", "20,60", "--step", "2s", check=5,
                   mode="exit_after=1")
    assert "canary step 1/3 (20% to green): good" in out.stderr, out.stderr
    assert "canary step 2/3 (60% to green): green no longer answers its health check on " \
        "web1; every request goes to blue again" in out.stderr
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    assert p.status()["canary"] is None
    # `remove` takes every site file it wrote, the canary's included (it was left behind).
    p.bg("remove", "--yes")
    assert not list(p.nginx.sites_available.glob("testapp*"))  # type: ignore[union-attr]


def test_a_canary_without_traffic_says_so_once_and_how_to_go_on(
        canary_project: Project) -> None:
    """No request at all during the step: exit 5 with every request back on the old colour,
    and an error that says once that nothing reached the proxy and how to go on (it read
    "not enough traffic to judge ... (0 of min_requests 40 on green): 0 of the 40 requests
    a verdict needs: ..."); its advice, a promote with a watch, then works."""
    p = canary_project
    out = p.deploy("2.0.0", "--canary", "10,100", "--step", "1s", "--json", check=5,
                   mode="delay=0.01")
    result = json.loads(out.stdout)
    assert (result["ok"], result["exit_code"]) == (False, 5)
    error = result["error"]
    assert "no requests reached the proxy during the step" in error, error
    assert error.count("min_requests") == 1 and error.count("requests") == 2, error
    assert "`bluegreen promote green --watch 60s`" in error
    st = p.status()
    assert st["traffic"] == {"blue": 100, "green": 0} and st["canary"] is None
    assert p.answer().colour == "blue" and st["slots"]["green"]["running"]
    p.bg("promote", "green", "--watch", "1s")
    assert (p.answer().colour, p.answer().version) == ("green", "2.0.0")
