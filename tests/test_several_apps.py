"""Several apps on one server and one HAProxy, sharing its port through one frontend
(`proxy.shared_frontend`), each switched by its own lines of the shared map file, never
touching the other's traffic; a restarted HAProxy brings each back on its own colour."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from pathlib import Path

from bluegreen.demo.nginx import free_port
from conftest import BLUEGREEN, SERVER_NAME, Project, make_project, squatter
from loadclient import LoadClient


def host_get(port: int, host: str, path: str = "/") -> tuple[int, str | None, str]:
    """Status, X-App-Version and body of a GET with the Host ``host``."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={"Host": host})
    resp = conn.getresponse()
    return resp.status, resp.getheader("X-App-Version"), resp.read().decode()


def shared(p: Project, app: str, server_name: str) -> None:
    hx = p.nginx
    p.extra_proxy = {"shared_frontend": True, "server_name": server_name,
                     "map_file": f"{hx.conf_d}/bluegreen-sites.map",  # type: ignore[union-attr]
                     "frontend_file": f"{hx.conf_d}/bluegreen-frontend.cfg"}  # type: ignore
    p.write_config(app=app)


def test_two_apps_share_one_haproxy_frontend_and_switch_apart(local_project_hx: Project,
                                                             tmp_path: Path) -> None:
    one = local_project_hx
    (tmp_path / "second").mkdir()
    two = make_project(tmp_path / "second", one.nginx, None)
    try:
        shared(one, "testapp", SERVER_NAME)
        shared(two, "shop", "shop.test www.shop.test")
        port = one.nginx.port
        for p, version in ((one, "1.0.0"), (two, "5.0.0")):
            p.bg("setup")
            p.deploy(version)
        assert host_get(port, SERVER_NAME)[1] == "1.0.0"
        assert host_get(port, "shop.test")[1] == "5.0.0"
        assert host_get(port, "WWW.shop.test:80")[1] == "5.0.0"  # case and port ignored
        assert host_get(port, "nobody.test")[:1] == (404,)
        assert "shared frontend" in one.bg("check").stdout

        # Switching one app under load on both: the other's traffic never moves.
        client = LoadClient(tmp_path / "load.json", "shop.test", [f"127.0.0.1:{port}"])
        try:
            one.deploy("2.0.0")
            one.bg("rollback")
            one.bg("promote", "green")
        finally:
            report = client.stop()
        assert report["failures"] == [] and set(report["versions"]) == {"5.0.0"}, report
        assert host_get(port, SERVER_NAME)[1] == "2.0.0"
        lines = (one.nginx.conf_d / "bluegreen-sites.map").read_text().splitlines()  # type: ignore
        assert sorted(line for line in lines if not line.startswith("#")) == [
            "shop.test shop_blue", f"{SERVER_NAME} testapp_green", "www.shop.test shop_blue"]
        assert one.status()["proxy_answer"] == "green" and two.status()["proxy_answer"] == "blue"

        # A restarted HAProxy reads the map file: each app on its own live colour.
        one.nginx.stop()
        one.nginx.start()
        assert host_get(port, SERVER_NAME)[1] == "2.0.0"
        assert host_get(port, "shop.test")[1] == "5.0.0"

        # An app whose frontend would differ (here: another map file) may not rewrite it.
        two.extra_proxy["map_file"] = f"{two.nginx.conf_d}/other.map"  # type: ignore
        two.write_config(app="shop")
        out = two.bg("setup", check=1)
        assert "the apps must agree on proxy.listen" in out.stderr
        assert host_get(port, SERVER_NAME)[1] == "2.0.0"

        # Removing one app leaves the other serving, and the shared frontend in place.
        shared(two, "shop", "shop.test www.shop.test")
        two.bg("remove", "--yes")
        assert host_get(port, "shop.test")[0] == 404
        assert host_get(port, SERVER_NAME)[1] == "2.0.0"
        lines = (one.nginx.conf_d / "bluegreen-sites.map").read_text().splitlines()  # type: ignore
        assert [line for line in lines if not line.startswith("#")] == [
            f"{SERVER_NAME} testapp_green"]
        assert not (one.nginx.conf_d / "shop.cfg").exists()  # type: ignore[union-attr]
    finally:
        two.cleanup()


def second_app(one: Project, tmp_path: Path, server_name: str = "shop.test") -> Project:
    """Another app on the same host and nginx as ``one``, named "shop"."""
    (tmp_path / "second").mkdir()
    two = make_project(tmp_path / "second", one.nginx, None)
    two.extra_proxy = {"server_name": server_name}
    two.write_config(app="shop")
    return two


def test_setup_refuses_slot_ports_another_app_holds(local_project: Project,
                                                    tmp_path: Path) -> None:
    """A second app configured with the first app's slot ports: `setup` exits 1 before
    writing anything (no layout, no site file, no link: with one, the second app's name
    would be served by the first app's slots)."""
    one = local_project
    one.bg("setup")
    one.deploy("1.0.0")
    two = second_app(one, tmp_path)
    try:
        two.blue, two.green = one.blue, one.green
        two.write_config(app="shop")
        out = two.bg("setup", "--json", check=1)
        result = json.loads(out.stdout)
        assert result["ok"] is False and result["exit_code"] == 1
        assert str(one.deploy_to) in result["error"]  # names the app holding the port
        assert not two.deploy_to.exists()
        assert sorted(p.name for p in one.nginx.sites_available.iterdir()) == [
            "testapp-blue", "testapp-green"]
        assert [p.name for p in one.nginx.sites_enabled.iterdir()] == ["testapp"]
        assert one.answer().version == "1.0.0"
    finally:
        two.cleanup()


def listen_row(p: Project) -> bool | None:
    """`check --json`'s row for proxy.listen."""
    result = json.loads(p.bg("check", "--json", check=False).stdout)
    rows = [r for r in result["hosts"][0]["items"] if r["item"].startswith("proxy.listen")]
    assert len(rows) == 1, result
    return rows[0]["ok"]  # type: ignore[no-any-return]


def test_a_setup_that_cannot_bind_takes_its_link_back_and_spares_the_other_app(
        local_project: Project, tmp_path: Path) -> None:
    """A second app on the same nginx whose proxy.listen port another process holds
    (`nginx -t` passes: it does not bind): `check` fails that row; `setup` exits 1 quoting
    nginx's `[emerg]` and takes its link back, so the first app still switches. A link
    left behind anyway (an older bluegreen): the first app's switch says that nginx did
    not apply the configuration, and why, and traffic stays where it was."""
    one = local_project
    one.bg("setup")
    one.deploy("1.0.0")
    assert listen_row(one) is True
    two = second_app(one, tmp_path)
    nginx = one.nginx
    taken = free_port()
    try:
        with squatter(taken):
            two.extra_proxy = {"server_name": "shop.test", "listen": f"127.0.0.1:{taken}"}
            two.write_config(app="shop")
            assert listen_row(two) is False
            result = json.loads(two.bg("setup", "--json", check=1).stdout)
            assert result["exit_code"] == 1
            assert "[emerg]" in result["error"] and "bind()" in result["error"], result
            assert [p.name for p in nginx.sites_enabled.iterdir()] == ["testapp"]

            one.deploy("2.0.0")  # the first app still switches
            assert one.answer().version == "2.0.0"

            (nginx.sites_enabled / "shop").symlink_to(nginx.sites_available / "shop-blue")
            result = json.loads(one.bg("rollback", "--json", check=1).stdout)
            assert result["exit_code"] == 1
            assert "[emerg]" in result["error"] and "bind()" in result["error"], result
            assert one.answer().version == "2.0.0"
            assert one.link_target().endswith("testapp-green")
    finally:
        two.cleanup()


def test_two_apps_switching_at_once_on_a_shared_map_keep_each_others_colour(
        local_project_hx: Project, tmp_path: Path) -> None:
    """Two apps on one shared HAProxy map promote at the same moment, 20 times (each with a
    pre_promote hook between its reads and its switch, as a canary step would be): every
    write keeps the other app's current line, so a restarted HAProxy serves each app's own
    live colour (a lost update put an app back on its previous colour)."""
    one = local_project_hx
    (tmp_path / "second").mkdir()
    two = make_project(tmp_path / "second", one.nginx, None)
    try:
        apps = ((one, "testapp", SERVER_NAME, "1"), (two, "shop", "shop.test", "5"))
        for p, app, name, major in apps:
            shared(p, app, name)
            p.bg("setup")
            p.deploy(f"{major}.0.0")
            p.deploy(f"{major}.1.0")  # blue runs x.0.0, green x.1.0 (live)
            p.write_config(app=app, hooks={"pre_promote": "sleep 0.2"})
        port = one.nginx.port
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
        for i in range(20):
            colours = ("blue", "green") if i % 2 else ("green", "blue")
            runs = [subprocess.Popen([*BLUEGREEN, "promote", colour], cwd=p.dir,
                                     env={**env, "HOME": str(p.home)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    for (p, *_), colour in zip(apps, colours)]
            for run in runs:
                assert run.wait(timeout=60) == 0, run.stderr.read() if run.stderr else ""
            one.nginx.stop()  # a restarted HAProxy reads the map file
            one.nginx.start()
            for (p, app, name, major), colour in zip(apps, colours):
                minor = 0 if colour == "blue" else 1
                assert host_get(port, name)[1] == f"{major}.{minor}.0", (i, app)
    finally:
        two.cleanup()
