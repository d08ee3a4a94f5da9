"""Slots under systemd on real Debian servers with systemd as PID 1 (namespaces over an
overlay of /, see tests/systemd_host.py): the system nginx and `systemctl reload nginx`,
units per colour, a power cut and boot, the journal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from bluegreen.demo.nginx import build_sample
from conftest import BLUEGREEN, SERVER_NAME, Answer, get, to_toml
from systemd_host import SystemdHost, SystemdLab

APP = "testapp"
UNIT = f"/etc/systemd/system/bluegreen-{APP}@.service"


class Site:
    """A user's project deploying to one systemd server, as root over SSH."""

    def __init__(self, lab: SystemdLab, host: SystemdHost, dir: Path,
                 user: str = "root") -> None:
        self.lab, self.host, self.dir, self.user = lab, host, dir, user
        self.home = dir / "home"
        self.home.mkdir(parents=True)
        self.run: dict[str, Any] = {}
        self.proxy: dict[str, Any] = {"listen": "80", "reload": "systemctl reload nginx"}
        self.write_config()

    def write_config(self) -> None:
        data: dict[str, Any] = {
            "app": APP,
            "release": {"version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz"},
            "run": {"command": "exec python3 app.py", "health_timeout": 15, "stop_timeout": 5,
                    "drain_timeout": 2, **self.run},
            "slots": {"blue": 4000, "green": 5000},
            "proxy": {"server_name": SERVER_NAME, **self.proxy},
            "hosts": [{"address": f"{self.user}@{self.host.address}", "name": "web1",
                       "deploy_to": f"/srv/{APP}", "identity_file": str(self.lab.client_key),
                       "known_hosts": str(self.lab.known_hosts),
                       **({"sudo": True} if self.user != "root" else {})}],
        }
        (self.dir / "bluegreen.toml").write_text(to_toml(data))

    def bg(self, *args: str, check: int | bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*BLUEGREEN, *args], cwd=self.dir, capture_output=True, text=True,
                              timeout=180, env={**os.environ, "HOME": str(self.home),
                                                "COLUMNS": "200", "NO_COLOR": "1"})
        expected = 0 if check is True else check
        if check is not False and proc.returncode != expected:
            raise AssertionError(f"bluegreen {' '.join(args)} exited {proc.returncode}, "
                                 f"expected {expected}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def deploy(self, version: str, *args: str, mode: str | None = None,
               check: int | bool = True) -> subprocess.CompletedProcess[str]:
        built = build_sample(self.dir / "build", version, mode)
        dest = self.dir / "artifacts" / f"sample-{version}.tar.gz"
        dest.parent.mkdir(exist_ok=True)
        shutil.copyfile(built, dest)
        return self.bg("deploy", "--version", version, *args, check=check)

    def answer(self) -> Answer:
        return get(80, address=self.host.address, timeout=2)

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.bg("status", "--json").stdout)["hosts"][0]
        return data

    def unit(self, colour: str, prop: str) -> str:
        return self.host.exec("systemctl", "show", "-p", prop, "--value",
                              f"bluegreen-{APP}@{colour}.service").stdout.strip()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdLab]:
    lab = SystemdLab(tmp_path_factory.mktemp("systemd"))
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def server(lab: SystemdLab) -> SystemdHost:
    """One server for the tests that need no reboot (each cleans up after itself)."""
    host = lab.add()
    host.boot()
    return host


@pytest.fixture
def site(lab: SystemdLab, server: SystemdHost, tmp_path: Path) -> Iterator[Site]:
    s = Site(lab, server, tmp_path / "project")
    yield s
    server.shell(f"systemctl disable -q --now 'bluegreen-{APP}@blue' 'bluegreen-{APP}@green'; "
                 f"rm -rf /srv/{APP} {UNIT} /etc/nginx/sites-enabled/{APP} "
                 f"/etc/nginx/sites-available/{APP}-*; systemctl daemon-reload; "
                 "systemctl reload nginx", check=False)


def test_deploy_promote_rollback_under_systemd(site: Site) -> None:
    check = site.bg("check")
    assert "slots run under systemd" in check.stdout, check.stdout
    site.bg("setup")
    unit = site.host.exec("cat", UNIT).stdout
    assert "ExecStart=/bin/sh /srv/testapp/slots/%i/start.sh" in unit
    verify = site.host.exec("systemd-analyze", "verify", f"bluegreen-{APP}@blue.service",
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "installing" not in site.bg("setup").stderr  # idempotent: no daemon-reload

    site.deploy("1.0.0")
    assert (site.answer().colour, site.answer().version) == ("blue", "1.0.0")
    site.deploy("2.0.0")
    assert (site.answer().colour, site.answer().version) == ("green", "2.0.0")
    for colour in ("blue", "green"):
        assert site.unit(colour, "ActiveState") == "active"
        assert site.unit(colour, "UnitFileState") == "enabled"
    status = site.status()
    green = status["slots"]["green"]
    assert green["unit"]["active_state"] == "active" and green["unit"]["enabled"] is True
    assert green["unit"]["main_pid"] and green["own"] is True and green["healthy"] is True
    # The secrets file stays out of the unit's properties.
    env = site.unit("green", "Environment") + site.unit("green", "EnvironmentFiles")
    assert "BLUEGREEN" not in env and "PORT" not in env

    site.bg("rollback")
    assert (site.answer().colour, site.answer().version) == ("blue", "1.0.0")
    site.bg("promote", "green")
    assert site.answer().version == "2.0.0"

    # systemd restarts a crashed slot; status tells.
    pid = int(site.unit("green", "MainPID"))
    site.host.exec("kill", "-9", str(pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and site.unit("green", "NRestarts") == "0":
        time.sleep(0.1)
    while time.monotonic() < deadline and site.answer().version != "2.0.0":
        time.sleep(0.1)
    assert site.answer().version == "2.0.0"
    assert site.status()["slots"]["green"]["unit"]["restarts"] >= 1

    logs = site.bg("logs", "-n", "50").stdout
    assert "2.0.0" in logs or "listening" in logs.lower(), logs

    site.bg("stop", "blue")
    assert site.unit("blue", "UnitFileState") == "disabled"
    assert site.unit("blue", "ActiveState") in ("inactive", "failed")


def test_unhealthy_release_under_systemd_shows_journal_and_stays_off(site: Site) -> None:
    site.bg("setup")
    site.deploy("1.0.0")
    out = site.deploy("2.0.0", mode="exit", check=5)
    assert "restarted" in out.stderr or "exited" in out.stderr, out.stderr
    assert "last lines" in out.stderr
    assert site.answer().version == "1.0.0"
    # A release that never became healthy is not started again at boot.
    assert site.unit("green", "UnitFileState") == "disabled"


def test_unit_template_override(site: Site) -> None:
    (site.dir / "unit.j2").write_text(
        "[Unit]\nDescription=custom {{ app }} %i\n[Service]\nType=exec\n"
        "ExecStart=/bin/sh {{ slots_dir }}/%i/start.sh\nTimeoutStopSec={{ stop_timeout }}\n"
        "Restart=always\n[Install]\nWantedBy=multi-user.target\n")
    site.run = {"unit_template": "unit.j2"}
    site.write_config()
    site.bg("setup")
    assert "Description=custom testapp %i" in site.host.exec("cat", UNIT).stdout
    site.deploy("1.0.0")
    assert site.unit("blue", "Restart") == "always"
    assert site.answer().version == "1.0.0"


def test_power_cut_after_two_deploys_serves_the_live_release_on_boot(
        lab: SystemdLab, tmp_path: Path) -> None:
    host = lab.add()
    host.boot()
    site = Site(lab, host, tmp_path / "project")
    site.bg("setup")
    site.deploy("1.0.0")
    site.deploy("2.0.0")
    assert (site.answer().colour, site.answer().version) == ("green", "2.0.0")

    host.power_cut()
    assert site.answer().status == 0  # the server is off
    host.boot()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and site.answer().version != "2.0.0":
        time.sleep(0.05)
    answer = site.answer()
    assert (answer.colour, answer.version) == ("green", "2.0.0")
    status = site.status()
    assert status["live"] == "green" and status["slots"]["blue"]["healthy"] is True
    site.bg("rollback")  # the idle colour came back too: rollback is instant
    assert site.answer().version == "1.0.0"

    # A colour that `stop` stopped stays stopped after a reboot.
    site.bg("stop", "green")
    host.power_cut()
    host.boot()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and site.answer().version != "1.0.0":
        time.sleep(0.05)
    assert site.answer().version == "1.0.0"
    assert site.unit("green", "ActiveState") == "inactive"


# The one-time preparation of a server for a deploy user, as docs/servers.md gives it.
PREPARE_DEPLOY_USER = f"""
useradd --create-home --shell /bin/bash deploy
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
install -m 0600 -o deploy -g deploy /root/.ssh/authorized_keys /home/deploy/.ssh/
install -d -o deploy -g deploy /srv/{APP}
usermod -aG systemd-journal deploy
"""


def test_least_privilege_deploy_user_with_only_the_printed_sudoers(
        lab: SystemdLab, server: SystemdHost, tmp_path: Path) -> None:
    server.shell(PREPARE_DEPLOY_USER)
    site = Site(lab, server, tmp_path / "project", user="deploy")
    check = site.bg("check", check=1)
    assert "sudo" in check.stdout and "--print-sudoers" in check.stdout, check.stdout

    drop_in = site.bg("setup", "--print-sudoers").stdout
    lines = [line for line in drop_in.splitlines() if not line.startswith("#")]
    assert lines and all(line.startswith("deploy ALL=(root) NOPASSWD: /") for line in lines)
    assert not any(w in drop_in for w in ("*", " sh ", "/bin/sh", "bash", "ALL\n"))
    assert "/usr/bin/systemctl restart bluegreen-testapp@green.service" in drop_in
    assert "/usr/sbin/nginx -t" in drop_in and "/usr/bin/systemctl reload nginx" in drop_in
    server.exec("sh", "-c", "cat > /etc/sudoers.d/bluegreen-testapp && chmod 0440 "
                "/etc/sudoers.d/bluegreen-testapp && visudo -cf /etc/sudoers.d/bluegreen-testapp",
                input=drop_in)

    # Files whose content runs as root (the unit, the site files) are not in the drop-in:
    # setup says an admin installs them, and prints the script for that.
    assert " tee " not in drop_in and "sites-available/testapp-blue" not in drop_in.replace(
        "ln -sfn /etc/nginx/sites-available/testapp-blue", "")
    out = site.bg("setup", check=1)
    assert "--print-root-files" in out.stderr and "not installed" in out.stderr
    server.exec("sh", "-s", input=site.bg("setup", "--print-root-files").stdout)

    assert "every host is ready" in site.bg("check").stdout
    site.bg("setup")
    site.deploy("1.0.0")
    site.deploy("2.0.0")
    assert (site.answer().colour, site.answer().version) == ("green", "2.0.0")
    main_pid = site.unit("green", "MainPID")
    assert server.exec("ps", "-o", "user=", "-p", main_pid).stdout.strip() == "deploy"
    assert server.exec("stat", "-c", "%U", f"/etc/nginx/sites-available/{APP}-green"
                       ).stdout.strip() == "root"
    site.bg("rollback")
    assert site.answer().version == "1.0.0"
    assert "1.0.0" in site.bg("logs", "--color", "blue", "-n", "100").stdout
    site.bg("stop", "green")
    assert site.unit("green", "UnitFileState") == "disabled"

    # Nothing outside the drop-in: no other unit, no shell, no other file.
    ssh = [*server.ssh[:-1], f"deploy@{server.address}"]
    for refused in ("sudo -n systemctl stop nginx", "sudo -n sh -c id",
                    "sudo -n tee /etc/passwd </dev/null",
                    "sudo -n systemctl restart bluegreen-other@blue.service"):
        proc = subprocess.run([*ssh, refused], capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0, refused
    server.shell(f"systemctl disable -q --now bluegreen-{APP}@blue bluegreen-{APP}@green; "
                 f"rm -rf /srv/{APP} {UNIT} /etc/sudoers.d/bluegreen-{APP} "
                 f"/etc/nginx/sites-enabled/{APP} /etc/nginx/sites-available/{APP}-*; "
                 "systemctl daemon-reload; systemctl reload nginx; userdel -r deploy",
                 check=False)


def deploy_until(site: Site, version: str, marker: str) -> str:
    """Start `bluegreen deploy` of ``version`` and cut the server's power as soon as the
    deploy prints ``marker``; returns what it printed (it ends with a lost connection)."""
    built = build_sample(site.dir / "build", version)
    (site.dir / "artifacts").mkdir(exist_ok=True)
    shutil.copyfile(built, site.dir / "artifacts" / f"sample-{version}.tar.gz")
    proc = subprocess.Popen([*BLUEGREEN, "deploy", "--version", version], cwd=site.dir,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HOME": str(site.home)})
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:
        seen += line
        if marker in line:
            site.host.power_cut()
            break
    else:
        raise AssertionError(f"never reached {marker!r}:\n{seen}")
    seen += proc.stderr.read()
    # The connection was lost: exit 3, or 1 during the switch (nothing switched elsewhere),
    # saying the switch may be half done there.
    status = proc.wait(60)
    assert status == 3 or (status == 1 and "may be half done" in seen), seen
    return seen


# The step lines of a deploy to a server whose idle slot runs the release before.
POWER_CUT_STEPS = ["uploading", "unpacking", "draining", "stopping", "starting", "is healthy",
                   "switching"]


def test_power_cut_at_each_deploy_step_boots_serving_and_rerun_converges(
        lab: SystemdLab, tmp_path: Path) -> None:
    host = lab.add()
    host.boot()
    site = Site(lab, host, tmp_path / "project")
    site.bg("setup")
    site.deploy("1.0.0")
    site.deploy("2.0.0")
    live = ("green", "2.0.0")
    for n, marker in enumerate(POWER_CUT_STEPS):
        version = f"3.{n}.0"
        seen = deploy_until(site, version, marker)
        host.boot()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and site.answer().version is None:
            time.sleep(0.05)
        answer = site.answer()
        # After the boot the site serves: the live release, or (cut mid-switch) the new one.
        served = (answer.colour, answer.version)
        assert served == live or (marker == "switching" and served[1] == version), (
            marker, served, seen)
        status = site.status()
        assert status["live"] == answer.colour and status["proxy_answer"] == answer.colour
        # The lock of the run that died is reported as such, and a re-run finishes the job.
        out = site.deploy(version, check=False)
        if out.returncode == 4:
            assert "locked by" in out.stderr
            site.bg("unlock")
            out = site.deploy(version, check=False)
        assert out.returncode == 0, (marker, out.stderr)
        answer = site.answer()
        assert answer.version == version, (marker, answer)
        assert site.status()["slots"][answer.colour]["unit"]["enabled"] is True
        live = (answer.colour or "", version)


def test_haproxy_kind_on_a_systemd_server_survives_a_power_cut(
        lab: SystemdLab, tmp_path: Path) -> None:
    """The system HAProxy (haproxy.service, conf.d loaded through /etc/default/haproxy):
    setup reloads it with `systemctl reload haproxy`, the switch goes through its runtime
    API, and after a power cut it serves the live colour from the map file."""
    host = lab.add()
    (host.upper / "etc" / "systemd" / "system" / "haproxy.service").unlink()  # unmasked
    (host.upper / "etc" / "haproxy" / "conf.d").mkdir(parents=True)
    (host.upper / "etc" / "default").mkdir()
    (host.upper / "etc" / "default" / "haproxy").write_text('EXTRAOPTS="-f /etc/haproxy/conf.d"\n')
    host.boot()
    assert host.exec("systemctl", "is-active", "haproxy").stdout.strip() == "active"
    site = Site(lab, host, tmp_path / "project")
    site.proxy = {"kind": "haproxy", "listen": "8080", "reload": ""}
    site.write_config()
    site.bg("setup")
    site.deploy("1.0.0")
    pid = host.exec("systemctl", "show", "-p", "MainPID", "--value", "haproxy").stdout.strip()
    site.deploy("2.0.0")
    answer = get(8080, address=host.address)
    assert (answer.colour, answer.version) == ("green", "2.0.0")
    # The switch went through the runtime API: the same HAProxy, not restarted.
    assert host.exec("systemctl", "show", "-p", "MainPID", "--value",
                     "haproxy").stdout.strip() == pid
    host.power_cut()
    host.boot()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and get(8080, address=host.address).version != "2.0.0":
        time.sleep(0.05)
    answer = get(8080, address=host.address)
    assert (answer.colour, answer.version) == ("green", "2.0.0")
    site.bg("rollback")
    assert get(8080, address=host.address).version == "1.0.0"
