"""The pure builders: exact argv and rendered text, and that quoting holds against a real sh."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from bluegreen.rollout.artifact import check_members
from bluegreen.config import Colour, HAProxySettings, parse_config
from bluegreen.errors import ArtifactError
from bluegreen.plan import haproxy, nginx, release, slot
from bluegreen.plan.layout import Layout

CFG = parse_config({
    "app": "shop",
    "run": {"command": "python3 app.py", "env": {"NODE": "{app}_{color}", "TMP": "{slot_dir}/tmp"}},
    "slots": {"blue": 4100, "green": 5100},
    "proxy": {"server_name": "shop.example.com www.shop.example.com", "listen": "8080",
              "sites_available": "/etc/nginx/sites-available",
              "sites_enabled": "/etc/nginx/sites-enabled", "reload": "systemctl reload nginx"},
    "hosts": [{"address": "deploy@web1", "deploy_to": "/srv/{app}"}],
}, Path("/tmp"))
LAYOUT = Layout.of(CFG, CFG.hosts[0])


def test_layout() -> None:
    assert LAYOUT.root == PurePosixPath("/srv/shop")
    assert LAYOUT.state(Colour.GREEN) == PurePosixPath("/srv/shop/slots/green/state.json")
    assert LAYOUT.shared_env == PurePosixPath("/srv/shop/shared/.env")
    assert LAYOUT.lock == PurePosixPath("/srv/shop/lock")


def test_switch_is_atomic_rename_of_a_dot_link() -> None:
    steps = nginx.switch(CFG, Colour.GREEN, False)
    assert steps == [["sh", "-c", 'ln -sfn "$1" "$2" && mv -Tf "$2" "$3"', "sh",
                      "/etc/nginx/sites-available/shop-green",
                      "/etc/nginx/sites-enabled/.shop.bluegreen-tmp",
                      "/etc/nginx/sites-enabled/shop"]]
    # Under sudo: fixed argv only (no `sh -c`), so sudoers can allow exactly these.
    assert nginx.switch(CFG, Colour.GREEN, True) == [
        ["sudo", "-n", "ln", "-sfn", "/etc/nginx/sites-available/shop-green",
         "/etc/nginx/sites-enabled/.shop.bluegreen-tmp"],
        ["sudo", "-n", "mv", "-Tf", "/etc/nginx/sites-enabled/.shop.bluegreen-tmp",
         "/etc/nginx/sites-enabled/shop"]]
    assert nginx.write_site(CFG, Colour.BLUE, True) == [
        ["sudo", "-n", "tee", "/etc/nginx/sites-available/.shop-blue.bluegreen-tmp"],
        ["sudo", "-n", "mv", "-f", "/etc/nginx/sites-available/.shop-blue.bluegreen-tmp",
         "/etc/nginx/sites-available/shop-blue"]]


def test_rendered_site_file() -> None:
    text = nginx.render_site(CFG, Colour.BLUE)
    assert "server 127.0.0.1:4100" in text
    assert "listen 8080;" in text
    assert "server_name shop.example.com www.shop.example.com;" in text
    assert 'return 200 "blue";' in text
    assert 'add_header X-Deployment-Id "blue" always;' in text
    for header in ("Upgrade $http_upgrade", "Connection $bluegreen_shop_connection",
                   "Host $http_host", "X-Forwarded-For $proxy_add_x_forwarded_for",
                   "X-Forwarded-Proto $scheme"):
        assert f"proxy_set_header {header};" in text
    assert "proxy_http_version 1.1;" in text
    assert "4100" not in nginx.render_site(CFG, Colour.GREEN)
    assert nginx.colour_of_target(CFG, "/etc/nginx/sites-available/shop-green") is Colour.GREEN
    assert nginx.colour_of_target(CFG, "/etc/nginx/sites-available/other") is None
    assert nginx.deployment_id_request(CFG) == ("/deployment_id", "shop.example.com")


def test_slot_env_order_and_quoting(tmp_path: Path) -> None:
    s = slot.Slot(Colour.GREEN, 5100, LAYOUT, "1.2.3-abcdefabcdef", "1.2.3")
    env = slot.slot_env(CFG, s, {"SECRET": "it's $(touch pwned) `x`", "NODE": "overridden"})
    assert list(env)[:4] == ["PORT", "BLUEGREEN_COLOR", "BLUEGREEN_VERSION", "BLUEGREEN_RELEASE_DIR"]
    assert env["PORT"] == "5100" and env["NODE"] == "shop_green"  # run.env wins over env_file
    assert env["TMP"] == "/srv/shop/slots/green/tmp"
    script = tmp_path / "env"
    script.write_text(slot.env_script(env))
    out = subprocess.run(["sh", "-c", '. "$1" && printf %s "$SECRET"', "sh", str(script)],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout == "it's $(touch pwned) `x`"
    assert not (tmp_path / "pwned").exists()


def test_run_in_slot_passes_values_as_arguments(tmp_path: Path) -> None:
    (tmp_path / "env").write_text("export A='1'\n")
    argv = slot.run_in_slot(str(tmp_path), PurePosixPath(tmp_path / "env"),
                            'echo "A=$A"', PurePosixPath(tmp_path / "log"))
    assert argv[:2] == ["sh", "-c"] and argv[4:] == [str(tmp_path), str(tmp_path / "env"),
                                                     'echo "A=$A"', str(tmp_path / "log")]
    subprocess.run(argv, check=True)
    assert (tmp_path / "log").read_text() == "A=1\n"


def test_parse_probe() -> None:
    p = slot.parse_probe("listen 123 120 green /srv/a/releases/1.0-x \nlisten 124 120 \n"
                         "established 3\nsession alive\npid 9\n")
    assert p.listeners == {123: slot.Listener(120, "green", "/srv/a/releases/1.0-x"),
                           124: slot.Listener(120)}
    assert p.established == 3
    assert p.session_alive and p.alive_pids == frozenset({9})
    assert slot.parse_probe("established 0\n") == slot.Probe()


def test_release_builders() -> None:
    assert release.release_id("1.0.0", "3f2a9c1b0d4e" + "0" * 52) == "1.0.0-3f2a9c1b0d4e"
    assert release.upload_path(LAYOUT, "r1") == PurePosixPath("/srv/shop/releases/.r1.tar.gz.upload")
    assert release.to_prune(["a", "b", "c", "d", ".x.unpack"], 2, {"a"}) == ["b"]
    assert release.to_prune(["a", "b"], 5, set()) == []


def test_list_with_times_gives_the_hosts_clock_then_each_release_dir(tmp_path: Path) -> None:
    from bluegreen.plan.layout import Layout

    layout = Layout(PurePosixPath(tmp_path))
    argv = release.list_with_times(layout)
    assert subprocess.run(argv, capture_output=True, text=True).stdout.split() != []  # clock
    (tmp_path / "releases" / "1.0.0-aaa").mkdir(parents=True)
    (tmp_path / "releases" / ".2.0.0-bbb.unpack").mkdir()  # half unpacked: not a release
    (tmp_path / "releases" / ".1.0.0-aaa.prepared").touch()
    os.utime(tmp_path / "releases" / "1.0.0-aaa", (1_700_000_000, 1_700_000_000))
    lines = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0].isdigit() and lines[1:] == ["1700000000 1.0.0-aaa"]


def _tar(tmp_path: Path, members: list[tarfile.TarInfo]) -> Path:
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = 1 if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize("member", [
    _member("/etc/passwd"),
    _member("../../evil"),
    _member("bin/../../evil"),
    _member("link", tarfile.SYMTYPE, "/etc/shadow"),
    _member("bin/link", tarfile.SYMTYPE, "../../outside"),
    _member("dev", tarfile.CHRTYPE),
])
def test_unsafe_artifacts_are_refused(tmp_path: Path, member: tarfile.TarInfo) -> None:
    with pytest.raises(ArtifactError, match="unsafe artifact"):
        check_members(_tar(tmp_path, [_member("ok"), member]))


def test_safe_artifact_with_inner_links(tmp_path: Path) -> None:
    check_members(_tar(tmp_path, [_member("bin/app"), _member("lib/x", tarfile.SYMTYPE, "../bin/app")]))
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(ArtifactError, match="not a readable .tar.gz"):
        check_members(tmp_path / "junk.tar.gz")


HX = CFG.model_copy(update={"proxy": HAProxySettings.model_validate(
    {"kind": "haproxy", "listen": "127.0.0.1:8080"})})


def test_rendered_haproxy_config() -> None:
    text = haproxy.render_config(HX, [("web 1", "10.0.0.1"), ("web2", "10.0.0.2")])
    assert "bind 127.0.0.1:8080" in text
    assert "map(/etc/haproxy/conf.d/shop.map)" in text
    assert "use_backend bluegreen_shop_%[var(txn.bluegreen_live)]" in text
    for colour, port in (("blue", 4100), ("green", 5100)):
        assert f"backend bluegreen_shop_{colour}" in text
        assert f"server web_1 10.0.0.1:{port}" in text and f"server web2 10.0.0.2:{port}" in text
        assert f"set-header X-Deployment-Id {colour}" in text
    assert haproxy.bind("80") == ":80"
    assert haproxy.map_text(HX, Colour.GREEN).endswith("live green\n")
    assert haproxy.parse_map(HX, haproxy.map_text(HX, Colour.GREEN)) == "green"
    assert haproxy.parse_map(HX, "# nothing\n") is None


def test_haproxy_shared_map_keeps_other_apps_lines() -> None:
    cfg = HX.model_copy(update={"proxy": HX.proxy.model_copy(update={
        "shared_frontend": True, "server_name": "shop.example.com Shop.example.org"})})
    other = "# head\nblog.example.com blog_blue\n"
    text = haproxy.map_text(cfg, Colour.GREEN, other)
    assert text.splitlines()[1:] == ["blog.example.com blog_blue",
                                     "shop.example.com shop_green", "shop.example.org shop_green"]
    assert haproxy.parse_map(cfg, text) == "green"
    assert haproxy.parse_map(cfg, text.replace("org shop_green", "org shop_blue")) == "blue, green"
    assert haproxy.without_app(cfg, text).splitlines()[1:] == ["blog.example.com blog_blue"]
    assert haproxy.set_live(cfg, Colour.BLUE) == (
        "set map /etc/haproxy/conf.d/shop.map shop.example.com shop_blue; "
        "set map /etc/haproxy/conf.d/shop.map shop.example.org shop_blue")
    assert "\nfrontend " not in haproxy.render_config(cfg, [("web1", "127.0.0.1")])


def test_haproxy_shared_map_is_rewritten_on_the_host_under_a_lock(tmp_path: Path) -> None:
    """A shared map's write is one command that re-reads the file under an flock beside it
    and changes only this app's lines (the temp file named after the app); under sudo,
    fixed tee/mv steps with the text made from the copy read before."""
    cfg = HX.model_copy(update={"proxy": HX.proxy.model_copy(update={
        "shared_frontend": True, "server_name": "shop.example.com",
        "map_file": str(tmp_path / "sites.map")})})
    steps, text = haproxy.write_map(cfg, Colour.GREEN, "ignored", False)
    assert steps == [["python3", "-c", haproxy.UPDATE_SHARED_MAP, str(tmp_path / "sites.map"),
                      "shop", "shop.example.com"]]
    assert text == haproxy.map_text(cfg, Colour.GREEN)
    # What the host finds now (another app switched since this command read the file).
    (tmp_path / "sites.map").write_text("# head\nblog.example.com blog_green\n"
                                        "shop.example.com shop_blue\n")
    subprocess.run(steps[0], input=text, text=True, check=True)
    assert (tmp_path / "sites.map").read_text() == (
        "# head\nblog.example.com blog_green\nshop.example.com shop_green\n")
    assert (tmp_path / ".sites.map.lock").exists()
    removal, nothing = haproxy.write_map(cfg, None, "", False)
    subprocess.run(removal[0], input=nothing, text=True, check=True)
    assert (tmp_path / "sites.map").read_text() == "# head\nblog.example.com blog_green\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".sites.map.lock", "sites.map"]
    sudo_steps, sudo_text = haproxy.write_map(cfg, Colour.BLUE, "blog.example.com blog_blue\n",
                                              True)
    assert sudo_steps == haproxy.write(cfg, PurePosixPath(tmp_path / "sites.map"), True)
    assert sudo_text.splitlines()[1:] == ["blog.example.com blog_blue",
                                          "shop.example.com shop_blue"]


def test_haproxy_runtime_answers() -> None:
    assert haproxy.set_live(HX, Colour.GREEN) == "set map /etc/haproxy/conf.d/shop.map live green"
    assert haproxy.parse_show_map(HX, "0x55d5c live blue\n\n") == "blue"
    assert haproxy.parse_show_map(HX, "\n") is None
    assert haproxy.runtime_error("\n") is None
    assert haproxy.runtime_error("Unknown map identifier.\n") == "Unknown map identifier."
    stat = haproxy.parse_stat(
        "# pxname,svname,qcur,qmax,scur,smax\n"
        "bluegreen_shop_blue,web1,0,0,3,7\n"
        "bluegreen_shop_blue,BACKEND,0,0,3,7\n"
        "bluegreen_shop_green,web1,0,0,,1\n")
    assert haproxy.sessions(stat, HX, Colour.BLUE, "web1") == 3
    assert haproxy.sessions(stat, HX, Colour.GREEN, "web1") == 0
    assert haproxy.sessions(stat, HX, Colour.GREEN, "web9") is None


@pytest.mark.parametrize("output,version_says,shutdown_says", [
    ("nginx version: nginx/1.22.1\n", "keepalive_min_timeout for it", "not set"),
    ("nginx version: nginx/1.22.1\nworker_shutdown_timeout 10m;\n", "1.22.1: each reload",
     "10m: websockets"),
    ("nginx version: nginx/1.27.4\n", "set keepalive_min_timeout", "not set"),
    ("nginx version: nginx/1.28.0\n  keepalive_min_timeout 1s;\n",
     "keepalive_min_timeout 1s", "not set"),
])
def test_nginx_advice(output: str, version_says: str, shutdown_says: str) -> None:
    rows = dict((item, (ok, detail)) for item, ok, detail in nginx.advice(output))
    assert all(ok is not False for ok, _ in rows.values())  # advice never fails `check`
    assert version_says in rows["nginx version"][1]
    assert shutdown_says in rows["nginx worker_shutdown_timeout"][1]


def test_systemd_unit_and_start_script() -> None:
    from bluegreen.plan import systemd

    layout = Layout(PurePosixPath("/srv/shop"))
    unit = systemd.render_unit(CFG, layout, "deploy")  # the SSH user, as `id -un` says
    assert "ExecStart=/bin/sh /srv/shop/slots/%i/start.sh" in unit
    assert "User=deploy" in unit and "TimeoutStopSec=30" in unit
    assert systemd.unit_user(unit) == "deploy"
    as_root = systemd.render_unit(CFG, layout, "root")
    assert "User=root" in as_root and systemd.unit_user(as_root) == "root"
    assert systemd.unit_user("[Service]\nUser=deploy\nUser=\n") == "root"
    s = slot.Slot(Colour.GREEN, 5000, layout, "1.0.0-abc", "1.0.0")
    script = systemd.start_script(CFG, s)
    assert script.splitlines()[2:] == [
        "cd /srv/shop/releases/1.0.0-abc || exit 1",
        ". /srv/shop/slots/green/env",
        "exec sh -c 'python3 app.py'",
    ]
    assert systemd.stop(CFG, Colour.GREEN, True) == [
        "sudo", "-n", "systemctl", "stop", "bluegreen-shop@green.service"]
    assert systemd.journal(CFG, Colour.BLUE, 5, False) == [
        "journalctl", "-u", "bluegreen-shop@blue.service", "-n", "5", "--no-pager", "-o",
        "short-iso", "-q"]
    assert systemd.parse_show("ActiveState=active\nNRestarts=2\n") == {
        "ActiveState": "active", "NRestarts": "2"}


def test_sudoers_lets_a_deploy_user_write_the_haproxy_map_and_maintenance_map() -> None:
    """Both data files HAProxy reads (the live colour, maintenance) are written through
    fixed `tee`/`mv` steps the sudoers drop-in lists; the config itself is not."""
    from bluegreen.plan import sudoers

    lines = [" ".join(argv) for argv in sudoers.privileged(HX, with_systemd=False)]
    for path in (haproxy.map_file(HX), haproxy.maintenance_map(HX)):
        tmp = path.parent / f".{path.name}.bluegreen-tmp"
        assert f"tee {tmp}" in lines and f"mv -f {tmp} {path}" in lines, (path, lines)
    assert not any(str(haproxy.config_file(HX)) in line for line in lines)


def test_history_append_is_one_write_whole_or_not_at_all(tmp_path: Path) -> None:
    """The append, run for real: after a torn last line it starts a line of its own; a
    write cut short (here by a file size limit, as a full disk does) is taken back, so no
    half line is left for the next append to continue."""
    import resource

    from bluegreen.plan import history

    path = tmp_path / "history.jsonl"
    path.write_text('{"time":"2026-01-01T00:00:00+00:00","event":"deploy"}\n{"time":"2026-0')
    line = history.line(history.entry(time="2026-01-02T00:00:00+00:00", event="promote",
                                      host="web1", color="blue", release="r", version="1",
                                      user="u"))
    argv = history.append(Layout(PurePosixPath(tmp_path)))
    subprocess.run(argv, input=line, text=True, check=True)
    events, torn = history.parse(path.read_text())
    assert [e["event"] for e in events] == ["deploy", "promote"] and torn == [2]

    before = path.read_bytes()
    limit = len(before) + 100  # the next line does not fit whole

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    big = history.line(history.entry(time="2026-01-03T00:00:00+00:00", event="failed",
                                     host="web1", color=None, release=None, version=None,
                                     user="u", detail="x" * 1000))
    done = subprocess.run(argv, input=big, text=True, preexec_fn=small_files,
                          capture_output=True)
    assert done.returncode != 0
    assert path.read_bytes() == before  # nothing of it stays
    subprocess.run(argv, input=line, text=True, check=True)
    assert [e["event"] for e in history.parse(path.read_text())[0]] == [
        "deploy", "promote", "promote"]


def test_history_reads_an_event_glued_to_a_torn_line() -> None:
    """What `cat >>` appends left after a torn line (recorded from a host): the next event
    on the same line. It is read; the line is reported as torn."""
    from bluegreen.plan import history

    text = ('{"time":"2026-12-01T10:00:00+00:00","event":"deploy","host":"web1","color":"blue",'
            '"release":"1.0.0-aaaaaaaaaaaa","version":"1.0.0","user":"ci","detail":""}\n'
            '{"time":"2026-12-01T10:00:01+00:00","event":"promote","host":"web1","col'
            '{"time":"2026-12-01T11:00:00+00:00","event":"deploy","host":"web1","color":"green",'
            '"release":"2.0.0-bbbbbbbbbbbb","version":"2.0.0","user":"ci","detail":""}\n')
    events, torn = history.parse(text)
    assert [(e["event"], e["version"]) for e in events] == [("deploy", "1.0.0"),
                                                           ("deploy", "2.0.0")]
    assert torn == [2]


def test_remove_layout_deletes_only_bluegreens_entries_run_by_a_real_sh(tmp_path: Path) -> None:
    from bluegreen.plan import layout

    root = tmp_path / "home"
    own = Layout(PurePosixPath(root))
    for directory in own.directories():
        Path(directory).mkdir(parents=True, exist_ok=True)
    Path(own.history).write_text("{}\n")
    Path(own.lock).mkdir()
    (root / ".ssh").mkdir()
    (root / ".ssh" / "authorized_keys").write_text("key\n")
    argv = layout.remove(own)
    assert argv[-5:] == [str(root / name) for name in
                         ("releases", "slots", "shared", "history.jsonl", "lock")]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert layout.parse_remove(out) == [".ssh"] and os.listdir(root) == [".ssh"]
    (root / ".ssh" / "authorized_keys").unlink()
    (root / ".ssh").rmdir()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert layout.parse_remove(out) is None and not root.exists()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert layout.parse_remove(out) is None  # already gone: a re-run


def test_listeners_of_a_port_are_read_from_ss_with_their_processes() -> None:
    """`check`'s proxy.listen row reads `ss -Htlnp` (recorded here): per socket, its
    processes; a socket whose processes the SSH user may not see has none."""
    from bluegreen.plan.check import parse_listeners

    recorded = (
        'LISTEN 0      511    127.0.0.1:24936 0.0.0.0:* users:(("nginx",pid=10152,fd=7),'
        '("nginx",pid=10056,fd=7))\n'
        'LISTEN 0      128    127.0.0.1:24937 0.0.0.0:* users:(("python3",pid=10266,fd=3))'
        "                       \n"
        "LISTEN 0      511          0.0.0.0:80        0.0.0.0:*          \n")
    assert parse_listeners(recorded) == [[("nginx", 10152), ("nginx", 10056)],
                                         [("python3", 10266)], []]
    assert parse_listeners("") == []
