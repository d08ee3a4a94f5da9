"""Many hosts: three real hosts in network namespaces, each with its own sshd and nginx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

from cluster import Cluster, NsHost
from conftest import SERVER_NAME, Answer, run_cli, sample_artifact, to_toml


class Fleet:
    """A project deploying to every host of a cluster."""

    def __init__(self, cluster: Cluster, dir: Path, balanced: bool = False,
                 kind: str = "nginx", balancers: int = 1) -> None:
        self.cluster = cluster
        self.kind = kind
        # balanced: the first host(s) are load balancers in front of the others.
        count = balancers if balanced else 0
        self.balancers = cluster.hosts[:count]
        self.apps = cluster.hosts[count:]
        self.dir = dir
        self.home = dir / "home"
        self.home.mkdir()
        self.hooks: dict[str, str] = {}
        self.extra: dict[str, Any] = {}
        self.write_config()

    def write_config(self) -> None:
        data: dict[str, Any] = {
            "app": "testapp",
            "release": {"version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz"},
            "run": {"command": "exec python3 app.py", "health_timeout": 10, "stop_timeout": 5,
                    "drain_timeout": 2},
            "slots": {"blue": 4000, "green": 5000},
            "proxy": {"server_name": SERVER_NAME, "listen": "80",
                      **(self.cluster.nginx_commands() if self.kind == "nginx" else
                         {**self.cluster.haproxy_settings(), "listen": "80"})},
            "hosts": [self.entry(h) for h in self.apps],
        }
        if self.balancers:
            data["load_balancers"] = [self.entry(h) for h in self.balancers]
            data["slots"]["bind"] = "{private_address}"
        if self.hooks:
            data["hooks"] = self.hooks
        data.update(self.extra)
        (self.dir / "bluegreen.toml").write_text(to_toml(data))

    def entry(self, h: NsHost) -> dict[str, Any]:
        return {"address": f"root@{h.address}", "name": h.name, "deploy_to": "/srv/app",
                "identity_file": str(self.cluster.client_key),
                "known_hosts": str(self.cluster.known_hosts)}

    def bg(self, *args: str, check: int | bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(self.dir, self.home, args, check=check, timeout=180)

    def deploy(self, version: str, *args: str, check: int | bool = True,
               mode: str | None = None) -> subprocess.CompletedProcess[str]:
        sample_artifact(self.dir, version, mode)
        return self.bg("deploy", "--version", version, *args, check=check)

    def answers(self) -> list[tuple[str | None, str | None]]:
        out = []
        for h in self.cluster.hosts:
            a: Answer = get_from(h)
            out.append((a.colour, a.version))
        return out

    def links(self) -> list[str]:
        return [os.readlink(h.dir / "srv" / "nginx" / "sites-enabled" / "testapp")
                .rsplit("-", 1)[1] for h in self.cluster.hosts]


def get_from(host: NsHost) -> Answer:
    import urllib.request

    req = urllib.request.Request(f"http://{host.address}/", headers={"Host": SERVER_NAME})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return Answer(resp.status, resp.read().decode(), resp.headers.get("X-Deployment-Id"),
                          resp.headers.get("X-App-Version"))
    except OSError as exc:
        return Answer(0, str(exc), None, None)


@contextmanager
def running_fleet(tmp_path: Path, count: int, **kw: Any) -> Iterator[Fleet]:
    """``count`` namespaced hosts, a project deploying to them (``kw``: Fleet's options),
    set up; torn down at the end."""
    cluster = Cluster(tmp_path / "cluster", count)
    (tmp_path / "cluster").mkdir()
    try:
        cluster.up()
        (tmp_path / "project").mkdir()
        fleet = Fleet(cluster, tmp_path / "project", **kw)
        fleet.bg("setup")
        yield fleet
    finally:
        cluster.down()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    cluster = Cluster(tmp_path / "cluster", 3)
    (tmp_path / "cluster").mkdir()
    try:
        cluster.up()
        project = tmp_path / "project"
        project.mkdir()
        f = Fleet(cluster, project)
        f.bg("setup")
        yield f
    finally:
        cluster.down()


def test_all_hosts_flip_together(fleet: Fleet, tmp_path: Path) -> None:
    from loadclient import LoadClient

    fleet.deploy("1.0.0")
    assert fleet.answers() == [("blue", "1.0.0")] * 3
    # A client of its own on every host's proxy through all of it: 0 failed requests.
    client = LoadClient(tmp_path / "load.json", SERVER_NAME,
                        [f"{h.address}:80" for h in fleet.cluster.hosts])
    try:
        out = fleet.deploy("2.0.0")
        assert fleet.answers() == [("green", "2.0.0")] * 3
        for h in ("h1", "h2", "h3"):
            assert f"[{h}] live is green (2.0.0-" in out.stderr
        data = json.loads(fleet.bg("status", "--json").stdout)
        assert data["split_brain"] is False
        assert [h["live"] for h in data["hosts"]] == ["green"] * 3
        assert all(h["slots"]["blue"]["healthy"] for h in data["hosts"])
        fleet.bg("rollback")
        assert fleet.answers() == [("blue", "1.0.0")] * 3
        fleet.bg("promote", "green")
        assert "stopping blue" in fleet.deploy("3.0.0").stderr  # drained, then stopped
        assert fleet.answers() == [("blue", "3.0.0")] * 3
    finally:
        report = client.stop()
    assert report["failures"] == [] and report["requests"] > 100, report
    assert set(report["versions"]) == {"1.0.0", "2.0.0", "3.0.0"}
    events = json.loads(fleet.bg("history", "--json").stdout)["events"]
    assert sorted(e["host"] for e in events if e["event"] == "rollback") == ["h1", "h2", "h3"]


def test_canary_on_every_host_judged_as_one(fleet: Fleet, tmp_path: Path) -> None:
    """Three hosts, each with its nginx: a canary's split goes to every proxy, the judge
    sums their logs (read over SSH); a failing release goes back everywhere, a good one
    reaches every host."""
    from loadclient import LoadClient

    fleet.extra = {"canary": {"min_requests": 30, "step": "2s"}}
    fleet.write_config()
    fleet.deploy("1.0.0")
    targets = [f"{h.address}:80" for h in fleet.cluster.hosts]
    client = LoadClient(tmp_path / "load.json", SERVER_NAME, targets)
    try:
        out = fleet.deploy("2.0.0", "--canary", "20,60", check=5, mode="fail=0.05")
    finally:
        report = client.stop()
    assert "canary aborted at 20%" in out.stderr, out.stderr
    assert fleet.answers() == [("blue", "1.0.0")] * 3
    # Only 500s of the new release, about what 20 % x 5 % of the requests served during
    # that deploy allows (the split lasts until the first read of the logs that shows one).
    assert all("HTTP 500" in f for f in report["failures"]), report["failures"]
    served = report["requests"]
    assert 1 <= len(report["failures"]) <= max(4, 0.2 * 0.05 * served * 2), (
        len(report["failures"]), served)
    client = LoadClient(tmp_path / "load2.json", SERVER_NAME, targets)
    try:
        out = fleet.deploy("3.0.0", "--canary", "20,60")
        assert "canary step 2/3 (60% to green): good" in out.stderr, out.stderr
        assert fleet.answers() == [("green", "3.0.0")] * 3
    finally:
        report = client.stop()
    assert report["failures"] == []
    assert set(report["versions"]) == {"1.0.0", "3.0.0"}


def test_foreign_listener_on_one_host_switches_nothing(fleet: Fleet) -> None:
    fleet.deploy("1.0.0")
    h2 = fleet.cluster.hosts[1]
    squatter = subprocess.Popen(
        ["nsenter", "-t", str(h2.init_pid()), "-a", "python3", "-m", "http.server", "--bind",
         "127.0.0.1", "5000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if "5000" in h2.exec("ss", "-Htln").stdout:
                break
            import time

            time.sleep(0.05)
        out = fleet.deploy("2.0.0", check=5)
        assert "[h2]" in out.stderr and "not the slot's own" in out.stderr
        assert fleet.answers() == [("blue", "1.0.0")] * 3
        assert fleet.links() == ["blue"] * 3
    finally:
        squatter.kill()
        squatter.wait()


def test_one_nginx_rejecting_the_new_link_switches_nothing(fleet: Fleet) -> None:
    fleet.deploy("1.0.0")
    fleet.deploy("2.0.0", "--no-promote")
    # Only with the green site linked does h3's nginx see a duplicate upstream.
    h3 = fleet.cluster.hosts[2]
    (h3.dir / "srv" / "nginx" / "sites-enabled" / "zz-conflict").write_text(
        "upstream bluegreen_testapp_green { server 127.0.0.1:1; }\n")
    out = fleet.bg("promote", check=1)
    assert "[h3]" in out.stderr and "rejected the site" in out.stderr
    assert fleet.answers() == [("blue", "1.0.0")] * 3
    assert fleet.links() == ["blue"] * 3


def test_sshd_killed_between_phases_switches_the_others_back(fleet: Fleet) -> None:
    fleet.deploy("1.0.0")
    fleet.deploy("2.0.0", "--no-promote")
    h2 = fleet.cluster.hosts[1]
    # The pre_promote hook runs after phase 1 (all ready) and before phase 2 (switch).
    fleet.hooks = {"pre_promote": f"{sys.executable} -c 'import cluster_kill' {h2.ns}"}
    fleet.write_config()
    (fleet.dir / "cluster_kill.py").write_text(
        "import os, signal, subprocess, sys\n"
        "for pid in subprocess.run(['ip', 'netns', 'pids', sys.argv[1]], capture_output=True,"
        " text=True).stdout.split():\n"
        "    try:\n"
        "        if open(f'/proc/{pid}/comm').read().strip() == 'sshd':\n"
        "            os.kill(int(pid), signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n")
    out = fleet.bg("promote", check=1)
    assert "[h2]" in out.stderr and "step 'switch and reload'" in out.stderr
    assert "switched back" in out.stderr
    assert fleet.answers() == [("blue", "1.0.0")] * 3
    assert fleet.links() == ["blue"] * 3


def test_split_brain_is_shown_and_deploy_refused(fleet: Fleet) -> None:
    fleet.deploy("1.0.0")
    fleet.deploy("2.0.0", "--no-promote")
    fleet.bg("promote", "green", "--host", "h1")
    assert fleet.answers() == [("green", "2.0.0"), ("blue", "1.0.0"), ("blue", "1.0.0")]
    data = json.loads(fleet.bg("status", "--json").stdout)
    assert data["split_brain"] is True
    assert "h1 is on green" in data["problems"][0]
    assert "split brain" in fleet.bg("status").stdout
    out = fleet.deploy("3.0.0", check=1)
    assert "split brain" in out.stderr and "bluegreen promote" in out.stderr
    out = fleet.bg("promote", check=1)  # which colour? refused, say it
    assert "split brain" in out.stderr
    # What a deploy of 2.0.0 killed while it switched the hosts leaves: deploying that same
    # release (the same artifact: a rebuild would be another release) finishes the switch.
    out = fleet.bg("deploy", "--version", "2.0.0")
    assert "finishing the switch of a deploy that was interrupted" in out.stderr
    assert fleet.answers() == [("green", "2.0.0")] * 3
    fleet.deploy("3.0.0")
    assert fleet.answers() == [("blue", "3.0.0")] * 3


def test_promote_refuses_a_colour_holding_different_releases(tmp_path: Path) -> None:
    """`deploy 2.0.0 --host h1 --no-promote`, then `deploy 2.1.0 --host h2 --no-promote`:
    green holds another release on each host, and a switch to it would serve both at once.
    `promote` (with or without the colour) is refused, naming each host's release, and
    nothing moves; once every host holds one release, `promote` switches them all."""
    with running_fleet(tmp_path, 2) as fleet:
        fleet.deploy("1.0.0")
        fleet.deploy("2.0.0", "--host", "h1", "--no-promote")
        fleet.deploy("2.1.0", "--host", "h2", "--no-promote")
        hosts = json.loads(fleet.bg("status", "--json").stdout)["hosts"]
        staged = [h["slots"]["green"]["release"] for h in hosts]
        assert [r.split("-")[0] for r in staged] == ["2.0.0", "2.1.0"]
        for args in (["promote"], ["promote", "green"]):
            result = json.loads(fleet.bg(*args, "--json", check=1).stdout)
            assert result["ok"] is False and result["exit_code"] == 1, result
            assert all(r in result["error"] for r in staged), result
            assert fleet.answers() == [("blue", "1.0.0")] * 2
            assert fleet.links() == ["blue"] * 2
        # The same artifact (a rebuild would be another release) on h1 too: one release.
        fleet.bg("deploy", "--version", "2.1.0", "--host", "h1", "--no-promote")
        fleet.bg("promote")
        assert fleet.answers() == [("green", "2.1.0")] * 2


def test_boot_limit(fleet: Fleet) -> None:
    """boot_limit = 1: the hosts start their slot one after the other, each once the one
    before is healthy; judged by when each host's new process started (/proc), not by the
    log."""
    from datetime import datetime

    fleet.extra = {"deploy": {"boot_limit": 1}, "run": {
        "command": "sleep 0.5; exec python3 app.py", "health_timeout": 10, "stop_timeout": 5,
        "drain_timeout": 2}}
    fleet.write_config()
    out = fleet.deploy("1.0.0")
    assert "waiting for a boot slot" in out.stderr
    assert fleet.answers() == [("blue", "1.0.0")] * 3
    starts = sorted(datetime.fromisoformat(json.loads(
        (h.dir / "srv" / "app" / "slots" / "blue" / "state.json").read_text())["started"])
        for h in fleet.cluster.hosts)
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
    # Each start waited for the previous slot's 0.5 s boot and health check.
    assert all(gap >= 0.5 for gap in gaps), gaps


def test_load_balancer_topology(tmp_path: Path) -> None:
    """h1 balances h2, h3, h4: its upstream lists every app host's slot for the live colour."""
    cluster = Cluster(tmp_path / "cluster", 4)
    (tmp_path / "cluster").mkdir()
    try:
        cluster.up()
        (tmp_path / "project").mkdir()
        fleet = Fleet(cluster, tmp_path / "project", balanced=True)
        fleet.bg("setup")
        lb = cluster.hosts[0]
        site = (lb.dir / "srv" / "nginx" / "sites-available" / "testapp-green").read_text()
        for h in cluster.hosts[1:]:
            assert f"server {h.address}:5000;" in site
        for h in cluster.hosts[1:]:  # app hosts run no proxy of their own
            assert not (h.dir / "srv" / "nginx" / "sites-enabled" / "testapp").exists()
        fleet.deploy("1.0.0")
        fleet.deploy("2.0.0")
        seen = {(a.colour, a.version, a.body) for a in (get_from(lb) for _ in range(30))}
        assert {(c, v) for c, v, _ in seen} == {("green", "2.0.0")}
        served_by = set()
        for _ in range(30):
            import urllib.request

            req = urllib.request.Request(f"http://{lb.address}/", headers={"Host": SERVER_NAME})
            with urllib.request.urlopen(req, timeout=5) as resp:
                served_by.add(resp.headers["X-App-Host"])
        assert served_by == {"h2", "h3", "h4"}
        data = json.loads(fleet.bg("status", "--json").stdout)
        assert data["load_balancers"] == [{"name": "h1", "host": "h1", "reachable": True,
                                           "live": "green", "proxy_answer": "green",
                                           "traffic": {"blue": 0, "green": 100},
                                           "canary": None}]
        assert [h["live"] for h in data["hosts"]] == ["green"] * 3
        assert all(h["slots"]["blue"]["healthy"] for h in data["hosts"])
        fleet.bg("rollback")
        assert {get_from(lb).version for _ in range(10)} == {"1.0.0"}
        out = fleet.bg("check")
        assert "FAIL" not in out.stdout
    finally:
        cluster.down()


def test_load_balancer_topology_with_haproxy(tmp_path: Path) -> None:
    """h1 runs HAProxy in front of h2 and h3: one backend per colour lists both app hosts;
    promote and rollback go through the runtime API over SSH (no HAProxy reload); a
    deploy drains each app host by HAProxy's own session count."""
    cluster = Cluster(tmp_path / "cluster", 3)
    (tmp_path / "cluster").mkdir()
    try:
        cluster.up()
        (tmp_path / "project").mkdir()
        fleet = Fleet(cluster, tmp_path / "project", balanced=True, kind="haproxy")
        fleet.bg("setup")
        lb = cluster.hosts[0]
        config = (lb.dir / "srv" / "haproxy" / "conf.d" / "testapp.cfg").read_text()
        for h in cluster.hosts[1:]:
            assert f"server {h.name} {h.address}:5000" in config
        for h in cluster.hosts[1:]:  # app hosts run no proxy of their own
            assert not (h.dir / "srv" / "haproxy" / "conf.d" / "testapp.cfg").exists()
        fleet.deploy("1.0.0")
        fleet.deploy("2.0.0")
        pids = lb.exec("pgrep", "-f", "haproxy -f /srv/haproxy").stdout.split()
        assert pids
        served_by = set()
        for _ in range(20):
            import urllib.request

            req = urllib.request.Request(f"http://{lb.address}/", headers={"Host": SERVER_NAME})
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert (resp.headers["X-Deployment-Id"], resp.headers["X-App-Version"]) == (
                    "green", "2.0.0")
                served_by.add(resp.headers["X-App-Host"])
        assert served_by == {"h2", "h3"}
        data = json.loads(fleet.bg("status", "--json").stdout)
        assert data["load_balancers"] == [{"name": "h1", "host": "h1", "reachable": True,
                                           "live": "green", "proxy_answer": "green",
                                           "traffic": {"blue": 0, "green": 100},
                                           "canary": None}]
        fleet.bg("rollback")
        assert {get_from(lb).version for _ in range(10)} == {"1.0.0"}
        # A canary through the balancer's runtime API over SSH: the weights of both app
        # hosts' servers, then the full switch (no traffic to judge: min_requests = 0).
        fleet.extra = {"canary": {"min_requests": 0}}
        fleet.write_config()
        out = fleet.deploy("3.0.0", "--canary", "50", "--step", "1s")  # replaces 2.0.0
        assert "canary step 1/2 (50% to green): good" in out.stderr, out.stderr
        assert {get_from(lb).version for _ in range(10)} == {"3.0.0"}
        assert lb.exec("pgrep", "-f", "haproxy -f /srv/haproxy").stdout.split() == pids
        out = fleet.bg("check")
        assert "FAIL" not in out.stdout and "runtime API" in out.stdout
    finally:
        cluster.down()


def test_haproxy_on_every_host_all_or_nothing(tmp_path: Path) -> None:
    """Each of three hosts runs its own HAProxy: they flip together through their runtime
    APIs over SSH; with one HAProxy down, nothing is switched anywhere."""
    cluster = Cluster(tmp_path / "cluster", 3)
    (tmp_path / "cluster").mkdir()
    try:
        cluster.up()
        (tmp_path / "project").mkdir()
        fleet = Fleet(cluster, tmp_path / "project", kind="haproxy")
        fleet.bg("setup")
        fleet.deploy("1.0.0")
        fleet.deploy("2.0.0")
        assert fleet.answers() == [("green", "2.0.0")] * 3
        h2 = cluster.hosts[1]
        h2.exec("sh", "-c", "kill -9 $(pgrep -x haproxy)")
        out = fleet.bg("promote", "blue", check=1)
        # Found before anything changes: h2's proxy does not answer at all.
        assert "[h2] the proxy does not answer on /deployment_id" in out.stderr
        assert "is haproxy running?" in out.stderr
        assert [fleet.answers()[i] for i in (0, 2)] == [("green", "2.0.0")] * 2
        for h in cluster.hosts:
            map_file = h.dir / "srv" / "haproxy" / "conf.d" / "testapp.map"
            assert map_file.read_text().splitlines()[-1] == "live green"
    finally:
        cluster.down()


class Load:
    """An independent client in a thread: keep-alive-free GETs through the given balancers,
    counting failures and which releases answered."""

    def __init__(self, hosts: list[NsHost]) -> None:
        import threading

        self.hosts = hosts
        self.failures: list[str] = []
        self.versions: set[str | None] = set()
        self.requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for h in self.hosts:
                a = get_from(h)
                self.requests += 1
                if a.status != 200:
                    self.failures.append(f"{h.name}: {a.status} {a.body[:80]}")
                self.versions.add(a.version)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_host_selection_behind_balancers_and_balancers_that_disagree(tmp_path: Path) -> None:
    """h1, h2 balance h3, h4. A switch limited by --host would send the balancers' traffic
    to h4's slot, which nobody checked: refused. Balancers on different colours are put
    back on one by `promote COLOUR`."""
    with running_fleet(tmp_path, 4, balanced=True, balancers=2) as fleet:
        lb1, lb2 = fleet.cluster.hosts[:2]
        fleet.deploy("1.0.0")
        load = Load([lb1, lb2])
        try:
            for args in (["deploy", "--version", "2.0.0", "--host", "h3"],
                         ["promote", "--host", "h3"], ["rollback", "--host", "h3"]):
                if args[0] == "deploy":
                    out = fleet.deploy("2.0.0", "--host", "h3", check=2)
                else:
                    out = fleet.bg(*args, check=2)
                assert "--host with [[load_balancers]]" in out.stderr and "h4" in out.stderr
            fleet.deploy("2.0.0", "--host", "h3", "--no-promote")  # staging one host is fine
            out = fleet.bg("promote", check=1)  # checks every app host: h4's green is empty
            assert "[h4] green is not healthy" in out.stderr and "nothing was switched" in out.stderr
        finally:
            load.stop()
        assert load.requests > 20 and load.failures == [], load.failures
        assert load.versions == {"1.0.0"}  # never the release that was only staged

        # A balancer put on green by hand: the balancers disagree.
        nginx = fleet.cluster.nginx_commands()
        lb2.exec("ln", "-sfn", f"{nginx['sites_available']}/testapp-green",
                 f"{nginx['sites_enabled']}/testapp")
        lb2.exec("sh", "-c", nginx["reload"])
        data = json.loads(fleet.bg("status", "--json").stdout)
        assert data["split_brain"] is True
        assert "promote blue" in " ".join(data["problems"])
        out = fleet.deploy("3.0.0", check=1)
        assert "split brain" in out.stderr and "`bluegreen promote blue`" in out.stderr
        out = fleet.bg("promote", "blue")
        assert "[h2] switching green -> blue" in out.stderr
        data = json.loads(fleet.bg("status", "--json").stdout)
        assert data["split_brain"] is False
        assert [lb["live"] for lb in data["load_balancers"]] == ["blue", "blue"]
        assert {get_from(lb).version for lb in (lb1, lb2) for _ in range(5)} == {"1.0.0"}


def test_a_host_that_fails_to_start_shows_its_own_output(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", 1, boot_script="echo 'disk on fire' >&2 && false",
                      ssh_timeout=2)
    (tmp_path / "cluster").mkdir()
    try:
        with pytest.raises(TimeoutError, match="(?s)did not come up.*disk on fire"):
            cluster.up()
    finally:
        cluster.down()


def test_status_with_an_unreachable_balancer(tmp_path: Path) -> None:
    with running_fleet(tmp_path, 3, balanced=True) as fleet:
        fleet.deploy("1.0.0")
        fleet.cluster.hosts[0].kill_sshd()
        data = json.loads(fleet.bg("status", "--json", check=3).stdout)
        assert data["load_balancers"][0]["reachable"] is False
        assert "error" in data["load_balancers"][0]
        assert all(h["reachable"] and h["slots"]["blue"]["own"] for h in data["hosts"])
